"""Paired statistics over seeds: per-seed differences judged against the measurement's noise, an interval
over seeds and a sign test (docs/CLAIMS.md, "How each claim is judged").

A study's arms share their seeds, and every run of a study evaluates the same fixed held-out batches, so
two arms are compared seed by seed, and within a seed batch by batch:

- per seed, ``diff = better - worse`` of the metric (nats/token; lower is better) with the standard error of
  the per-batch differences; ``|diff| <= NOISE_Z * SE`` is a **tie**, else a **win** (diff < 0) or a
  **loss**. Threshold hits (steps) win when every threshold is reached no later and one strictly sooner;
- over seeds, the mean difference with a Student-t interval and the two-sided exact sign test on the
  non-tied seeds (:func:`scipy.stats.binomtest`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from specroute.claims.paper import CONFIDENCE, NOISE_Z
from specroute.text import plural

WIN, TIE, LOSS, UNKNOWN = "win", "tie", "loss", "unknown"
THRESHOLDS = "threshold_hits"


@dataclass(frozen=True)
class SeedDiff:
    """One seed of a paired comparison. ``noise``: the half-width of the tie band (None: not recorded)."""

    seed: str
    diff: float
    noise: float | None
    outcome: str


@dataclass(frozen=True)
class Paired:
    """``better`` against ``worse`` on ``metric`` over their common seeds."""

    better: str
    worse: str
    metric: str
    seeds: tuple[SeedDiff, ...]

    @property
    def n(self) -> int:
        return len(self.seeds)

    def count(self, outcome: str) -> int:
        return sum(s.outcome == outcome for s in self.seeds)

    @property
    def wins(self) -> int:
        return self.count(WIN)

    @property
    def ties(self) -> int:
        return self.count(TIE)

    @property
    def losses(self) -> int:
        return self.count(LOSS)

    @property
    def noise_known(self) -> bool:
        return all(s.outcome != UNKNOWN for s in self.seeds)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(s.diff for s in self.seeds) if self.seeds else None

    @property
    def interval(self) -> tuple[float, float] | None:
        return t_interval([s.diff for s in self.seeds])

    @property
    def p_sign(self) -> float:
        return sign_test(self.wins, self.losses)

    def text(self, unit: str = "nats") -> str:
        """E.g. ``3/3 wins, 0 ties; diff -0.0123 nats [-0.02, -0.004], sign p 0.25``."""
        head = f"{self.wins}/{self.n} wins, {plural(self.ties, 'tie')}"
        if self.mean is None:
            return head
        return f"{head}; diff {self.mean:+.4g} {unit} {fmt_interval(self.interval)}, sign p {self.p_sign:.2g}"

    def as_dict(self) -> dict[str, Any]:
        return {"better": self.better, "worse": self.worse, "metric": self.metric, "n": self.n, "wins": self.wins,
                "ties": self.ties, "losses": self.losses, "mean_diff": self.mean, "interval": self.interval,
                "p_sign": self.p_sign,
                "per_seed": [{"seed": s.seed, "diff": s.diff, "noise": s.noise, "outcome": s.outcome}
                             for s in self.seeds]}


def t_interval(values: Sequence[float], level: float = CONFIDENCE) -> tuple[float, float] | None:
    """Student-t interval of the mean of ``values`` (None for fewer than two)."""
    n = len(values)
    if n < 2:
        return None
    m, sd = statistics.fmean(values), statistics.stdev(values)
    from scipy import stats as sps  # here, not at import: scipy.stats takes ~1 s to import

    half = float(sps.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return (m - half, m + half)


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign test of ``wins`` against ``losses`` (ties left out); 1.0 with none."""
    from scipy import stats as sps

    return float(sps.binomtest(wins, wins + losses, 0.5).pvalue) if wins + losses else 1.0


def fmt_interval(iv: tuple[float, float] | None, digits: int = 4) -> str:
    return f"[{iv[0]:+.{digits}g}, {iv[1]:+.{digits}g}]" if iv else "[n < 2: no interval]"


def common_seeds(summary: dict[str, Any], *arms: str) -> list[str]:
    sets = [set(summary["arms"][a]["seeds"]) for a in arms]
    return sorted(set.intersection(*sets), key=int) if sets else []


def _lm_seed(seed: str, a: dict[str, Any], b: dict[str, Any], metric: str) -> SeedDiff:
    diff = a[metric] - b[metric]
    xa, xb = (a.get("lm_by_batch") or {}).get(metric), (b.get("lm_by_batch") or {}).get(metric)
    if not xa or not xb or len(xa) != len(xb) or len(xa) < 2:
        return SeedDiff(seed, diff, None, UNKNOWN)
    d = [p - q for p, q in zip(xa, xb)]
    noise = NOISE_Z * statistics.stdev(d) / math.sqrt(len(d))
    return SeedDiff(seed, diff, noise, TIE if abs(diff) <= noise else WIN if diff < 0 else LOSS)


def _faster(a: dict[str, int | None], b: dict[str, int | None]) -> bool:
    inf = math.inf
    pairs = [(inf if a.get(k) is None else a[k], inf if b.get(k) is None else b[k]) for k in a]
    return bool(pairs) and all(x <= y for x, y in pairs) and any(x < y for x, y in pairs)


def _hits_seed(seed: str, a: dict[str, Any], b: dict[str, Any], censor: int) -> SeedDiff:
    ha, hb = a.get(THRESHOLDS) or {}, b.get(THRESHOLDS) or {}
    steps = [((ha.get(k) if ha.get(k) is not None else censor) - (hb.get(k) if hb.get(k) is not None else censor))
             for k in ha]
    diff = statistics.fmean(steps) if steps else 0.0
    outcome = WIN if _faster(ha, hb) else LOSS if _faster(hb, ha) else TIE
    return SeedDiff(seed, float(diff), 0.0, outcome)


def paired(summary: dict[str, Any], better: str, worse: str, metric: str) -> Paired:
    """``better`` vs ``worse`` on ``metric`` (an LM metric of the seed summaries, or ``threshold_hits``;
    a threshold never reached counts as reached at ``steps + 1``) over their common seeds."""
    arms = summary["arms"]
    out = []
    for s in common_seeds(summary, better, worse):
        a, b = arms[better]["seeds"][s], arms[worse]["seeds"][s]
        if metric == THRESHOLDS:
            censor = max(arms[better].get("steps") or 0, arms[worse].get("steps") or 0) + 1
            out.append(_hits_seed(s, a, b, censor))
        else:
            out.append(_lm_seed(s, a, b, metric))
    return Paired(better, worse, metric, tuple(out))


def paired_evaluations(seeds: dict[str, tuple[dict[str, Any], dict[str, Any]]], better: str, worse: str,
                       metric: str) -> Paired:
    """Two evaluations of the same runs compared seed by seed as :func:`paired` compares two arms (e.g. an
    arm's LM under its causal rule against its top-k LM): ``seeds`` maps each seed to (``better``'s,
    ``worse``'s) seed-summary-shaped records (``metric`` and ``lm_by_batch``, on the same held-out batches)."""
    return Paired(better, worse, metric, tuple(_lm_seed(s, a, b, metric) for s, (a, b) in seeds.items()))


def ratio_over_seeds(pairs: Sequence[tuple[float, float]]) -> tuple[float | None, tuple[float, float] | None,
                                                                    list[float]]:
    """Per-seed ratios a / b: their geometric mean, its t interval (on the logs) and the ratios."""
    ratios = [a / b for a, b in pairs if a is not None and b]
    if not ratios or min(ratios) <= 0:
        return None, None, ratios
    logs = [math.log(r) for r in ratios]
    iv = t_interval(logs)
    return math.exp(statistics.fmean(logs)), (math.exp(iv[0]), math.exp(iv[1])) if iv else None, ratios


def within(iv: tuple[float, float], lo: float, hi: float) -> bool:
    return lo <= iv[0] and iv[1] <= hi


def outside(iv: tuple[float, float], lo: float, hi: float) -> bool:
    return iv[1] < lo or iv[0] > hi
