"""Declarative sweeps: a study's ``sweeps:`` entries expand into arms (docs/DESIGN.md, "Specs and profiles").

A sweep names a prefix, optionally a ``base`` arm whose overrides it starts from and ``overrides`` all its arms
share, and a ``grid`` of dotted
RunSpec field paths -> lists of values; its cartesian product becomes one arm per combination, named
``<name>_<field><value>_...`` (``<field>`` is the path's last part, or the whole path joined by ``_`` where
two grid paths share a last part). The loader expands sweeps before validation, so every expanded arm is
validated like any other arm, and its errors point at the line of the sweep's grid entry.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from typing import Any

from pydantic import Field, field_validator

from specroute.spec.base import MAX_ARMS, Strict
from specroute.spec.errors import Origin, Path_, Problem, SpecError, lookup, validate
from specroute.spec.yaml_io import deep_merge

#: More runs (arms x seeds) than this from sweeps, and ``specroute run`` asks first (``--yes`` skips).
SWEEP_CONFIRM_RUNS = 64

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class SweepSpec(Strict):
    """One sweep: arms named ``<name>_<field><value>...``, one per combination of the grid's values."""

    name: str = Field(..., description="Prefix of the expanded arms' names (an identifier).")
    base: str | None = Field(None, description="An arm whose overrides every expanded arm starts from; "
                             "null = none (the study's base spec).")
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="Nested overrides every expanded arm shares (on top of base's)."
    )
    grid: dict[str, list[Any]] = Field(
        ..., min_length=1,
        description="Dotted RunSpec field path -> list of values (e.g. loss.util: [0.25, 1.0]); the arms are "
        "the cartesian product, in the order written.",
    )
    label: str = Field("", description="Label of the expanded arms in reports, before their values.")

    @field_validator("name")
    @classmethod
    def _identifier(cls, name: str) -> str:
        if not _NAME.match(name):
            raise ValueError(f"{name!r} is not an identifier (letters, digits, _; not starting with a digit)")
        return name

    @field_validator("grid")
    @classmethod
    def _grid(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for path, values in grid.items():
            if not _PATH.match(path):
                raise ValueError(f"{path!r} is not a dotted field path (e.g. loss.util)")
            if not values:
                raise ValueError(f"{path}: an empty list of values; give at least one")
            if any(isinstance(v, (dict, list)) for v in values):
                raise ValueError(f"{path}: values must be scalars (numbers, text, true/false)")
            if len(set(map(_value_text, values))) < len(values):
                raise ValueError(f"{path}: a value is given more than once")
        return grid


def _value_text(value: Any) -> str:
    """A value as it appears in an arm name: ``0.25``, ``1e-05``, ``true``, ``G3``; characters other than
    letters, digits, ``.``, ``-`` become ``_``."""
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return re.sub(r"[^A-Za-z0-9.\-]", "_", text)


def _nested(path: str, value: Any) -> dict[str, Any]:
    out: Any = value
    for part in reversed(path.split(".")):
        out = {part: out}
    return out


def expand_sweeps(raw: dict[str, Any], provenance: dict[Path_, tuple[str, int | None]],
                  source: Any) -> dict[str, Any]:
    """``raw`` with its ``sweeps:`` expanded into ``arms:`` (sweeps kept, for the report and schema).

    Records the provenance of each expanded arm's overrides (the line of its grid entry, or of the base
    arm's override). Without ``arms:`` in the file, the expanded arms are the study's only arms.

    Raises:
        SpecError: a malformed sweep (file:line of the entry), a ``base`` that is not an arm, an expanded
            name that collides with an arm or another sweep's, or more arms than MAX_ARMS.
    """
    sweeps = raw.get("sweeps")
    if sweeps is None:
        return raw
    where0 = lookup(provenance, ("sweeps",)) or (str(source), None)
    if not isinstance(sweeps, list):
        raise SpecError([Problem(where0[0], "sweeps", where0[1], "must be a list of sweeps (name, base, grid)")])
    arms = dict(raw.get("arms") or {}) if isinstance(raw.get("arms"), dict) else {}
    written = set(arms)
    problems: list[Problem] = []
    for i, entry in enumerate(sweeps):
        at = ("sweeps", str(i))
        if not isinstance(entry, dict):
            w = lookup(provenance, at) or where0
            problems.append(Problem(w[0], ".".join(at), w[1], "must be a mapping (name, base, grid)"))
            continue
        try:
            sweep = validate(SweepSpec, entry, Origin(source, provenance, layer=at))
        except SpecError as e:
            problems.extend(e.problems)
            continue
        base: dict[str, Any] = {}
        if sweep.base is not None:
            if sweep.base not in written:
                w = lookup(provenance, at + ("base",)) or where0
                problems.append(Problem(w[0], ".".join(at + ("base",)), w[1], f"names arm {sweep.base!r}, which "
                                        f"is not one of the arms written in the file: {sorted(written)}"))
                continue
            written_overrides = arms[sweep.base].get("overrides") if isinstance(arms[sweep.base], dict) else None
            base = dict(written_overrides) if isinstance(written_overrides, dict) else {}  # else: the arm's error
        for name, combo in expansion(sweep):
            w = lookup(provenance, at + ("name",)) or where0
            if name in arms:
                problems.append(Problem(w[0], ".".join(at + ("name",)), w[1], f"expands to arm {name!r}, which "
                                        + ("is written in arms:" if name in written else "another sweep makes")
                                        + "; choose another name"))
                break
            overrides = deep_merge(base, sweep.overrides)
            for path, value in zip(sweep.grid, combo):
                overrides = deep_merge(overrides, _nested(path, value))
            shown = ", ".join(f"{p}={v}" for p, v in zip(sweep.grid, combo))
            arms[name] = {"label": f"{sweep.label or sweep.name}: {shown}", "overrides": overrides}
            prefix = ("arms", name)
            provenance[prefix] = w  # type: ignore[assignment]
            if sweep.base is not None:
                for k, v in list(provenance.items()):
                    if k[:3] == ("arms", sweep.base, "overrides"):
                        provenance[prefix + k[2:]] = v
            for k, v in list(provenance.items()):
                if k[:3] == at + ("overrides",) and len(k) > 3:
                    provenance[prefix + ("overrides",) + k[3:]] = v
            for path in sweep.grid:
                g = lookup(provenance, at + ("grid", path)) or w
                provenance[prefix + ("overrides",) + tuple(path.split("."))] = g  # type: ignore[assignment]
            if len(arms) > MAX_ARMS:
                problems.append(Problem(w[0], ".".join(at), w[1], f"the sweeps make the study {len(arms):,}+ "
                                        f"arms: over the limit of {MAX_ARMS} (MAX_ARMS in specroute.spec.base)"))
                raise SpecError(problems)
    if problems:
        raise SpecError(problems)
    return {**raw, "arms": arms}


def expansion(sweep: SweepSpec) -> list[tuple[str, tuple[Any, ...]]]:
    """(arm name, values in grid order) of every combination of the sweep's grid, in the order written."""
    lasts = [p.rsplit(".", 1)[-1] for p in sweep.grid]
    tags = [p.replace(".", "_") if lasts.count(last) > 1 else last for p, last in zip(sweep.grid, lasts)]
    return [("_".join([sweep.name] + [f"{t}{_value_text(v)}" for t, v in zip(tags, combo)]), combo)
            for combo in itertools.product(*sweep.grid.values())]


def swept_arms(raw_base: dict[str, Any]) -> dict[str, tuple[int, tuple[str, ...]]]:
    """Arm name -> (index of its sweep, the sweep's grid paths), for every arm a study's (already expanded,
    so valid) ``sweeps:`` made."""
    out = {}
    for i, entry in enumerate(raw_base.get("sweeps") or []):
        sweep = SweepSpec.model_validate(entry)
        out.update({name: (i, tuple(sweep.grid)) for name, _ in expansion(sweep)})
    return out


def blame_sweeps(problems: list[Problem], raw_base: dict[str, Any]) -> list[Problem]:
    """Problems of swept arms at a grid path named as the sweep's grid entry (``sweeps.0.grid.loss.util``), once
    for all the arms it made (a bad value keeps ``(in arm ...)``, the one arm it made wrong)."""
    swept = swept_arms(raw_base)
    out = []
    for p in problems:
        for arm, (i, paths) in swept.items():
            prefix = f"arms.{arm}.overrides."
            if not p.field.startswith(prefix):
                continue
            rest = p.field[len(prefix):]
            path = next((g for g in paths if rest == g or rest.startswith(g + ".")), None)
            if path is not None:
                p = p._replace(field=f"sweeps.{i}.grid.{rest}",
                               reason=p.reason if "unknown field" in p.reason else f"{p.reason} (in arm {arm!r})")
            break
        out.append(p)
    return list(dict.fromkeys(out))


def confirm_sweep(raw_base: dict[str, Any], runs: list[tuple[str, int, Any]], yes: bool,
                  confirm: Callable[[str], bool] | None) -> None:
    """Ask before running more than SWEEP_CONFIRM_RUNS runs (arm x seed) of swept arms.

    Raises:
        UserError: nobody can confirm (no terminal) and ``yes`` is False, or the answer is no.
    """
    from specroute.store import UserError

    swept = swept_arms(raw_base)
    n = sum(1 for arm, _, _ in runs if arm in swept)
    if n <= SWEEP_CONFIRM_RUNS or yes:
        return
    what = f"the sweeps make {n:,} runs (more than {SWEEP_CONFIRM_RUNS}, SWEEP_CONFIRM_RUNS in specroute.spec.sweeps)"
    if confirm is None:
        raise UserError(f"{what}; nobody can confirm here (no terminal). Pass --yes to run them anyway, or pick "
                        "arms and seeds with --arm / --seed.")
    if not confirm(f"{what}. Continue?"):
        raise UserError(f"cancelled: {what}")
