"""Verification: property-based verifiers of a spec's compiled model, FLOP checks and the claim checks.

``specroute verify`` runs :data:`specroute.verify.runner.VERIFIERS` on every arm of the given specs (see
:func:`run_verification`); each verifier returns a :class:`CheckResult` (pass / fail / skip, the value
measured and the value expected). The pytest suite in ``verify/`` runs the same checks and shows that each
one bites on a deliberately broken model.
"""

from specroute.verify.common import FAIL, PASS, SKIP, CheckResult, Context, Target
from specroute.verify.runner import VERIFIERS, SpecReport, run_verification, targets_of

__all__ = ["FAIL", "PASS", "SKIP", "VERIFIERS", "CheckResult", "Context", "SpecReport", "Target",
           "run_verification", "targets_of"]
