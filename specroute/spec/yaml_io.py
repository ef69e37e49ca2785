"""Reading spec files: safe YAML with the line of every key, ``extends:`` chains, and the merge they use.

No YAML tag ever builds a Python object; a key given twice is an error; every failure is a
:class:`~specroute.spec.errors.SpecError` naming the file and, where YAML can tell, the line.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from specroute.spec.errors import Path_, Problem, SpecError


class SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader (no tag builds a Python object), reading ``3e-4`` as a number as YAML 1.2
    does (YAML 1.1 wants ``3.0e-4`` and would give the text "3e-4")."""


SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


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


def read_yaml(path: Path) -> tuple[dict[str, Any], dict[Path_, int]]:
    """Parse one YAML file safely; return the mapping and a map key path -> 1-based line.

    Raises SpecError: missing or unreadable file, bad syntax, a tag, a key given twice, an empty file or
    a top level that is not a mapping.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([Problem(str(path), "", None, "file not found")]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError([Problem(str(path), "", None, f"cannot read: {e}")]) from None
    loader = SpecLoader(text)
    lines: dict[Path_, int] = {}
    starts: dict[tuple[int, int], Path_] = {}  # (line, column) where a value starts -> its path
    try:
        node = loader.get_single_node()  # parse only: syntax errors surface here
        if node is not None:
            collect_lines(node, (), lines, starts, path)
        data = loader.construct_document(node) if node is not None else {}  # tags fail here
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        reason = " ".join(str(x) for x in (e.context, e.problem) if x)
        field = ""
        if isinstance(e, yaml.constructor.ConstructorError):
            reason += " (only plain YAML is accepted; tags that build Python objects are refused)"
            field = ".".join(starts.get((mark.line, mark.column), ())) if mark else ""
        raise SpecError([Problem(str(path), field, mark.line + 1 if mark else None, reason)]) from None
    except yaml.YAMLError as e:
        raise SpecError([Problem(str(path), "", None, f"invalid YAML: {e}")]) from None
    finally:
        loader.dispose()
    if node is None:
        raise SpecError([Problem(str(path), "", None, "the file is empty (write `{}` to mean every default)")])
    if not isinstance(data, dict):
        raise SpecError([Problem(str(path), "", 1, f"top level must be a mapping, got {type(data).__name__}")])
    return data, lines


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


def load_raw(path: Path, _chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any], dict[Path_, tuple[str, int]]]:
    """Load ``path`` with its ``extends:`` chain merged (base first). Returns the data and its
    provenance (key path -> (file, line)).

    Raises SpecError: as :func:`read_yaml`, plus an ``extends`` cycle, a bad ``extends`` value, or an
    extended file that is missing.
    """
    path = path.resolve()
    if path in _chain:
        cycle = " -> ".join(p.name for p in (*_chain, path))
        raise SpecError([Problem(str(path), "extends", None, f"extends cycle: {cycle}")])
    data, lines = read_yaml(path)
    provenance = {k: (str(path), v) for k, v in lines.items()}
    parents = data.pop("extends", None)
    if parents is None:
        return data, provenance
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise SpecError([Problem(str(path), "extends", lines.get(("extends",)),
                                 "must be a file path or a list of file paths")])
    merged: dict[str, Any] = {}
    merged_prov: dict[Path_, tuple[str, int]] = {}
    for parent in parents:
        ppath = (path.parent / parent).resolve()
        if ppath in (*_chain, path):
            cycle = " -> ".join(p.name for p in (*_chain, path, ppath))
            raise SpecError([Problem(str(path), "extends", lines.get(("extends",)), f"extends cycle: {cycle}")])
        if not ppath.is_file():
            what = "is a folder, not a file" if ppath.is_dir() else "not found"
            raise SpecError([Problem(str(path), "extends", lines.get(("extends",)),
                                     f"extended file {parent!r} {what} (looked at {ppath})")])
        pdata, pprov = load_raw(ppath, (*_chain, path))
        merged = deep_merge(merged, pdata)
        merged_prov.update(pprov)
    merged_prov.update({k: v for k, v in provenance.items() if k[:1] != ("extends",)})
    return deep_merge(merged, data), merged_prov
