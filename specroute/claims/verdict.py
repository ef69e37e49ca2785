"""A claim's verdict as a typed object, and the rules that turn paired statistics into one."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from specroute.claims.paper import SEEDS, Claim
from specroute.claims.stats import Paired, fmt_interval
from specroute.text import plural

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
INCONCLUSIVE = "inconclusive"
NOT_CHECKABLE = "not checkable"
NECESSARY = "supported: necessary condition"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NECESSARY, NOT_CHECKABLE)


@dataclass(frozen=True)
class Verdict:
    """One claim judged against one study.

    ``verdict`` is one of :data:`VERDICTS`; ``reason`` says why in a sentence (``not checkable: n=1 < 3
    seeds``); ``numbers`` are the figures it rests on; ``effect`` / ``interval`` the decisive quantity with
    its 95% interval over seeds (unit ``effect_unit``), ``p_value`` a sign-test p where one applies; ``arms``
    maps each role used to its arm."""

    id: str
    statement: str
    kind: str
    verdict: str
    reason: str
    numbers: str
    criterion: str
    n: int | None = None
    effect: float | None = None
    effect_unit: str = ""
    interval: tuple[float, float] | None = None
    p_value: float | None = None
    arms: dict[str, Any] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def label(self) -> str:
        """The verdict as shown in tables: ``not checkable`` carries its reason."""
        return f"{self.verdict}: {self.reason}" if self.verdict == NOT_CHECKABLE else self.verdict

    @property
    def effect_text(self) -> str:
        """``+0.0162 nats [+0.0011, +0.0313]``; a ratio (unit ``x``) unsigned, ``10.3x [6.1x, 17.4x]``."""
        if self.effect is None:
            return "–"
        if self.effect_unit == "x":
            iv = f"[{self.interval[0]:.4g}x, {self.interval[1]:.4g}x]" if self.interval else fmt_interval(None)
            return f"{self.effect:.4g}x {iv}"
        return f"{self.effect:+.4g} {self.effect_unit} {fmt_interval(self.interval)}".replace("  ", " ")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def make(claim: Claim, verdict: str, reason: str, numbers: str = "–", **kw: Any) -> Verdict:
    return Verdict(claim.id, claim.statement, claim.kind, verdict, reason, numbers, claim.criterion,
                   source=claim.source, **kw)


def from_paired(claim: Claim, verdict: str, reason: str, p: Paired, numbers: str, **kw: Any) -> Verdict:
    """A verdict whose decisive quantity is one paired comparison."""
    return make(claim, verdict, reason, numbers, n=p.n, effect=p.mean, interval=p.interval, p_value=p.p_sign,
                effect_unit="steps" if p.metric == "threshold_hits" else "nats", **kw)


def seeds_missing(p: Paired) -> str | None:
    """Why ``p`` cannot be judged as a seed claim (too few seeds, no noise recorded); None if it can."""
    if p.n < SEEDS:
        return f"n={p.n} < {SEEDS} seeds"
    if not p.noise_known:
        return ("the report has no per-batch held-out LM, so a tie cannot be told from a win "
                "(re-run the study with this version)")
    return None


def judge_wins(p: Paired, margin: float | None) -> tuple[str, str]:
    """A "k/k seeds" claim that ``p.better`` beats ``p.worse``: all n >= SEEDS seeds win beyond noise →
    reproduced; one goes the other way beyond noise, or the interval of the mean difference lies inside
    ±``margin`` (no effect; None: not used) → not reproduced; otherwise inconclusive."""
    missing = seeds_missing(p)
    if missing:
        return NOT_CHECKABLE, missing
    if p.wins == p.n:
        return REPRODUCED, f"{p.wins}/{p.n} seeds win beyond noise"
    if p.losses:
        return NOT_REPRODUCED, f"{p.losses}/{p.n} {'seed goes' if p.losses == 1 else 'seeds go'} the other way beyond noise"
    iv = p.interval
    if margin is not None and iv is not None and -margin <= iv[0] and iv[1] <= margin:
        return NOT_REPRODUCED, f"no effect: the interval {fmt_interval(iv)} lies within ±{margin:g} nats"
    return INCONCLUSIVE, f"{plural(p.wins, 'win')} and {plural(p.ties, 'tie')} within noise: the data cannot separate the outcomes"


def judge_disappears(p: Paired) -> tuple[str, str]:
    """An advantage of ``p.better`` "disappears": not all seeds win, and the interval of the mean difference
    does not lie below 0 (a consistent advantage remaining)."""
    missing = seeds_missing(p)
    if missing:
        return NOT_CHECKABLE, missing
    if p.wins == p.n:
        return NOT_REPRODUCED, f"still {p.wins}/{p.n} seeds win beyond noise"
    iv = p.interval
    if iv is not None and iv[1] < 0:
        return NOT_REPRODUCED, f"a mean advantage remains: interval {fmt_interval(iv)} below 0"
    return REPRODUCED, f"{p.wins}/{p.n} wins and the interval {fmt_interval(iv)} does not lie below 0"


def judge_band(n: int, iv: tuple[float, float] | None, lo: float, hi: float, band: str) -> tuple[str, str]:
    """A claim that a quantity lies in [lo, hi] (``band`` says so in words): its interval over n >= SEEDS
    seeds inside → reproduced, entirely outside → not reproduced, across a bound → inconclusive."""
    if n < SEEDS or iv is None:
        return NOT_CHECKABLE, f"n={n} < {SEEDS} seeds"
    if lo <= iv[0] and iv[1] <= hi:
        return REPRODUCED, f"the interval lies inside {band}"
    if iv[1] < lo or iv[0] > hi:
        return NOT_REPRODUCED, f"the interval lies outside {band}"
    return INCONCLUSIVE, f"the interval straddles {band}"


#: How parts of a claim combine: the first of these that any part has decides.
_PRECEDENCE = (NOT_REPRODUCED, NOT_CHECKABLE, INCONCLUSIVE, NECESSARY, REPRODUCED)


def combine(parts: list[tuple[str, str, str]]) -> tuple[str, str]:
    """(verdict, reason) of a claim made of parts (name, verdict, reason): one part not reproduced refutes
    it; all reproduced reproduce it."""
    for verdict in _PRECEDENCE:
        hits = [reason if len(parts) == 1 else f"{name}: {reason}" for name, v, reason in parts if v == verdict]
        if hits:
            return verdict, "; ".join(hits)
    raise ValueError("combine() needs at least one part")
