"""YAML loading: safe parsing, ``extends:`` chains, profiles, ``--set`` overrides, clear errors.

Override order (docs/STYLE.md): defaults < YAML (``extends:`` chain, base first) < profile < arm < ``--set``.

Every failure raises :class:`SpecError`, which names the file, the dotted field path and, where YAML can
tell, the line. The CLI prints it and exits 2.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from specroute.spec.roles import role_problems
from specroute.spec.models import DEFAULT_KINDS, RunSpec, StudySpec

#: Top-level keys that only the loader reads (they are consumed before validation).
LOADER_KEYS = ("extends", "profiles", "default_profile")
#: StudySpec keys that do not belong to a run.
STUDY_KEYS = ("profile", "seeds", "arms", "gates", "comparisons", "roles", "equivalence_margin_nats")

Path_ = tuple[str, ...]


class _SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader (no tag builds a Python object), reading ``3e-4`` as a number as YAML 1.2
    does (YAML 1.1 wants ``3.0e-4`` and would give the text "3e-4")."""


_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


class SpecError(Exception):
    """A spec that cannot be loaded or validated.

    Attributes: ``file`` (the spec file or ``--set``), ``field`` (dotted path, may be empty),
    ``line`` (1-based, or None), ``reason``. ``str()`` gives one or more readable lines.
    """

    def __init__(self, problems: list[tuple[str, str, int | None, str]]):
        self.problems = problems
        self.file, self.field, self.line, self.reason = problems[0]
        super().__init__(self.render())

    def render(self) -> str:
        """One line per problem: ``file[:line]: [field: ]reason`` (files relative to the working
        directory when below it)."""
        lines = []
        for file, field, line, reason in self.problems:
            where = _show_file(file) + (f":{line}" if line else "")
            lines.append(f"{where}: {field}: {reason}" if field else f"{where}: {reason}")
        return "\n".join(lines)


def _show_file(file: str) -> str:
    """A spec file as the user would type it: relative to the working directory when below it."""
    if file == "--set":
        return file
    path = Path(file).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


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
            raise SpecError([(str(self.source), "arms", None, f"unknown arm {arm!r}; "
                              f"choose one of {sorted(self.study.arms)}")])
        raw = {k: v for k, v in self.raw_base.items() if k not in STUDY_KEYS}
        raw = deep_merge(raw, self.study.arms[arm].overrides)
        raw = deep_merge(raw, {k: v for k, v in self.set_tree.items() if k not in STUDY_KEYS})
        raw["gate"] = with_gate_preset(raw.get("gate", {}), self.raw_base.get("gates", {}))
        raw["seed"] = self.study.seeds[0]
        return _validate(RunSpec, raw, self.source, self.provenance, arm=arm,
                         arm_tree=self.study.arms[arm].overrides, set_tree=self.set_tree)


def rebuild(spec: RunSpec, update: Mapping[str, Any]) -> RunSpec:
    """A variant of ``spec`` built by dump, merge and re-validation (never ``model_copy``)."""
    return RunSpec.model_validate(deep_merge(dump_run(spec), dict(update)))


def dump_run(spec: RunSpec) -> dict[str, Any]:
    """The spec as plain JSON-able data that re-validates (computed fields left out)."""
    return spec.model_dump(mode="json", exclude_computed_fields=True)


# --------------------------------------------------------------------------------------------------
# merging


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge ``over`` into a copy of ``base``.

    Dicts merge key by key; everything else is replaced. A dict whose ``kind`` differs from the base's
    (a different variant of a discriminated union, e.g. gate G1 -> G3) replaces the base dict whole, so
    fields of the old variant do not leak into the new one.
    """
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        old = out.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            if "kind" in value and old.get("kind") not in (None, value["kind"]):
                out[key] = copy.deepcopy(value)
            else:
                out[key] = deep_merge(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


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
    """Turn ``["a.b=1", "c=[1, 2]"]`` into a nested dict; values are parsed as YAML (safe)."""
    tree: dict[str, Any] = {}
    for item in assignments:
        if "=" not in item:
            raise SpecError([("--set", item, None, "expected key.path=value")])
        key, _, text = item.partition("=")
        parts = [p for p in key.strip().split(".")]
        if not all(parts):
            raise SpecError([("--set", key, None, "empty component in the key path")])
        try:
            value = yaml.load(text, Loader=_SpecLoader) if text.strip() else None  # noqa: S506 (safe)
        except yaml.YAMLError as e:
            raise SpecError([("--set", key, None, f"value is not valid YAML: {e}")]) from None
        node = tree
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise SpecError([("--set", key, None, f"{p!r} is set both as a value and a table")])
        node[parts[-1]] = value
    return tree


# --------------------------------------------------------------------------------------------------
# YAML with line numbers


def _read_yaml(path: Path) -> tuple[dict[str, Any], dict[Path_, int]]:
    """Parse one YAML file safely; return the mapping and a map dotted-path -> 1-based line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([(str(path), "", None, "file not found")]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError([(str(path), "", None, f"cannot read: {e}")]) from None
    loader = _SpecLoader(text)
    lines: dict[Path_, int] = {}
    starts: dict[tuple[int, int], Path_] = {}  # (line, column) where a value starts -> its path
    try:
        node = loader.get_single_node()  # parse only: syntax errors surface here
        if node is not None:
            _collect_lines(node, (), lines, starts, path)
        data = loader.construct_document(node) if node is not None else {}  # tags fail here
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        reason = " ".join(str(x) for x in (e.context, e.problem) if x)
        field = ""
        if isinstance(e, yaml.constructor.ConstructorError):
            reason += " (only plain YAML is accepted; tags that build Python objects are refused)"
            field = ".".join(starts.get((mark.line, mark.column), ())) if mark else ""
        raise SpecError([(str(path), field, mark.line + 1 if mark else None, reason)]) from None
    except yaml.YAMLError as e:
        raise SpecError([(str(path), "", None, f"invalid YAML: {e}")]) from None
    finally:
        loader.dispose()
    if node is None:
        raise SpecError([(str(path), "", None, "the file is empty (write `{}` to mean every default)")])
    if not isinstance(data, dict):
        raise SpecError([(str(path), "", 1, f"top level must be a mapping, got {type(data).__name__}")])
    return data, lines


def _collect_lines(
    node: yaml.Node, prefix: Path_, out: dict[Path_, int], starts: dict[tuple[int, int], Path_],
    file: Path,
) -> None:
    """Record the 1-based line of every key path and where each value node starts.

    Raises SpecError on a key given twice in one mapping (plain YAML would silently keep the last).
    """
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            path = prefix + (key,)
            if key in seen and key != "<<":
                raise SpecError([(str(file), ".".join(path), key_node.start_mark.line + 1,
                                  f"key {key!r} is given twice (first on line {out[path]})")])
            seen.add(key)
            out[path] = key_node.start_mark.line + 1
            starts.setdefault((value_node.start_mark.line, value_node.start_mark.column), path)
            _collect_lines(value_node, path, out, starts, file)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            path = prefix + (str(i),)
            out[path] = item.start_mark.line + 1
            starts.setdefault((item.start_mark.line, item.start_mark.column), path)
            _collect_lines(item, path, out, starts, file)


def load_raw(path: Path, _chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any], dict[Path_, tuple[str, int]]]:
    """Load ``path`` with its ``extends:`` chain merged (base first). Returns data and provenance."""
    path = path.resolve()
    if path in _chain:
        cycle = " -> ".join(p.name for p in (*_chain, path))
        raise SpecError([(str(path), "extends", None, f"extends cycle: {cycle}")])
    data, lines = _read_yaml(path)
    provenance = {k: (str(path), v) for k, v in lines.items()}
    parents = data.pop("extends", None)
    if parents is None:
        return data, provenance
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise SpecError([(str(path), "extends", lines.get(("extends",)),
                          "must be a file path or a list of file paths")])
    merged: dict[str, Any] = {}
    merged_prov: dict[Path_, tuple[str, int]] = {}
    for parent in parents:
        ppath = (path.parent / parent).resolve()
        if ppath in (*_chain, path):
            cycle = " -> ".join(p.name for p in (*_chain, path, ppath))
            raise SpecError([(str(path), "extends", lines.get(("extends",)), f"extends cycle: {cycle}")])
        if not ppath.is_file():
            what = "is a folder, not a file" if ppath.is_dir() else "not found"
            raise SpecError([(str(path), "extends", lines.get(("extends",)),
                              f"extended file {parent!r} {what} (looked at {ppath})")])
        pdata, pprov = load_raw(ppath, (*_chain, path))
        merged = deep_merge(merged, pdata)
        merged_prov.update(pprov)
    merged_prov.update({k: v for k, v in provenance.items() if k[:1] != ("extends",)})
    return deep_merge(merged, data), merged_prov


def load_study(
    path: str | Path, profile: str | None = None, overrides: Iterable[str] = ()
) -> Resolved:
    """Load, resolve and validate a study spec; validate every arm too.

    Args:
        path: the YAML spec file.
        profile: a name under ``profiles:``; None picks ``default_profile`` (or none if absent).
        overrides: ``key.path=value`` strings (``--set``), applied last.

    Raises:
        SpecError: missing file, bad YAML or tag, ``extends`` cycle, unknown profile, or any validation
            failure (unknown key, wrong type, out-of-range value, cross-field rule) in the base or an arm.
    """
    source = Path(path)
    raw, provenance = load_raw(source)
    profiles = raw.pop("profiles", {}) or {}
    default_profile = raw.pop("default_profile", None)
    if not isinstance(profiles, dict):
        raise SpecError([(str(source), "profiles", None, "must be a mapping of name -> overrides")])
    name = profile if profile is not None else default_profile
    for pname, body in profiles.items():
        if body is not None and not isinstance(body, dict):
            where = _lookup(provenance, ("profiles", str(pname)))
            raise SpecError([(where[0] if where else str(source), f"profiles.{pname}",
                              where[1] if where else None, "must be a mapping")])
    file_raw = copy.deepcopy(raw)
    file_provenance = dict(provenance)
    if name is not None:
        if name not in profiles:
            known = ", ".join(sorted(profiles)) or "none defined"
            raise SpecError([(str(source), "profile", None,
                              f"unknown profile {name!r} (known: {known})")])
        raw = deep_merge(raw, profiles[name] or {})
        for k, v in list(provenance.items()):
            if k[:2] == ("profiles", name) and len(k) > 2:
                provenance[k[2:]] = v
        raw["profile"] = name
    set_tree = parse_set(overrides)
    raw = _gate_preset(deep_merge(_default_kinds(raw), set_tree))  # kinds before --set: it may switch one
    for k in _leaf_paths(set_tree):
        provenance[k] = ("--set", None)  # type: ignore[assignment]
    problems = _layer_problems(file_raw, profiles, name, set_tree, source, file_provenance)
    try:
        study = _validate(StudySpec, raw, source, provenance, set_tree=set_tree)
    except SpecError as e:
        raise SpecError(_unique(e.problems + problems)) from None
    if problems:
        raise SpecError(_unique(problems))
    resolved = Resolved(study, source, raw, set_tree, provenance)
    for arm in study.arms:
        try:
            resolved.arm_spec(arm)
        except SpecError as e:
            problems.extend(e.problems)
    if not problems:
        for path, reason in role_problems(study.roles, resolved.arm_spec):
            where = _lookup(provenance, tuple(path.split("."))) or (str(source), None)
            problems.append((where[0], path, where[1], reason))
    if problems:
        raise SpecError(problems)
    return resolved


def _unique(problems: list[tuple[str, str, int | None, str]]) -> list[tuple[str, str, int | None, str]]:
    return list(dict.fromkeys(problems))


def _leaf_paths(tree: Mapping[str, Any], prefix: Path_ = ()) -> list[Path_]:
    out = []
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.extend(_leaf_paths(v, prefix + (k,)))
        else:
            out.append(prefix + (k,))
    return out


_FIELD_PREFIX = re.compile(r"^([A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*): (.*)$", re.S)
_VARIANT_TAGS = {"G1", "G3", "embedded", "fineweb_edu", "local"}


def _validate(
    model: type,
    raw: dict[str, Any],
    source: Path,
    provenance: dict,
    arm: str | None = None,
    arm_tree: Mapping[str, Any] | None = None,
    set_tree: Mapping[str, Any] | None = None,
):
    """Validate ``raw`` as ``model``; turn pydantic's errors into one SpecError naming, per problem,
    the file and line the failing value came from and its dotted field path.

    A value set by ``--set`` is reported against ``--set``; a cross-field rule broken elsewhere while
    ``--set`` was given names the ``--set`` items. For an arm (``arm`` given), a value set by the arm's
    overrides is reported as ``arms.<arm>.overrides.<path>`` at its line, and anything else at its path in
    the study with ``(in arm '<arm>')`` added.
    """
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise SpecError(_problems(err, raw, source, provenance, arm, arm_tree, set_tree)) from None


def _problems(
    err: ValidationError,
    raw: dict[str, Any],
    source: Path,
    provenance: dict,
    arm: str | None = None,
    arm_tree: Mapping[str, Any] | None = None,
    set_tree: Mapping[str, Any] | None = None,
    keep: Callable[[str, Path_], bool] | None = None,
    layer: Path_ = (),
    note: str = "",
) -> list[tuple[str, str, int | None, str]]:
    """pydantic's errors as (file, field, line, reason); see :func:`_validate`.

    ``keep(type, loc)`` selects errors; ``layer`` is the path of the tree that was validated within the
    file (``("profiles", name)`` for a profile: provenance and field are looked up below it); ``note`` is
    added to each reason.
    """
    problems = []
    for e in err.errors():
        loc = _without_variant_tags(tuple(str(x) for x in e["loc"]))
        reason = e["msg"].removeprefix("Value error, ")
        if e["type"] == "value_error" and (m := _FIELD_PREFIX.match(reason)):
            loc, reason = loc + tuple(m.group(1).split(".")), m.group(2)
        if e["type"] == "union_tag_invalid":  # the bad value is the discriminator: blame `kind`
            loc = loc + ("kind",)
        if keep is not None and not keep(e["type"], loc):
            continue
        field = ".".join(layer + loc)
        if e["type"] == "extra_forbidden":
            reason = _extra_reason(raw, loc)
        value = e.get("input")
        if e["type"] in ("float_type", "int_type") and _is_number_text(value):
            reason += _number_text_hint(value)
        elif e["type"] not in _NOT_ON_ITS_OWN + ("extra_forbidden",) and _short_scalar(value):
            reason += f" (got {value!r})"
        where = _lookup(provenance, layer + loc)
        by_set = _sets(set_tree, loc)
        if by_set:
            where = ("--set", None)
        elif set_tree and e["type"] == "value_error":  # a cross-field rule that --set may have broken
            reason += f" (given --set {_set_items(set_tree)})"
        if arm is not None and not by_set:
            if _sets(arm_tree, loc):
                prefix = ("arms", arm, "overrides")
                where = _lookup(provenance, prefix + loc) or where
                field = ".".join(prefix + loc)
            else:
                reason = f"{reason} (in arm {arm!r})"
        file, line = where if where else (str(source), None)
        problems.append((file, field, line, reason + note))
    return problems


#: pydantic error types that judge a value against other values (cross-field rules) or its absence; the
#: others judge a value on its own (type, range, choice, unknown key).
_NOT_ON_ITS_OWN = ("value_error", "assertion_error", "missing")


def _set_items(set_tree: Mapping[str, Any]) -> str:
    """``--set`` overrides written back as ``a.b=value`` (values in YAML flow style)."""
    items = []
    for path in _leaf_paths(set_tree):
        node: Any = set_tree
        for part in path:
            node = node[part]
        value = yaml.safe_dump(node, default_flow_style=True).strip().removesuffix("...").strip()
        items.append(f"{'.'.join(path)}={value}")
    return ", ".join(items)


def _layer_problems(
    file_raw: dict[str, Any], profiles: Mapping[str, Any], selected: str | None,
    set_tree: Mapping[str, Any], source: Path, provenance: dict,
) -> list[tuple[str, str, int | None, str]]:
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
            layers.append((("profiles", name), deep_merge(file_raw, body), body, ""))
    problems = []
    for layer, tree, sets, note in layers:
        try:
            StudySpec.model_validate(_gate_preset(_default_kinds(tree)))
        except ValidationError as err:
            problems += _problems(err, tree, source, provenance, layer=layer, note=note,
                                  keep=lambda t, loc, s=sets: t not in _NOT_ON_ITS_OWN and _sets(s, loc))
    return problems


def _default_kinds(raw: dict[str, Any]) -> dict[str, Any]:
    """An omitted ``kind`` (of ``gate``, ``data``) made the default kind."""
    raw = dict(raw)
    for key, kind in DEFAULT_KINDS.items():
        if isinstance(raw.get(key), dict) and "kind" not in raw[key]:
            raw[key] = {"kind": kind, **raw[key]}
    return raw


def _gate_preset(raw: dict[str, Any]) -> dict[str, Any]:
    """The study's gate preset (``gates:``) for the gate's kind applied under ``gate``."""
    if isinstance(raw.get("gates"), dict) and isinstance(raw.get("gate", {}), dict):
        raw = {**raw, "gate": with_gate_preset(raw.get("gate", {}), raw["gates"])}
    return raw


def _without_variant_tags(loc: Path_) -> Path_:
    """Drop the union tag pydantic puts after a discriminated field (``gate.G3.latent_dim`` ->
    ``gate.latent_dim``; ``gates.G3.G3.latent_dim`` -> ``gates.G3.latent_dim``)."""
    out = []
    for i, part in enumerate(loc):
        after_union = i >= 1 and loc[i - 1] in DEFAULT_KINDS or i >= 2 and loc[i - 2] == "gates"
        if not (after_union and part in _VARIANT_TAGS):
            out.append(part)
    return tuple(out)


def _is_number_text(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        float(value)
    except ValueError:
        return False
    return True


def _short_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) and len(repr(value)) <= 40


def _number_text_hint(text: str) -> str:
    return f" (got the text {text!r}: write the number without quotes)"


def _sets(tree: Mapping[str, Any] | None, loc: Path_) -> bool:
    """Whether ``tree`` (nested overrides) sets the value at ``loc`` or one of its ancestors."""
    node: Any = tree
    for part in loc:
        if not isinstance(node, Mapping):
            return node is not tree
        if part not in node:
            return False
        node = node[part]
    return bool(loc)


def _extra_reason(raw: dict[str, Any], loc: Path_) -> str:
    node: Any = raw
    for part in loc[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    kind = node.get("kind", DEFAULT_KINDS["gate"]) if isinstance(node, dict) else None
    if kind and loc[:1] == ("gate",) and len(loc) == 2:
        return f"unknown field {loc[-1]!r} for gate kind {kind} (fields of one gate kind are not " \
               "allowed under another)"
    return f"unknown field {loc[-1]!r} (not part of the spec language; see `specroute schema`)"


def _lookup(provenance: dict, loc: Path_) -> tuple[str, int | None] | None:
    """Line of the deepest known ancestor of ``loc``."""
    for n in range(len(loc), 0, -1):
        if loc[:n] in provenance:
            return provenance[loc[:n]]
    return None
