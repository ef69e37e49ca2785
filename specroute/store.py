"""Where specroute keeps things on disk, and how it writes them (atomically).

The cache (token shards, backbones, the GPT-2 tokenizer) lives under, in order of precedence: the
``--cache-dir`` option, the ``SPECROUTE_CACHE`` environment variable, ``~/.cache/specroute``.

Every file a run or report produces is written to a temporary name beside its target and moved into
place with ``os.replace``, so a crash never leaves a half-written file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=True) + "\n")


def temp_dir_beside(target: Path) -> Path:
    """A fresh temporary folder in ``target``'s parent (for building a folder, then renaming it)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes it 0700
    return tmp


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
