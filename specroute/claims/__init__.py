"""The paper's claims (arXiv 2604.17228, docs/CLAIMS.md): its figures and claims (:mod:`.paper`), the paired
statistics over seeds (:mod:`.stats`), typed verdicts (:mod:`.verdict`), the evaluator (:mod:`.evaluate`),
what it reads besides a summary (:mod:`.inputs`) and the figures the report puts beside the paper's
(:mod:`.figures`). Arms are read from the roles a study declares (:mod:`specroute.spec.roles`)."""

from specroute.claims.evaluate import evaluate_claims
from specroute.claims.figures import paper_figures
from specroute.claims.inputs import bench_timing, load_summary, mechanism_input, paper_proxies
from specroute.claims.paper import CLAIMS, Claim
from specroute.claims.stats import Paired, paired
from specroute.claims.verdict import (INCONCLUSIVE, NECESSARY, NOT_CHECKABLE, NOT_REPRODUCED, REPRODUCED, VERDICTS,
                                      Verdict)

__all__ = ["CLAIMS", "INCONCLUSIVE", "NECESSARY", "NOT_CHECKABLE", "NOT_REPRODUCED", "REPRODUCED", "VERDICTS",
           "Claim", "Paired", "Verdict", "bench_timing", "evaluate_claims", "load_summary", "mechanism_input", "paired",
           "paper_figures", "paper_proxies"]
