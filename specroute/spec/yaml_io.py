"""Reading spec files: safe YAML with the line of every key, ``extends:`` chains, and the merge they use.

No YAML tag ever builds a Python object; a key given twice is an error; every failure is a
:class:`~specroute.spec.errors.SpecError` naming the file and, where YAML can tell, the line.

Reading is bounded (the ``MAX_*`` constants below): only regular files of at most 1 MiB are opened (never a
FIFO or a device, so nothing hangs), and a document is composed node by node within a depth, a node count
and a scalar length, then its alias expansion is counted on the composed graph before any Python object is
built, so that no small file can exhaust memory or time.
"""

from __future__ import annotations

import copy
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from specroute.spec.errors import Path_, Problem, SpecError

# --------------------------------------------------------------------------------------------------
# limits: reading a spec is bounded in size, depth, expansion and time (docs/DESIGN.md, "Specs and profiles")

#: Largest spec file read, in bytes (the shipped ones are a few KB); also the longest ``--set`` value.
MAX_FILE_BYTES = 1 << 20
#: Deepest nesting of mappings and lists, counted with aliases expanded (the spec language needs 6).
MAX_DEPTH = 64
#: Most YAML nodes (keys, values, list items) in one spec with its ``extends`` files, counted with aliases
#: and merge keys expanded, before any Python object is built (a "billion laughs" file is refused here).
MAX_NODES = 10_000
#: Longest scalar (a key or a value), in characters.
MAX_SCALAR_CHARS = 10_000
#: Longest number written in a spec, in characters (Python's int parsing is quadratic in the digits).
MAX_NUMBER_CHARS = 100
#: Longest ``extends`` chain (a file, its base, its base's base, ...), and most files read for one spec.
MAX_EXTENDS_CHAIN = 16
MAX_EXTENDS_FILES = 64


@dataclass
class Budget:
    """What one spec (its file, its ``extends`` files and its ``--set`` values) may still use of
    :data:`MAX_NODES` and :data:`MAX_EXTENDS_FILES`."""

    nodes: int = MAX_NODES
    files: int = MAX_EXTENDS_FILES


class SpecLimitError(SpecError):
    """A spec that passes one of the limits above (its reason names the limit's constant)."""


def _limit(source: str, line: int | None, what: str, constant: str, unit: str, field: str = "") -> SpecLimitError:
    limit = globals()[constant]
    return SpecLimitError([Problem(source, field, line, f"{what}: over the limit of {limit:,} {unit} "
                                   f"({constant} in specroute.spec.yaml_io)")])


class SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader (no tag builds a Python object), reading ``3e-4`` as a number as YAML 1.2
    does (YAML 1.1 wants ``3.0e-4`` and would give the text "3e-4").

    It composes within the limits above (depth, nodes, scalar and number length) and raises
    :class:`SpecError` naming ``source`` and the line where one is passed; aliases are checked once the
    document is composed (:func:`check_expansion`).
    """

    def __init__(self, stream: str, source: str = "<yaml>", budget: Budget | None = None):
        super().__init__(stream)
        self.source = source
        self.budget = budget if budget is not None else Budget()
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):  # a node composed before: counted by check_expansion
            return super().compose_node(parent, index)
        line = self.peek_event().start_mark.line + 1
        self.depth += 1
        self.budget.nodes -= 1
        if self.depth > MAX_DEPTH:
            raise _limit(self.source, line, "nested too deep", "MAX_DEPTH", "levels")
        if self.budget.nodes < 0:
            raise _limit(self.source, line, "too many YAML nodes (keys, values and list items, extends files included)",
                         "MAX_NODES", _NODES)
        try:
            node = super().compose_node(parent, index)
        finally:
            self.depth -= 1
        if isinstance(node, yaml.ScalarNode):
            if len(node.value) > MAX_SCALAR_CHARS:
                raise _limit(self.source, line, f"a scalar of {len(node.value):,} characters", "MAX_SCALAR_CHARS",
                             "characters")
            if node.tag in (_INT, _FLOAT) and len(node.value) > MAX_NUMBER_CHARS:
                raise _limit(self.source, line, f"a number of {len(node.value):,} characters", "MAX_NUMBER_CHARS",
                             "characters")
        return node


_NODES = "nodes"
_INT, _FLOAT = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"

SpecLoader.add_implicit_resolver(
    _FLOAT,
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def check_expansion(root: yaml.Node, source: str, budget: Budget) -> None:
    """Refuse a composed document whose tree, with every alias (and merge key) expanded, is deeper than
    :data:`MAX_DEPTH`, has more nodes than ``budget`` holds, or contains itself (an alias inside its own
    anchor). Linear in the composed graph: each node's expanded size and height are computed once.

    Raises SpecError naming ``source`` and the line of the smallest node over the limit; takes the
    document's expanded size off ``budget.nodes`` (its composed nodes were taken off while composing).
    """
    done: dict[int, tuple[int, int, int]] = {}  # id(node) -> (expanded size, height, line), in post-order
    open_: set[int] = set()
    cap = 2 * (MAX_NODES + 1)  # sizes are capped: enough to tell "over the limit", small numbers

    def visit(node: yaml.Node, depth: int) -> tuple[int, int]:
        key = id(node)
        line = node.start_mark.line + 1
        if key in open_:
            raise SpecError([Problem(source, "", line, "an alias refers to a node that contains it (a "
                                     "recursive structure); a spec is a tree")])
        if key not in done:
            if depth > MAX_DEPTH:
                raise _limit(source, line, "nested too deep once aliases are expanded", "MAX_DEPTH",
                             "levels")
            open_.add(key)
            children: list[yaml.Node] = []
            if isinstance(node, yaml.SequenceNode):
                children = list(node.value)
            elif isinstance(node, yaml.MappingNode):
                children = [n for pair in node.value for n in pair]
            size, height = 1, 1
            for child in children:
                s, h = visit(child, depth + 1)
                size, height = min(cap, size + s), max(height, h + 1)
            open_.discard(key)
            done[key] = (size, height, line)
        size, height, _ = done[key]
        if depth - 1 + height > MAX_DEPTH:
            raise _limit(source, line, "nested too deep once aliases are expanded", "MAX_DEPTH", "levels")
        return size, height

    size, _ = visit(root, 1)
    allowance = budget.nodes + len(done)  # composing took the composed nodes off already
    if size > allowance:  # point at the smallest subtree over the limit (the first in post-order)
        line = next(ln for s, _, ln in done.values() if s > allowance)
        raise _limit(source, line, "too many YAML nodes once aliases are expanded (aliases that repeat aliases "
                     "multiply)", "MAX_NODES", _NODES)
    budget.nodes -= size - len(done)


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge ``over`` into a copy of ``base``.

    Dicts merge key by key; everything else is replaced. A dict whose ``kind`` differs from the base's
    (a different variant of a discriminated union, e.g. gate G1 -> G3) replaces the base dict whole, so
    fields of the old variant do not leak into the new one. Nothing of ``base`` or ``over`` is shared with
    the result (:func:`copy_tree`).
    """
    out = copy_tree(dict(base))
    for key, value in over.items():
        old = out.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            if "kind" in value and old.get("kind") not in (None, value["kind"]):
                out[key] = copy_tree(value)
            else:
                out[key] = deep_merge(old, value)
        else:
            out[key] = copy_tree(value)
    return out


_IMMUTABLE = (str, int, float, bool, type(None), bytes)


def copy_tree(value: Any) -> Any:
    """A copy of plain YAML data (dicts, lists, scalars): new dicts and lists, the same immutable scalars;
    anything else through ``copy.deepcopy``. Linear in the size of the tree, several times faster than
    ``copy.deepcopy`` on the trees a spec makes."""
    if isinstance(value, dict):
        return {k: copy_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [v if isinstance(v, _IMMUTABLE) else copy_tree(v) for v in value]
    if isinstance(value, _IMMUTABLE):
        return value
    return copy.deepcopy(value)


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def not_a_file(mode: int) -> str | None:
    """What a ``stat`` mode is when it is not a regular file ("a folder", "a FIFO (named pipe)", ...), else
    None."""
    if stat.S_ISREG(mode):
        return None
    return next((what for test, what in _KINDS if test(mode)), "not a regular file")


def read_text(path: Path) -> str:
    """The text of a spec file, read only if it is a regular file of at most :data:`MAX_FILE_BYTES` bytes
    (checked with ``stat`` before opening, and again on the open file, which is opened non-blocking: a
    FIFO, a device or ``/dev/stdin`` never hangs the reader).

    Raises SpecError: missing, not a regular file, too large, unreadable or not UTF-8.
    """
    def problem(reason: str) -> SpecError:
        return SpecError([Problem(str(path), "", None, reason)])

    try:
        mode = os.stat(path).st_mode
        if (what := not_a_file(mode)) is not None:
            raise problem(f"is {what}, not a spec file (only regular files are read)")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if (what := not_a_file(st.st_mode)) is not None:
                raise problem(f"is {what}, not a spec file (only regular files are read)")
            if st.st_size > MAX_FILE_BYTES:
                raise _limit(str(path), None, f"the file is {st.st_size:,} bytes", "MAX_FILE_BYTES", "bytes")
            raw = f.read(MAX_FILE_BYTES + 1)
    except (FileNotFoundError, NotADirectoryError):
        raise problem("file not found") from None
    except OSError as e:
        raise problem(f"cannot read: {e.strerror or e}") from None
    if len(raw) > MAX_FILE_BYTES:  # a file that grew, or one whose size stat does not tell (/proc)
        raise _limit(str(path), None, "the file is too large", "MAX_FILE_BYTES", "bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise problem(f"is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); a spec is a "
                      "YAML text file") from None


def read_yaml(path: Path, budget: Budget | None = None) -> tuple[dict[str, Any], dict[Path_, int]]:
    """Parse one YAML file safely and within the limits above (:func:`read_text`, :class:`SpecLoader`,
    :func:`check_expansion`; ``budget`` is shared by the files of one spec); return the mapping and a map
    key path -> 1-based line.

    Raises SpecError: missing, unreadable or non-regular file, a limit passed, bad syntax, a tag, a key
    given twice, an empty file or a top level that is not a mapping.
    """
    budget = budget if budget is not None else Budget()
    node, data, lines = parse_yaml(read_text(path), str(path), budget)
    if node is None:
        raise SpecError([Problem(str(path), "", None, "the file is empty (write `{}` to mean every default)")])
    if not isinstance(data, dict):
        raise SpecError([Problem(str(path), "", 1, f"top level must be a mapping, got {type(data).__name__}")])
    return data, lines


def parse_yaml(text: str, source: str, budget: Budget) -> tuple[yaml.Node | None, Any, dict[Path_, int]]:
    """Compose ``text`` (one YAML document) within the limits, check its expansion, record the line of
    every key path, then build the plain data. Returns (the root node or None if empty, the data, lines).

    Raises SpecError naming ``source``: a limit passed, bad syntax, a tag, a key given twice.
    """
    try:
        loader = SpecLoader(text, source, budget)  # refuses characters YAML does not allow (NUL, ...)
    except yaml.YAMLError as e:
        raise SpecError([Problem(source, "", None, f"invalid YAML: {e}")]) from None
    lines: dict[Path_, int] = {}
    starts: dict[tuple[int, int], Path_] = {}  # (line, column) where a value starts -> its path
    try:
        node = loader.get_single_node()  # parse only: syntax errors and the limits surface here
        if node is not None:
            check_expansion(node, source, budget)
            collect_lines(node, (), lines, starts, Path(source))
        data = loader.construct_document(node) if node is not None else None  # tags fail here
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        reason = " ".join(str(x) for x in (e.context, e.problem) if x)
        field = ""
        if isinstance(e, yaml.constructor.ConstructorError):
            reason += " (only plain YAML is accepted; tags that build Python objects are refused)"
            field = ".".join(starts.get((mark.line, mark.column), ())) if mark else ""
        raise SpecError([Problem(source, field, mark.line + 1 if mark else None, reason)]) from None
    except yaml.YAMLError as e:
        raise SpecError([Problem(source, "", None, f"invalid YAML: {e}")]) from None
    except (ValueError, OverflowError) as e:  # a plain scalar YAML resolves but cannot build (2026-13-45)
        raise SpecError([Problem(source, "", None, f"a value YAML cannot build: {e}")]) from None
    finally:
        loader.dispose()
    return node, data, lines


def collect_lines(
    node: yaml.Node, prefix: Path_, out: dict[Path_, int], starts: dict[tuple[int, int], Path_],
    file: Path,
) -> None:
    """Record in ``out`` the 1-based line of every key path, and in ``starts`` where each value node
    starts.

    Raises SpecError on a key given twice in one mapping (plain YAML would silently keep the last).
    """
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            path = prefix + (key,)
            if key in seen and key != "<<":
                raise SpecError([Problem(str(file), ".".join(path), key_node.start_mark.line + 1,
                                         f"key {key!r} is given twice (first on line {out[path]})")])
            seen.add(key)
            out[path] = key_node.start_mark.line + 1
            starts.setdefault((value_node.start_mark.line, value_node.start_mark.column), path)
            collect_lines(value_node, path, out, starts, file)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            path = prefix + (str(i),)
            out[path] = item.start_mark.line + 1
            starts.setdefault((item.start_mark.line, item.start_mark.column), path)
            collect_lines(item, path, out, starts, file)


def load_raw(path: Path, _chain: tuple[Path, ...] = (), budget: Budget | None = None,
             ) -> tuple[dict[str, Any], dict[Path_, tuple[str, int]]]:
    """Load ``path`` with its ``extends:`` chain merged (base first). Returns the data and its
    provenance (key path -> (file, line)). The files of one spec share one :class:`Budget`.

    Raises SpecError: as :func:`read_yaml`, plus an ``extends`` cycle, a bad ``extends`` value, an
    extended file that is missing or not a regular file, a chain longer than :data:`MAX_EXTENDS_CHAIN` or
    more than :data:`MAX_EXTENDS_FILES` files read.
    """
    budget = budget if budget is not None else Budget()
    path = path.resolve()
    if path in _chain:
        cycle = " -> ".join(p.name for p in (*_chain, path))
        raise SpecError([Problem(str(path), "extends", None, f"extends cycle: {cycle}")])
    budget.files -= 1
    data, lines = read_yaml(path, budget)
    provenance = {k: (str(path), v) for k, v in lines.items()}
    parents = data.pop("extends", None)
    if parents is None:
        return data, provenance
    if isinstance(parents, str):
        parents = [parents]
    where = lines.get(("extends",))
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise SpecError([Problem(str(path), "extends", where, "must be a file path or a list of file paths")])
    if parents and len(_chain) + 1 >= MAX_EXTENDS_CHAIN:
        raise _limit(str(path), where, "the extends chain is too long", "MAX_EXTENDS_CHAIN", "files", "extends")
    merged: dict[str, Any] = {}
    merged_prov: dict[Path_, tuple[str, int]] = {}
    for parent in parents:
        ppath = (path.parent / parent).resolve()
        if ppath in (*_chain, path):
            cycle = " -> ".join(p.name for p in (*_chain, path, ppath))
            raise SpecError([Problem(str(path), "extends", where, f"extends cycle: {cycle}")])
        try:
            what = not_a_file(os.stat(ppath).st_mode)
        except OSError:
            what = "not found"
        if what is not None:
            what = "not found" if what == "not found" else f"is {what}, not a file"
            raise SpecError([Problem(str(path), "extends", where,
                                     f"extended file {parent!r} {what} (looked at {ppath})")])
        if budget.files <= 0:
            raise _limit(str(path), where, "too many files read through extends", "MAX_EXTENDS_FILES", "files",
                         "extends")
        pdata, pprov = load_raw(ppath, (*_chain, path), budget)
        merged = deep_merge(merged, pdata)
        merged_prov.update(pprov)
    merged_prov.update({k: v for k, v in provenance.items() if k[:1] != ("extends",)})
    return deep_merge(merged, data), merged_prov
