"""Where specroute keeps things on disk, and how it writes them (atomically).

The cache (token shards, backbones, the GPT-2 tokenizer) lives under, in order of precedence: the
``--cache-dir`` option, the ``SPECROUTE_CACHE`` environment variable, ``~/.cache/specroute``.

Every file a run or report produces is written to a temporary name beside its target and moved into
place with ``os.replace``, so a crash never leaves a half-written file.

Every JSON text specroute writes (files, ``metrics.jsonl`` lines, ``--json`` output) is standard JSON
(RFC 8259: no ``NaN`` / ``Infinity`` tokens) through :func:`json_text`: a non-finite number is written as
``null``, and where the reason matters the writer records it beside the value (a metrics record's
``nonfinite`` list of the fields that were not finite, a failed run's ``failure``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any


#: The process's umask, read once at import: files written through a temporary (mkstemp: mode 0600)
#: get the mode an ordinary ``open`` would have given them.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


class UserError(Exception):
    """A problem the user can fix (missing data, an existing output folder, no network...).

    The CLI prints the message and exits 2; it is never a bug.
    """


def cache_dir(override: str | Path | None = None) -> Path:
    """The cache root: ``override`` > ``$SPECROUTE_CACHE`` > ``~/.cache/specroute``."""
    if override:
        return Path(override).expanduser()
    env = os.environ.get("SPECROUTE_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "specroute"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hash of a JSON-able object in canonical form (sorted keys, no spaces)."""
    return sha256_bytes(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode())


def atomic_write_with(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` atomically through ``write(tmp)``, which writes the whole file at ``tmp`` (a fresh
    temporary name beside ``path``; e.g. ``safetensors.torch.save_file``). The file is synced, given the
    mode an ordinary ``open`` would have, and moved into place; on any error the temporary is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write_with(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def finite_or_null(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, +-inf) replaced by None, through dicts, lists and tuples
    (tuples become lists, as JSON has them); other values as they are."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(v) for v in obj]
    return obj


def nonfinite_paths(obj: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the non-finite floats in ``obj`` (dict keys; list items by index), e.g.
    ``["loss", "full_fraction.1"]``: what :func:`finite_or_null` turns into null."""
    if isinstance(obj, float):
        return [] if math.isfinite(obj) else [prefix]
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    return [p for k, v in items for p in nonfinite_paths(v, f"{prefix}.{k}" if prefix else str(k))]


def json_text(obj: Any, indent: int | None = None, sort_keys: bool = False) -> str:
    """``obj`` as standard JSON text (non-finite floats as null, :func:`finite_or_null`; never a ``NaN``
    token). Raises TypeError for a value JSON cannot hold."""
    return json.dumps(finite_or_null(obj), indent=indent, sort_keys=sort_keys, allow_nan=False)


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as standard JSON (:func:`json_text`, indented) to ``path``, atomically."""
    atomic_write_text(path, json_text(obj, indent=2) + "\n")


def temp_dir_beside(target: Path) -> Path:
    """A fresh temporary folder in ``target``'s parent (for building a folder, then renaming it)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes it 0700
    return tmp


def replace_dir(tmp: Path, target: Path) -> None:
    """Move a finished temporary folder (:func:`temp_dir_beside`) to ``target``, replacing the folder
    there, if any: the old one is moved aside first and deleted after, so ``target`` is always whole."""
    if not target.exists():
        os.replace(tmp, target)
        return
    old = temp_dir_beside(target)
    os.replace(target, old / target.name)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def publish_dir(tmp: Path, target: Path) -> None:
    """Move a finished temporary folder to ``target``. If another process published it first, keep
    theirs (same key, same content) and drop ours."""
    try:
        os.replace(tmp, target)
    except OSError:
        if target.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            raise


# --------------------------------------------------------------------------------------------------
# output folders (``specroute run --out``, ``specroute bench --out``)


def check_out_dir(out: Path, owned: Collection[str], what: str, overwrite: bool,
                  resume: bool | None = None) -> list[str]:
    """The one rule for a command's output folder: nothing already written is lost unless asked.

    ``out`` may be absent or empty. A non-empty one is used only with ``overwrite`` (replace the result
    there; refused when ``out`` holds any entry outside ``owned``, the names its writer produces, so
    nothing else is ever deleted) or ``resume`` (continue it; the caller checks that it is its own).

    Args:
        out: the folder. owned: the names its writer produces. what: what that writer's result is called
            in messages ("a study", "a benchmark result"). resume: whether the caller asked to continue;
            None when its writer cannot continue a result (no ``--resume`` option).
    Returns:
        The entries of ``out`` (names, sorted; empty when it is absent or empty).
    Raises:
        UserError: ``out`` is not a folder; it is not empty and neither ``overwrite`` nor ``resume`` was
            asked; ``overwrite`` with entries not in ``owned``. Nothing is changed.
    """
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder; choose another --out")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not entries or resume:
        return entries
    if not overwrite:
        raise UserError(f"the output folder {out} is not empty ({', '.join(entries[:5])}); pass "
                        f"{'' if resume is None else '--resume to continue it, '}--overwrite to replace it, "
                        "or choose another --out")
    foreign = [name for name in entries if name not in owned]
    if foreign:
        raise UserError(f"--out {out} holds files that are not {what} ({', '.join(foreign[:5])}); "
                        "nothing was changed; choose another --out")
    return entries


def clear_out_dir(out: Path, owned: Collection[str]) -> None:
    """Delete the entries of ``out`` named in ``owned`` (after :func:`check_out_dir` with ``overwrite``)."""
    for name in owned:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
