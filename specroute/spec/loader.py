"""Loading a study: profiles, arms, gate presets, ``--set`` overrides, validation.

Override order (docs/STYLE.md): defaults < YAML (``extends:`` chain, base first) < profile < arm < ``--set``.
Reading the YAML files (safe, with lines, ``extends:``) is :mod:`specroute.spec.yaml_io`'s job.

Every failure raises :class:`SpecError`, which names the file, the dotted field path and, where YAML can
tell, the line (:mod:`specroute.spec.errors` traces each error to where the value was written). The CLI
prints it and exits 2.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from specroute.spec.base import FOLDER_NAME, folder_name_reason
from specroute.spec.errors import (NOT_ON_ITS_OWN, Origin, Path_, Problem, SpecError, clip, leaf_paths, lookup,
                                   problems_of, sets, unique, validate)
from specroute.spec.models import DEFAULT_KINDS, RunSpec, with_default_kinds
from specroute.spec.roles import role_problems
from specroute.spec.study import StudySpec
from specroute.spec.sweeps import blame_sweeps, expand_sweeps
from specroute.spec.yaml_io import (MAX_DEPTH, MAX_FILE_BYTES, MAX_SCALAR_CHARS, Budget, SpecLimitError, deep_merge,
                                    load_raw, parse_yaml)

#: Top-level keys that only the loader reads (they are consumed before validation).
LOADER_KEYS = ("extends", "profiles", "default_profile")
#: Most profiles in a spec file (each is validated on its own, so the time to load a spec grows with their number).
MAX_PROFILES = 64
#: StudySpec keys that do not belong to a run.
STUDY_KEYS = ("profile", "seeds", "arms", "sweeps", "gates", "comparisons", "roles", "equivalence_margin_nats")

__all__ = ["LOADER_KEYS", "STUDY_KEYS", "Problem", "Resolved", "SpecError", "deep_merge", "dump_run",
           "load_raw", "load_study", "parse_set", "rebuild", "with_gate_preset"]


@dataclass(frozen=True)
class Resolved:
    """A validated study and the raw dict it came from (for arm resolution and provenance)."""

    study: StudySpec
    source: Path
    raw_base: dict[str, Any]
    set_tree: dict[str, Any]
    provenance: dict[Path_, tuple[str, int | None]]

    def runs(self) -> list[tuple[str, int, RunSpec]]:
        """Every (arm, seed, RunSpec) of the study, arms in spec order, seeds ascending order given."""
        out = []
        for arm in self.study.arms:
            spec = self.arm_spec(arm)
            for seed in self.study.seeds:
                out.append((arm, seed, rebuild(spec, {"seed": seed})))
        return out

    def arm_spec(self, arm: str) -> RunSpec:
        """The RunSpec of one arm (seed = the study's first seed). Raises SpecError if invalid."""
        if arm not in self.study.arms:
            raise SpecError([Problem(str(self.source), "arms", None, f"unknown arm {arm!r}; "
                                     f"choose one of {sorted(self.study.arms)}")])
        raw = {k: v for k, v in self.raw_base.items() if k not in STUDY_KEYS}
        raw = deep_merge(raw, self.study.arms[arm].overrides)
        raw = deep_merge(raw, {k: v for k, v in self.set_tree.items() if k not in STUDY_KEYS})
        raw["gate"] = with_gate_preset(raw.get("gate", {}), self.raw_base.get("gates", {}))
        raw["seed"] = self.study.seeds[0]
        raw, problems = with_checkpoint_model(raw, self.source, self.provenance)
        if problems:
            raise SpecError(problems)
        return validate(RunSpec, raw, Origin(self.source, self.provenance, set_tree=self.set_tree, arm=arm,
                                             arm_tree=self.study.arms[arm].overrides))


def rebuild(spec: RunSpec, update: Mapping[str, Any]) -> RunSpec:
    """A variant of ``spec`` built by dump, merge and re-validation (never ``model_copy``)."""
    return RunSpec.model_validate(deep_merge(dump_run(spec), dict(update)))


def dump_run(spec: RunSpec) -> dict[str, Any]:
    """The spec as plain JSON-able data that re-validates (computed fields left out)."""
    return spec.model_dump(mode="json", exclude_computed_fields=True)


# --------------------------------------------------------------------------------------------------
# presets and overrides


def with_gate_preset(gate: Mapping[str, Any], presets: Mapping[str, Any]) -> dict[str, Any]:
    """The gate dict merged on top of the study's preset for its kind (``gates:``), if any.

    Anything that is not a mapping is returned unchanged, for validation to report.
    """
    if not isinstance(gate, Mapping):
        return gate  # type: ignore[return-value]
    kind = gate.get("kind", DEFAULT_KINDS["gate"])
    preset = presets.get(kind) if isinstance(presets, Mapping) and isinstance(kind, str) else None
    return deep_merge(preset if isinstance(preset, Mapping) else {}, gate)


def parse_set(assignments: Iterable[str]) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=[1, 2]"]`` into a nested dict; values are parsed as YAML (safe) within the
    limits of a spec file (:mod:`specroute.spec.yaml_io`: a value's length, depth, nodes, scalars; a key
    path of at most ``MAX_DEPTH`` parts; all values together within one ``MAX_NODES`` budget).

    Raises SpecError (file ``--set``) naming the item: no ``=``, an empty key part, a value that is not
    valid YAML or passes a limit, a key set both as a value and a table.
    """
    tree: dict[str, Any] = {}
    budget = Budget()
    for item in assignments:
        if "=" not in item:
            raise SpecError([Problem("--set", clip(item), None, "expected key.path=value")])
        key, _, text = item.partition("=")
        parts = [p for p in key.strip().split(".")]
        if not all(parts):
            raise SpecError([Problem("--set", clip(key), None, "empty component in the key path")])
        if len(parts) > MAX_DEPTH or len(key) > MAX_SCALAR_CHARS:
            raise SpecError([Problem("--set", clip(key), None, f"a key path of {len(parts):,} parts and {len(key):,} "
                                     f"characters: the limits are {MAX_DEPTH} parts (yaml_io.MAX_DEPTH) and "
                                     f"{MAX_SCALAR_CHARS:,} characters (yaml_io.MAX_SCALAR_CHARS)")])
        if len(text) > MAX_FILE_BYTES:
            raise SpecError([Problem("--set", clip(key), None, f"a value of {len(text):,} characters: the limit "
                                     f"is {MAX_FILE_BYTES:,} (yaml_io.MAX_FILE_BYTES)")])
        value = None
        if text.strip():
            try:
                _, value, _ = parse_yaml(text, "--set", budget)
            except SpecError as e:
                reason = e.reason if isinstance(e, SpecLimitError) else \
                    f"value is not valid YAML: {e.reason} (the value: {clip(text)!r})"
                raise SpecError([Problem("--set", clip(key), None, reason)]) from None
        node = tree
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise SpecError([Problem("--set", clip(key), None, f"{p!r} is set both as a value and a table")])
        node[parts[-1]] = value
    return tree


# --------------------------------------------------------------------------------------------------
# a study


def load_study(
    path: str | Path, profile: str | None = None, overrides: Iterable[str] = ()
) -> Resolved:
    """Load, resolve and validate a study spec; validate every arm too.

    Args:
        path: the YAML spec file.
        profile: a name under ``profiles:``; None picks ``default_profile`` (or none if absent).
        overrides: ``key.path=value`` strings (``--set``), applied last.

    ``sweeps:`` expand into arms (:func:`specroute.spec.sweeps.expand_sweeps`) after the profile is applied.
    With ``backbone.pretrained`` the model section is read from the checkpoint's config.json, for the study
    and for every arm (:func:`with_checkpoint_model`).

    Raises:
        SpecError: missing file, bad YAML or tag, ``extends`` cycle, unknown profile, or any validation
            failure (unknown key, wrong type, out-of-range value, cross-field rule) in the base or an arm;
            a bad sweep (its file:line), a swept arm name that collides with another arm.
    """
    source = Path(path)
    raw, provenance = load_raw(source)
    profiles = raw.pop("profiles", {}) or {}
    default_profile = raw.pop("default_profile", None)
    if not isinstance(profiles, dict):
        raise SpecError([Problem(str(source), "profiles", None, "must be a mapping of name -> overrides")])
    if len(profiles) > MAX_PROFILES:
        where = lookup(provenance, ("profiles",)) or (str(source), None)
        raise SpecError([Problem(where[0], "profiles", where[1], f"{len(profiles):,} profiles: over the limit of "
                                 f"{MAX_PROFILES} (MAX_PROFILES in specroute.spec.loader)")])
    if not isinstance(default_profile, (str, type(None))):
        where = lookup(provenance, ("default_profile",)) or (str(source), None)
        raise SpecError([Problem(where[0], "default_profile", where[1], "must be the name of a profile (or null)")])
    name = profile if profile is not None else default_profile
    for pname, body in profiles.items():
        if not isinstance(pname, str):
            where = lookup(provenance, ("profiles", str(pname))) or (str(source), None)
            raise SpecError([Problem(where[0], f"profiles.{pname}", where[1],
                                     f"a profile name must be text, got {type(pname).__name__} (quote it)")])
        if not FOLDER_NAME.fullmatch(pname):  # the default output folder is reports/<name>/<profile>
            where = lookup(provenance, ("profiles", pname)) or (str(source), None)
            raise SpecError([Problem(where[0], f"profiles.{pname}", where[1],
                                     folder_name_reason(pname, "profile name"))])
        if body is not None and not isinstance(body, dict):
            where = lookup(provenance, ("profiles", str(pname)))
            raise SpecError([Problem(where[0] if where else str(source), f"profiles.{pname}",
                                     where[1] if where else None, "must be a mapping")])
    file_raw = copy.deepcopy(raw)
    file_provenance = dict(provenance)
    if name is not None:
        if name not in profiles:
            known = ", ".join(sorted(map(str, profiles))) or "none defined"
            raise SpecError([Problem(str(source), "profile", None,
                                     f"unknown profile {name!r} (known: {known})")])
        raw = deep_merge(raw, profiles[name] or {})
        for k, v in list(provenance.items()):
            if k[:2] == ("profiles", name) and len(k) > 2:
                provenance[k[2:]] = v
        raw["profile"] = name
    raw = expand_sweeps(raw, provenance, source)
    set_tree = parse_set(overrides)
    raw = _gate_preset(deep_merge(with_default_kinds(raw), set_tree))  # kinds before --set: it may switch one
    for k in leaf_paths(set_tree):
        provenance[k] = ("--set", None)  # type: ignore[assignment]
    problems = _layer_problems(file_raw, profiles, name, set_tree, source, file_provenance)
    filled, checkpoint_problems = with_checkpoint_model(raw, source, provenance)
    if checkpoint_problems:
        raise SpecError(checkpoint_problems + problems)
    try:
        study = validate(StudySpec, filled, Origin(source, provenance, set_tree=set_tree))
    except SpecError as e:
        raise SpecError(blame_sweeps(unique(e.problems + problems), raw)) from None
    if problems:
        raise SpecError(blame_sweeps(unique(problems), raw))
    resolved = Resolved(study, source, raw, set_tree, provenance)
    for arm in study.arms:
        try:
            resolved.arm_spec(arm)
        except SpecError as e:
            problems.extend(e.problems)
    if not problems:
        for path, reason in role_problems(study.roles, resolved.arm_spec):
            where = lookup(provenance, tuple(path.split("."))) or (str(source), None)
            problems.append(Problem(where[0], path, where[1], reason))
    if problems:
        raise SpecError(blame_sweeps(problems, raw))
    return resolved


def with_checkpoint_model(
    raw: dict[str, Any], source: Path, provenance: Mapping[Path_, tuple[str, int | None]]
) -> tuple[dict[str, Any], list[Problem]]:
    """``raw`` with its model section read from ``backbone.pretrained``'s config.json (only the config: no
    weights are read, so ``validate`` and ``flops`` show the real sizes). A model field the spec leaves out
    takes the checkpoint's value; one the spec sets must agree with it. ``data.tokenizer`` left out becomes
    ``pretrained``. A raw spec without ``backbone.pretrained`` is returned as it is.

    Returns (the filled raw spec, problems): a checkpoint whose config cannot be had (offline, not cached:
    the problem names the model and the ways to provide it) or whose architecture the decoder cannot run,
    and every model field that contradicts the checkpoint, naming the spec's file, line and value and the
    checkpoint's config.json and value.
    """
    from specroute.model.pretrained import checkpoint_config, converter_for, local_folder
    from specroute.store import UserError

    backbone = raw.get("backbone")
    name = backbone.get("pretrained") if isinstance(backbone, dict) else None
    if not isinstance(name, str) or not name:
        return raw, []
    revision = backbone.get("revision") if isinstance(backbone.get("revision"), str) else None

    def at(*path: str) -> tuple[str, int | None]:
        return lookup(provenance, path) or (str(source), None)

    try:
        config = checkpoint_config(name, revision, source.parent)
        fields = converter_for(config).model_fields(config)
    except (UserError, ValueError, KeyError) as e:
        reason = f"config.json has no key {e}" if isinstance(e, KeyError) else str(e)
        file, line = at("backbone", "pretrained")
        return raw, [Problem(file, "backbone.pretrained", line, f"{name}: {reason}")]
    model = raw.get("model", {})
    if not isinstance(model, dict):
        return raw, []  # validation reports it
    folder = local_folder(name, source.parent)
    config_file = str(folder / "config.json") if folder else f"{name}'s config.json"
    problems = []
    for key, value in fields.items():
        given = model.get(key)
        if given is not None and (given != value or type(given) is not type(value)):
            file, line = at("model", key)
            problems.append(Problem(file, f"model.{key}", line, f"{key}={given!r} contradicts the checkpoint: "
                                    f"{config_file} gives {key}={value!r} (backbone.pretrained: {name}); leave "
                                    f"model.{key} out to take the checkpoint's value"))
    filled = {**raw, "model": {**model, **fields}}
    data = raw.get("data", {})
    if isinstance(data, dict) and "tokenizer" not in data:
        filled["data"] = {**data, "tokenizer": "pretrained"}
    return filled, problems


def _layer_problems(
    file_raw: dict[str, Any], profiles: Mapping[str, Any], selected: str | None,
    set_tree: Mapping[str, Any], source: Path, provenance: dict,
) -> list[Problem]:
    """Values written in the file that the resolved spec never sees, checked on their own.

    Only the merged spec is validated, so a value of the file's base that the chosen profile or ``--set``
    replaces, or a value in a profile that was not chosen, would go unchecked: ``steps: lots`` must be an
    error whichever profile runs. Each such value is checked for its type, range, choice and key (not
    for cross-field rules, which only the merged spec can judge). ``profiles`` must hold mappings.
    """
    shadow = deep_merge(dict(profiles.get(selected) or {}) if selected else {}, dict(set_tree))
    by = " and ".join(([f"profile {selected!r}"] if selected and profiles.get(selected) else [])
                      + (["--set"] if set_tree else []))
    # (path of the layer in the file, tree to validate, the values it sets, note)
    layers: list[tuple[Path_, dict[str, Any], Mapping[str, Any], str]] = []
    if shadow:
        layers.append(((), file_raw, shadow, f" (replaced by {by}, but invalid as written)"))
    for name, body in profiles.items():
        if body and (name != selected or set_tree):
            layers.append((("profiles", name), deep_merge(_at(file_raw, body), body), body, ""))
    problems = []
    for layer, tree, given, note in layers:
        tree = _at(tree, given)  # only what the layer sets is judged: no need to validate the rest
        try:
            StudySpec.model_validate(_gate_preset(with_default_kinds(tree)))
        except ValidationError as err:
            problems += problems_of(err, tree, Origin(source, provenance, layer=layer, note=note),
                                    keep=lambda t, loc, g=given: t not in NOT_ON_ITS_OWN and sets(g, loc))
    return problems


def _at(tree: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """The part of ``tree`` at the key paths ``given`` sets, keeping the ``kind`` of each mapping on the way
    (the variant its values are judged as). Its errors of type, range, choice and key at those paths are
    the whole tree's."""
    out: dict[str, Any] = {}
    for key, value in given.items():
        if key not in tree:
            continue
        here = tree[key]
        if isinstance(value, dict) and value and isinstance(here, dict):
            out[key] = _at(here, value)
            if "kind" in here:
                out[key]["kind"] = here["kind"]
        else:
            out[key] = here
    return out


def _gate_preset(raw: dict[str, Any]) -> dict[str, Any]:
    """The study's gate preset (``gates:``) for the gate's kind applied under ``gate``."""
    if isinstance(raw.get("gates"), dict) and isinstance(raw.get("gate", {}), dict):
        raw = {**raw, "gate": with_gate_preset(raw.get("gate", {}), raw["gates"])}
    return raw
