"""Spec errors: :class:`SpecError`, its :class:`Problem` lines, and the attribution of pydantic's errors to
the file, line and dotted field path the failing value came from.

A *provenance* maps a key path of the merged spec to the ``(file, line)`` that wrote it (``("--set", None)``
for a value given on the command line); :class:`Origin` says, besides, which overrides a validated tree
carries (an arm's, ``--set``), so that each error is blamed where the user can fix it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, get_args

import yaml
from pydantic import ValidationError

from specroute.spec.models import DEFAULT_KINDS, RunSpec

#: A key path in a spec tree: ("routing", "budget", "full_fraction").
Path_ = tuple[str, ...]


class Problem(NamedTuple):
    """One thing wrong with a spec: the file (or ``--set``), the dotted field path (may be empty), the
    1-based line (None when unknown) and the reason."""

    file: str
    field: str
    line: int | None
    reason: str


class SpecError(Exception):
    """A spec that cannot be loaded or validated.

    Attributes: ``problems`` (list of :class:`Problem`), and the first one's ``file`` (the spec file or
    ``--set``), ``field`` (dotted path, may be empty), ``line`` (1-based, or None), ``reason``.
    ``str()`` gives one or more readable lines.
    """

    def __init__(self, problems: list[Problem]):
        self.problems = [Problem(*p) for p in problems]
        self.file, self.field, self.line, self.reason = self.problems[0]
        super().__init__(self.render())

    def render(self) -> str:
        """One line per problem: ``file[:line]: [field: ]reason`` (files relative to the working
        directory when below it); at most :data:`MAX_PROBLEMS_SHOWN` problems, each field and reason
        clipped (:func:`clip`), so that the message stays short whatever the spec holds."""
        lines = []
        for file, field, line, reason in self.problems[:MAX_PROBLEMS_SHOWN]:
            where = show_file(file) + (f":{line}" if line else "")
            field, reason = clip(field), clip(reason, MAX_REASON_CHARS)
            lines.append(f"{where}: {field}: {reason}" if field else f"{where}: {reason}")
        if len(self.problems) > MAX_PROBLEMS_SHOWN:
            lines.append(f"... and {len(self.problems) - MAX_PROBLEMS_SHOWN:,} more problems")
        return "\n".join(lines)


#: Most problems a :class:`SpecError` message lists (the rest are counted).
MAX_PROBLEMS_SHOWN = 20
#: Longest field path and longest reason shown in a message, in characters.
MAX_FIELD_CHARS = 160
MAX_REASON_CHARS = 600


def clip(text: str, limit: int = MAX_FIELD_CHARS) -> str:
    """``text`` cut to ``limit`` characters with the number left out (``"abc... (+1,234 characters)"``)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... (+{len(text) - limit:,} characters)"


def show_file(file: str) -> str:
    """A spec file as the user would type it: relative to the working directory when below it."""
    if file == "--set":
        return file
    path = Path(file).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def unique(problems: list[Problem]) -> list[Problem]:
    """``problems`` without repeats, in order."""
    return list(dict.fromkeys(problems))


# --------------------------------------------------------------------------------------------------
# attribution of pydantic's errors


@dataclass(frozen=True)
class Origin:
    """Where the values of a tree being validated came from.

    source: the spec file (blamed when nothing better is known). provenance: key path -> (file, line).
    set_tree: the ``--set`` overrides (nested). arm, arm_tree: the arm being resolved and its overrides.
    layer: the path of the validated tree within the file (``("profiles", name)`` for a profile:
    provenance and field are looked up below it). note: added to every reason.
    """

    source: Path
    provenance: Mapping[Path_, tuple[str, int | None]]
    set_tree: Mapping[str, Any] | None = None
    arm: str | None = None
    arm_tree: Mapping[str, Any] | None = None
    layer: Path_ = ()
    note: str = ""


def validate(model: type, raw: dict[str, Any], origin: Origin):
    """Validate ``raw`` as ``model``; turn pydantic's errors into one SpecError naming, per problem,
    the file and line the failing value came from and its dotted field path.

    A value set by ``--set`` is reported against ``--set``; a cross-field rule broken elsewhere while
    ``--set`` was given names the ``--set`` items. For an arm (``origin.arm`` given), a value set by the
    arm's overrides is reported as ``arms.<arm>.overrides.<path>`` at its line, and anything else at its
    path in the study with ``(in arm '<arm>')`` added.
    """
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise SpecError(problems_of(err, raw, origin)) from None


def problems_of(err: ValidationError, raw: dict[str, Any], origin: Origin,
                keep: Callable[[str, Path_], bool] | None = None) -> list[Problem]:
    """pydantic's errors on ``raw`` as :class:`Problem` lines (see :func:`validate`); ``keep(type, loc)``
    selects the errors to report (all when None)."""
    o = origin
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
        field = ".".join(o.layer + loc)
        if e["type"] == "extra_forbidden":
            reason = _extra_reason(raw, loc)
        value = e.get("input")
        if (hint := number_hint(e["type"], value)) is not None:
            reason += hint
        elif e["type"] not in NOT_ON_ITS_OWN + ("extra_forbidden",) and _short_scalar(value):
            reason += f" (got {value!r})"
        where = lookup(o.provenance, o.layer + loc)
        by_set = sets(o.set_tree, loc)
        if by_set:
            where = ("--set", None)
        elif o.set_tree and e["type"] == "value_error":  # a cross-field rule that --set may have broken
            reason += f" (given --set {_set_items(o.set_tree)})"
        if o.arm is not None and not by_set:
            if sets(o.arm_tree, loc):
                prefix = ("arms", o.arm, "overrides")
                where = lookup(o.provenance, prefix + loc) or where
                field = ".".join(prefix + loc)
            else:
                reason = f"{reason} (in arm {o.arm!r})"
        file, line = where if where else (str(o.source), None)
        problems.append(Problem(file, field, line, reason + o.note))
    return problems


#: pydantic error types that judge a value against other values (cross-field rules) or its absence; the
#: others judge a value on its own (type, range, choice, unknown key).
NOT_ON_ITS_OWN = ("value_error", "assertion_error", "missing")

_FIELD_PREFIX = re.compile(r"^([A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*): (.*)$", re.S)

#: The discriminated-union fields of a run spec (gate, data) and every kind they can take, read off the
#: spec's own union types: pydantic puts the kind after such a field in an error's location.
_UNION_FIELDS = {name: f for name, f in RunSpec.model_fields.items() if f.discriminator}
VARIANT_TAGS = frozenset(
    tag for f in _UNION_FIELDS.values() for variant in get_args(f.annotation)
    for tag in get_args(variant.model_fields[f.discriminator].annotation)
)


def _without_variant_tags(loc: Path_) -> Path_:
    """Drop the union tag pydantic puts after a discriminated field (``gate.G3.latent_dim`` ->
    ``gate.latent_dim``; ``gates.G3.G3.latent_dim`` -> ``gates.G3.latent_dim``)."""
    out = []
    for i, part in enumerate(loc):
        after_union = i >= 1 and loc[i - 1] in _UNION_FIELDS or i >= 2 and loc[i - 2] == "gates"
        if not (after_union and part in VARIANT_TAGS):
            out.append(part)
    return tuple(out)


def leaf_paths(tree: Mapping[str, Any], prefix: Path_ = ()) -> list[Path_]:
    """Key paths of the leaves of a nested mapping (an empty mapping is a leaf)."""
    out = []
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.extend(leaf_paths(v, prefix + (k,)))
        else:
            out.append(prefix + (k,))
    return out


def _set_items(set_tree: Mapping[str, Any]) -> str:
    """``--set`` overrides written back as ``a.b=value`` (values in YAML flow style)."""
    items = []
    for path in leaf_paths(set_tree):
        node: Any = set_tree
        for part in path:
            node = node[part]
        value = yaml.safe_dump(node, default_flow_style=True).strip().removesuffix("...").strip()
        items.append(f"{'.'.join(path)}={value}")
    return ", ".join(items)


def _short_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) and len(repr(value)) <= 40


#: Largest float shown rewritten as an integer in a hint (``1e3`` -> ``1000``); larger ones are only called
#: "not an integer" (their digits would say nothing).
_MAX_INT_SHOWN = 10**15
#: What a float of infinite size may have been written as (YAML reads a number beyond the float range as inf).
_INF_NOTE = "YAML reads .inf, and a number beyond the range of a float such as 1e400, as infinity"


def number_hint(error_type: str, value: Any) -> str | None:
    """What to add to pydantic's message for a number field given ``value``, or None when nothing helps.

    ``error_type`` is pydantic's: ``int_type`` / ``float_type`` (a value of another type), ``finite_number``
    (``inf`` or ``nan`` for a float field). Text that spells a finite number (``"4"``) is told to drop its
    quotes (and, when YAML reads even the bare spelling as text, ``.5e0``, to write it as ``0.5``); text or
    a float that is not a finite number (``nan``, ``inf``, ``1e400``, ``.nan``) is called so; a finite float
    for an integer field is "not an integer" (with its integer spelling when whole); no value (YAML's null,
    an empty ``--set field=``) is called so.
    """
    is_int = error_type == "int_type"
    takes = "the field takes an integer" if is_int else "the field takes a finite number"
    if error_type in ("int_type", "float_type") and value is None:
        return f" (got no value: null, or nothing after `field:` or `--set field=`; {takes})"
    if error_type in ("int_type", "float_type") and isinstance(value, str) and _short_scalar(value):
        try:
            number = float(value)
        except ValueError:
            return None
        if not math.isfinite(number):
            return f" (got the text {value!r}, which is not a finite number; {takes})"
        plain = repr(int(number)) if number.is_integer() and abs(number) <= _MAX_INT_SHOWN else repr(number)
        if plain == value.strip():
            return f" (got the text {value!r}: write the number without quotes)"
        return f" (got the text {value!r}, which YAML reads as text: write the number as {plain})"
    if not isinstance(value, float) or error_type not in ("int_type", "finite_number"):
        return None
    if not math.isfinite(value):
        note = f"; {_INF_NOTE}" if math.isinf(value) else ""
        if not is_int:  # pydantic's message already says "finite number"
            return f" (got {value!r}{note})"
        return f" (got {value!r}, which is not a finite number{note}; {takes})"
    if not is_int:
        return None
    if value.is_integer() and abs(value) <= _MAX_INT_SHOWN:
        return f" (got {value!r}, a float, not an integer: write {int(value)})"
    return f" (got {value!r}, a float, not an integer)"


def sets(tree: Mapping[str, Any] | None, loc: Path_) -> bool:
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


def lookup(provenance: Mapping[Path_, tuple[str, int | None]], loc: Path_) -> tuple[str, int | None] | None:
    """(file, line) of the deepest known ancestor of ``loc`` (itself included), or None."""
    for n in range(len(loc), 0, -1):
        if loc[:n] in provenance:
            return provenance[loc[:n]]
    return None
