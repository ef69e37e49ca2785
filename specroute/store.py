"""Where specroute keeps things on disk, and how it writes them (atomically).

The cache (token shards, backbones, the GPT-2 tokenizer) lives under, in order of precedence: the
``--cache-dir`` option, the ``SPECROUTE_CACHE`` environment variable, ``~/.cache/specroute``.

Every file a run or report produces is written to a temporary name beside its target and moved into
place with ``os.replace``, so a crash never leaves a half-written file. A write the user can fix (disk
full, quota, read-only filesystem, no permission) fails as a :class:`UserError` naming the path and the
cause (:func:`writing`), with its temporary removed. A folder that one process writes is held with
:func:`specroute.locks.hold_lock`, so that a second process is refused instead of writing into it too.

Every JSON text specroute writes (files, ``metrics.jsonl`` lines, ``--json`` output) is standard JSON
(RFC 8259: no ``NaN`` / ``Infinity`` tokens) through :func:`json_text`: a non-finite number is written as
``null``, and where the reason matters the writer records it beside the value (a metrics record's
``nonfinite`` list of the fields that were not finite, a failed run's ``failure``).
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterator, Mapping
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


# --------------------------------------------------------------------------------------------------
# filesystem errors the user can fix

#: The errors of a write that the user can fix, and how a message says them.
FS_CAUSES = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EFBIG: "the file is too large for this filesystem",
    errno.EROFS: "the filesystem is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


def os_errno(e: BaseException) -> int | None:
    """The errno of a failed operation: an OSError's, the ``(os error N)`` of an I/O error that a compiled
    library reports in its message (safetensors), or that of the error it was raised while handling
    (``torch.save`` into a file on a full disk raises a RuntimeError whose context is the OSError); None
    if there is none."""
    seen: BaseException | None = e
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, OSError) and seen.errno is not None:
            return seen.errno
        if m := re.search(r"\(os error (\d+)\)", str(seen)):
            return int(m.group(1))
        seen = seen.__cause__ or seen.__context__
    return None


def fs_error(e: BaseException, path: Path, doing: str = "write") -> UserError | None:
    """The UserError for ``e`` if it is a filesystem failure the user can fix (:data:`FS_CAUSES`), else None
    (a bug, to be raised as it is). The message names ``path``, what failed (``doing``) and the cause."""
    code = os_errno(e)
    if code not in FS_CAUSES:
        return None
    fix = ("free some space there or choose another location" if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
           else "choose a location you can write to")
    return UserError(f"cannot {doing} {path}: {FS_CAUSES[code]} ({os.strerror(code)}); {fix} "
                     "(--out, --cache-dir or $SPECROUTE_CACHE)")


@contextlib.contextmanager
def writing(path: Path, doing: str = "write") -> Iterator[None]:
    """Turn a filesystem failure the user can fix (:data:`FS_CAUSES`) inside the block into a UserError
    naming ``path`` (:func:`fs_error`); anything else propagates unchanged. Every write helper here uses
    it; code that writes files some other way (a log kept open, shards) wraps its writes in it."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:
        err = fs_error(e, path, doing)
        if err is None:
            raise
        raise err from None


def make_dir(path: Path) -> list[Path]:
    """Create the folder ``path`` and its missing parents; return the folders created, outermost first.

    Raises UserError when it cannot be created (a file in the way, a filesystem that does not allow it,
    such as /proc, read-only, no permission, disk full), naming the folder and the reason."""
    created = []
    for p in [*reversed(path.parents), path]:
        if not p.exists():
            created.append(p)
        elif not p.is_dir():
            raise UserError(f"{p} exists and is not a folder; choose another location (--out, --cache-dir or "
                            "$SPECROUTE_CACHE)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        why = e.strerror or str(e)
        if e.errno == errno.ENOENT:  # the parents exist (/proc, say), yet the folder cannot be made there
            why = f"its filesystem does not allow it ({why})"
        raise (fs_error(e, path, "create the folder")
               or UserError(f"cannot create the folder {path}: {why}; choose another location")) from None
    return created


def atomic_write_with(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` atomically through ``write(tmp)``, which writes the whole file at ``tmp`` (a fresh
    temporary name beside ``path``; e.g. ``safetensors.torch.save_file``). The file is synced, given the
    mode an ordinary ``open`` would have, and moved into place; on any error the temporary is removed.

    Raises UserError for a failure the user can fix (disk full, read-only, no permission: :func:`writing`),
    naming ``path``; other errors of ``write`` propagate."""
    make_dir(path.parent)
    with writing(path):
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


def json_kind(value: Any) -> str:
    """What JSON calls the type of a parsed value: ``object``, ``array``, ``string``, ``number``, ``boolean``
    or ``null`` (for messages about a file that holds the wrong kind of value)."""
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    return "null" if value is None else "number"


def json_text(obj: Any, indent: int | None = None, sort_keys: bool = False) -> str:
    """``obj`` as standard JSON text (non-finite floats as null, :func:`finite_or_null`; never a ``NaN``
    token). Raises TypeError for a value JSON cannot hold."""
    return json.dumps(finite_or_null(obj), indent=indent, sort_keys=sort_keys, allow_nan=False)


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as standard JSON (:func:`json_text`, indented) to ``path``, atomically."""
    atomic_write_text(path, json_text(obj, indent=2) + "\n")


def temp_dir_beside(target: Path) -> Path:
    """A fresh temporary folder in ``target``'s parent (for building a folder, then renaming it).
    Raises UserError when it cannot be made (:func:`writing`)."""
    make_dir(target.parent)
    with writing(target):
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes it 0700
    return tmp


def replace_dir(tmp: Path, target: Path) -> None:
    """Move a finished temporary folder (:func:`temp_dir_beside`) to ``target``, replacing the folder
    there, if any: the old one is moved aside first and deleted after, so ``target`` is always whole."""
    with writing(target):
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
    except OSError as e:
        if target.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            raise fs_error(e, target) or e from None


#: The lock file a writer holds in its folder (:func:`specroute.locks.hold_lock`); never a folder's content.
LOCK_NAME = ".specroute.lock"


# --------------------------------------------------------------------------------------------------
# output folders (``specroute run --out``, ``specroute bench --out``)


#: A folder's layout: for each name pattern (``fnmatch``) what an entry of that name must be: ``FILE`` (a
#: regular file), ``ANY`` (a file or a folder, not looked into) or, for a folder, its own layout.
Layout = Mapping[str, Any]
FILE = "file"
ANY = "any"
#: What a killed writer may leave anywhere (:func:`atomic_write_with`, :func:`temp_dir_beside`).
TEMPORARY = ".*.tmp"


def _as_layout(owned: Layout | Collection[str]) -> Layout:
    return owned if isinstance(owned, Mapping) else {name: ANY for name in owned}


def _matching(layout: Layout, name: str) -> Any:
    return next((kind for pattern, kind in layout.items() if fnmatch.fnmatchcase(name, pattern)), None)


def foreign_entries(folder: Path, layout: Layout, prefix: str = "") -> list[str]:
    """The entries under ``folder`` (relative paths, sorted) that ``layout`` does not describe: a name no
    pattern matches, a folder where a file is expected or the reverse, a symbolic link. The lock file
    (:data:`LOCK_NAME`) and temporaries (:data:`TEMPORARY`) belong to every folder."""
    foreign = []
    for p in sorted(folder.iterdir()):
        rel = f"{prefix}{p.name}"
        if p.name == LOCK_NAME or fnmatch.fnmatchcase(p.name, TEMPORARY):
            continue
        kind = _matching(layout, p.name)
        if kind is None or p.is_symlink():
            foreign.append(rel)
        elif kind == FILE:
            if not p.is_file():
                foreign.append(rel)
        elif isinstance(kind, Mapping):
            foreign += foreign_entries(p, kind, rel + "/") if p.is_dir() else [rel]
    return foreign


def only_locks(path: Path) -> bool:
    """Whether ``path`` is a lock file (:data:`LOCK_NAME`) or a folder (not a link) that holds nothing but
    lock files and such folders (what a process that has claimed runs but not started them leaves)."""
    if path.name == LOCK_NAME:
        return True
    return path.is_dir() and not path.is_symlink() and all(only_locks(p) for p in path.iterdir())


def listed_entries(out: Path) -> list[str]:
    """The names in the folder ``out`` (sorted; empty when it is absent) that count as its content: lock
    files and folders holding only locks (:func:`only_locks`) do not."""
    return sorted(p.name for p in out.iterdir() if not only_locks(p)) if out.is_dir() else []


def check_out_dir(out: Path, owned: Layout | Collection[str], what: str, overwrite: bool,
                  resume: bool | None = None, marker: str | None = None) -> list[str]:
    """The one rule for a command's output folder: nothing already written is lost unless asked.

    ``out`` may be absent or empty (lock files, :data:`LOCK_NAME`, and folders holding only them do not
    count: :func:`listed_entries`). A non-empty one is
    used only with ``overwrite`` (replace the result there: refused when ``out`` does not hold ``marker``,
    the file that shows a result is there, or holds anything outside ``owned``, the files its writer
    produces, so nothing else is ever deleted) or ``resume`` (continue it; the caller checks that it is its
    own).

    Args:
        out: the folder. owned: what its writer produces: a :data:`Layout` (looked into, folder by folder),
            or top-level names. what: what that writer's result is called in messages ("a study", "a
            benchmark result"). resume: whether the caller asked to continue; None when its writer cannot
            continue a result (no ``--resume`` option). marker: the file every result holds (None: any).
    Returns:
        The entries of ``out`` (names, sorted, the lock file left out; empty when it is absent or empty).
    Raises:
        UserError: ``out`` is not a folder or cannot be read; it is not empty and neither ``overwrite`` nor
            ``resume`` was asked; ``overwrite`` where ``marker`` is missing or with entries not in
            ``owned``. Nothing is changed.
    """
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder; choose another --out")
    with writing(out, "read the folder"):
        entries = listed_entries(out)
    if not entries or resume:
        return entries
    if not overwrite:
        raise UserError(f"the output folder {out} is not empty ({', '.join(entries[:5])}); pass "
                        f"{'' if resume is None else '--resume to continue it, '}--overwrite to replace it, "
                        "or choose another --out")
    if marker is not None and marker not in entries:
        raise UserError(f"--out {out} holds no {what.removeprefix('a ').removeprefix('an ')} (no {marker}) but "
                        f"other files ({', '.join(entries[:5])}); --overwrite replaces only {what}; nothing was "
                        "changed; choose another --out or empty it yourself")
    with writing(out, "read the folder"):
        foreign = foreign_entries(out, _as_layout(owned))
    if foreign:
        raise UserError(f"--out {out} holds files that are not {what}'s ({', '.join(foreign[:5])}"
                        f"{f' and {len(foreign) - 5} more' if len(foreign) > 5 else ''}); nothing was changed; "
                        "move them away or choose another --out")
    return entries


def clear_out_dir(out: Path, owned: Layout | Collection[str]) -> None:
    """Delete the entries of ``out`` that ``owned`` describes, and temporaries (after :func:`check_out_dir`
    with ``overwrite``, which made sure they hold nothing else). The lock file stays."""
    layout = _as_layout(owned)
    with writing(out, "delete from"):
        for p in sorted(out.iterdir()):
            if p.name == LOCK_NAME or not (_matching(layout, p.name) or fnmatch.fnmatchcase(p.name, TEMPORARY)):
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
