"""Claim roles: which arm of a study plays which part in the paper's claims (docs/CLAIMS.md).

A study declares its roles under ``roles:`` (role -> arm name); the claims evaluator reads them from the
study's ``summary.json`` and never guesses an arm from its gate or loss weights. Each role states what its
arm must be (gate kind, util/rank on or off, oracle labeling, JEPA alignment); :func:`role_problems` checks
that against the resolved arm, so a role cannot name an arm of the wrong kind.

    roles:
      g1_utilrank: G1_utilrank      # G1 trained with util/rank (off-policy labels)
      g3_utilrank: G3_utilrank
      g1_lm: G1_lm                  # G1 trained on the LM loss alone
      g3_lm: G3_lm
      jepa_sweep: [G3_jepa0.25, G3_utilrank, G3_jepa2]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

from pydantic import Field

from specroute.spec.base import Strict


class RoleRule(NamedTuple):
    """What an arm must be to play a role (None: either)."""

    gate: Literal["G1", "G3"]
    utilrank: bool | None
    labeling: Literal["off_policy", "on_policy"] | None
    jepa: bool | None
    claims: str


#: The single-arm roles and their rules (the field names of :class:`RolesSpec`).
RULES: dict[str, RoleRule] = {
    "g1_utilrank": RoleRule("G1", True, "off_policy", None, "C1-C4, C7-C12"),
    "g3_utilrank": RoleRule("G3", True, "off_policy", True, "C1-C12"),
    "g1_lm": RoleRule("G1", False, None, None, "C7-C12"),
    "g3_lm": RoleRule("G3", False, None, True, "C7-C12"),
    "g3_unaligned": RoleRule("G3", None, None, False, "C5 (against g3_utilrank)"),
    "g1_onpolicy": RoleRule("G1", True, "on_policy", None, "C10 (the direct test)"),
    "g3_onpolicy": RoleRule("G3", True, "on_policy", True, "C10 (the direct test)"),
}
#: Every arm of the JEPA-weight sweep (C6) must be this.
SWEEP_RULE = RoleRule("G3", None, None, True, "C6")
SWEEP = "jepa_sweep"


def _describe(rule: RoleRule) -> str:
    parts = [f"gate {rule.gate}"]
    if rule.utilrank is not None:
        parts.append("util/rank on" if rule.utilrank else "util/rank off (util = rank = 0)")
    if rule.labeling is not None:
        parts.append(f"loss.oracle.labeling {rule.labeling}")
    if rule.jepa is not None:
        parts.append("loss.jepa > 0" if rule.jepa else "loss.jepa = 0")
    return ", ".join(parts)


def _role_field(name: str) -> Any:
    rule = RULES[name]
    return Field(None, description=f"Arm playing {name} [{rule.claims}]: {_describe(rule)}. Null: not declared.")


class RolesSpec(Strict):
    """Which arm plays which part in the paper's claims; an undeclared role makes the claims that need
    it ``not checkable``."""

    g1_utilrank: str | None = _role_field("g1_utilrank")
    g3_utilrank: str | None = _role_field("g3_utilrank")
    g1_lm: str | None = _role_field("g1_lm")
    g3_lm: str | None = _role_field("g3_lm")
    g3_unaligned: str | None = _role_field("g3_unaligned")
    g1_onpolicy: str | None = _role_field("g1_onpolicy")
    g3_onpolicy: str | None = _role_field("g3_onpolicy")
    jepa_sweep: list[str] = Field(
        default_factory=list,
        description="G3 arms that differ only in loss.jepa (> 0, distinct) [C6]; empty: not declared.",
    )

    def declared(self) -> dict[str, str | list[str]]:
        """The declared roles, as written in ``summary.json`` (role -> arm, ``jepa_sweep`` -> arms)."""
        out: dict[str, str | list[str]] = {k: v for k, v in self.model_dump().items() if v}
        return out

    def arm_names(self) -> list[tuple[str, str]]:
        """(role path, arm) for every arm named, e.g. ("jepa_sweep.1", "G3_jepa2")."""
        pairs = [(k, v) for k, v in self.model_dump().items() if isinstance(v, str)]
        return pairs + [(f"{SWEEP}.{i}", a) for i, a in enumerate(self.jepa_sweep)]


def rule_violation(rule: RoleRule, spec: Any) -> str | None:
    """Why the arm ``spec`` (a RunSpec) cannot play a role with ``rule``; None if it can."""
    loss = spec.loss
    if spec.gate.kind != rule.gate:
        return f"has gate {spec.gate.kind}, the role needs {rule.gate}"
    if rule.utilrank is not None and loss.uses_oracle != rule.utilrank:
        return (f"has util {loss.util:g}, rank {loss.rank:g}; the role needs "
                + ("util/rank on" if rule.utilrank else "util = rank = 0"))
    if rule.labeling is not None and rule.utilrank and loss.oracle.labeling != rule.labeling:
        return f"has loss.oracle.labeling {loss.oracle.labeling}, the role needs {rule.labeling}"
    if rule.jepa is not None and (loss.jepa > 0) != rule.jepa:
        return f"has loss.jepa {loss.jepa:g}, the role needs " + ("jepa > 0" if rule.jepa else "jepa = 0")
    return None


def role_problems(roles: RolesSpec, arm_spec: Callable[[str], Any]) -> list[tuple[str, str]]:
    """(role path, reason) for every declared role whose arm does not fit it. The arms' names are
    checked by :class:`~specroute.spec.models.StudySpec`; ``arm_spec`` resolves an arm to its RunSpec."""
    problems = []
    for name, arm in roles.model_dump().items():
        if isinstance(arm, str):
            why = rule_violation(RULES[name], arm_spec(arm))
            if why:
                problems.append((f"roles.{name}", f"arm {arm!r} {why}"))
    weights: dict[float, str] = {}
    for i, arm in enumerate(roles.jepa_sweep):
        spec = arm_spec(arm)
        why = rule_violation(SWEEP_RULE, spec)
        if why:
            problems.append((f"roles.{SWEEP}.{i}", f"arm {arm!r} {why}"))
        elif spec.loss.jepa in weights:
            problems.append((f"roles.{SWEEP}.{i}", f"arm {arm!r} has the same loss.jepa {spec.loss.jepa:g} as "
                                                   f"{weights[spec.loss.jepa]!r}; the sweep needs distinct weights"))
        else:
            weights[spec.loss.jepa] = arm
    if len(roles.jepa_sweep) == 1:
        problems.append((f"roles.{SWEEP}", "needs two or more arms (or none)"))
    return problems
