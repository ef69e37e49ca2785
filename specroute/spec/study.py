"""The study spec: a run spec plus its arms × seeds, the comparisons its report makes and the roles its
arms play in the paper's claims (docs/DESIGN.md, "Specs and profiles"); :class:`SpecFile` is a spec file
as written (the JSON Schema of ``specroute schema``). Every (arm, seed) resolves to one
:class:`~specroute.spec.models.RunSpec` (:mod:`specroute.spec.loader`).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from specroute.spec.base import MAX_ARMS, MAX_SEEDS, Strict, folder_name
from specroute.spec.controller import GateSpec
from specroute.spec.models import RunSpec
from specroute.spec.roles import RolesSpec
from specroute.spec.sweeps import SweepSpec


class ArmSpec(Strict):
    """One arm of a study: a label and nested overrides applied on top of the base run spec."""

    label: str = Field("", description="Human-readable name in reports.")
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="Nested keys of RunSpec to override for this arm."
    )


class ComparisonSpec(Strict):
    """A per-seed comparison the report makes, written 'k/n seeds' (lower metric wins)."""

    id: str = Field(..., description="Name of the comparison in the report.")
    better: str = Field(..., description="Arm expected to be better (the paper's claim).")
    worse: str = Field(..., description="Arm it is compared against.")
    claim: str | None = Field(None, description="Claim id in docs/CLAIMS.md, if any.")


class StudySpec(RunSpec):
    """A study: the base run spec plus arms x seeds (docs/DESIGN.md, "Specs and profiles")."""

    profile: str = Field("default", description="Profile this spec was resolved with.")
    seeds: list[int] = Field(
        default_factory=lambda: [0], min_length=1, max_length=MAX_SEEDS,
        description="Seeds; every (arm, seed) is one run."
    )
    arms: dict[str, ArmSpec] = Field(
        default_factory=lambda: {"default": ArmSpec()},
        min_length=1,
        max_length=MAX_ARMS,
        description="Named arms of the study, each a set of overrides on the base run spec (at least one; "
        "without the key, one arm named 'default').",
    )
    sweeps: list[SweepSpec] = Field(
        default_factory=list,
        description="Sweeps: each expands into one arm per combination of its grid's values, named "
        "<name>_<field><value>... and added to arms (specroute.spec.sweeps).",
    )
    gates: dict[str, GateSpec] = Field(
        default_factory=dict,
        description="Per-kind gate settings (e.g. sizes per profile); an arm that sets gate.kind "
        "starts from gates[kind] (keys are gate kinds).",
    )
    comparisons: list[ComparisonSpec] = Field(
        default_factory=list, description="Per-seed arm comparisons the report makes."
    )
    roles: RolesSpec = Field(
        default_factory=RolesSpec,
        description="Which arm plays which part in the paper's claims (docs/CLAIMS.md); the claims "
        "evaluator reads these and never guesses an arm.",
    )
    equivalence_margin_nats: float = Field(
        0.005, gt=0, le=1,
        description="LM difference (nats/token) within which two arms count as equivalent: C6's margin, "
        "and the 'no effect' bound of the seed claims (default: the paper's 0.005, C4).",
    )

    @field_validator("arms")
    @classmethod
    def _arm_folders(cls, arms: dict[str, ArmSpec]) -> dict[str, ArmSpec]:
        """Each arm names its runs' folder (``runs/<arm>/``): a folder name, and no two that differ only in
        case (one folder on a case-insensitive filesystem: macOS, Windows)."""
        by_case: dict[str, str] = {}
        for arm in arms:
            other = by_case.setdefault(folder_name(arm, "arm name").lower(), arm)
            if other != arm:
                raise ValueError(f"arms {other!r} and {arm!r} differ only in case: on a case-insensitive "
                                 "filesystem they would share one folder; rename one")
        return arms

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        repeated = sorted({s for s in seeds if seeds.count(s) > 1})
        if repeated:
            raise ValueError(f"{'seed' if len(repeated) == 1 else 'seeds'} {', '.join(map(str, repeated))} given more "
                             "than once; each seed is one run per arm")
        return seeds

    @model_validator(mode="before")
    @classmethod
    def _preset_kinds(cls, data: Any) -> Any:
        """Give ``gates`` entries without ``kind`` the kind of their key."""
        if isinstance(data, dict) and isinstance(data.get("gates"), dict):
            data = dict(data)
            data["gates"] = {
                k: ({"kind": k, **v} if isinstance(v, dict) and "kind" not in v else v)
                for k, v in data["gates"].items()
            }
        return data

    @model_validator(mode="after")
    def _comparisons_name_arms(self) -> StudySpec:
        for key, gate in self.gates.items():
            if key != gate.kind:
                raise ValueError(f"gates.{key}: has kind {gate.kind!r}; the key must be the kind")
        for c in self.comparisons:
            for arm in (c.better, c.worse):
                if arm not in self.arms:
                    raise ValueError(
                        f"comparisons: comparison {c.id!r} names arm {arm!r}, which is not one of "
                        f"{sorted(self.arms)}"
                    )
        for path, arm in self.roles.arm_names():
            if arm not in self.arms:
                raise ValueError(f"roles.{path}: names arm {arm!r}, which is not one of {sorted(self.arms)}")
        return self


class SpecFile(StudySpec):
    """A spec file as written: a study plus the keys only the loader reads (``extends``, ``profiles``,
    ``default_profile``). Used for the JSON Schema (``specroute schema``); the loader consumes these
    keys and validates the rest as :class:`StudySpec`."""

    extends: str | list[str] | None = Field(
        None, description="Spec file(s) this one builds on, relative to this file; merged base first."
    )
    profiles: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Named overrides (e.g. smoke, paper) applied on top of the file by --profile.",
    )
    default_profile: str | None = Field(
        None, description="Profile used when --profile is not given; null = none."
    )
