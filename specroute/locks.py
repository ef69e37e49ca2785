"""One writer per folder: an exclusive lock that dies with its process and names its holder.

A study holds its output folder's lock, each controller run its run folder's, a backbone training its cache
folder's and ``specroute bench`` its output folder's (:func:`hold_lock`). The lock is an ``flock`` on
``<folder>/`` :data:`specroute.store.LOCK_NAME` through ``filelock``; the file records the holder (pid, host,
start time, command) for the message of whoever is refused.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import filelock

from specroute.store import LOCK_NAME, UserError, make_dir, writing


def _holder_record(what: str) -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "what": what,
            "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "command": _shorten(" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), 120)}


def _shorten(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _describe_holder(record: Any) -> str:
    if not isinstance(record, dict) or "pid" not in record:
        return "another process (it has not recorded itself yet)"
    return (f"pid {record.get('pid')} on host {record.get('host')}, started {record.get('started')}"
            + (f": {record['command']}" if record.get("command") else ""))


def _read_record(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None


@contextlib.contextmanager
def hold_lock(folder: Path, what: str, wait_s: float = 0.0,
              waiting: Callable[[str], None] | None = None) -> Iterator[str | None]:
    """Hold an exclusive lock on ``folder`` (created if missing) for the duration of the block.

    The lock is an ``flock`` on ``folder/.specroute.lock`` (:data:`LOCK_NAME`, through ``filelock``): the
    kernel releases it when the holding process ends in any way (kill -9 included), so a lock file left by
    a killed process is taken over. The file records the holder (pid, host, start time, command) for the
    message of whoever is refused. On leaving the block the lock file is removed, and so are the folders
    this call created if they are still empty (a failed start leaves nothing behind).

    Args:
        folder: the folder to hold. what: what holds it, in messages ("the output folder", "the run folder").
        wait_s: how long to wait for another holder to finish (0: refuse at once).
        waiting: called once with a message naming the holder when the lock is held by another process and
            this call is about to wait for it (``wait_s`` > 0).
    Yields:
        A note for the user when a lock left by a process that ended without releasing it was taken
        over, or when this filesystem cannot lock (the block then runs unlocked); else None.
    Raises:
        UserError: another process holds the lock (after ``wait_s``): the message names its pid, host,
            start time and command; ``folder`` cannot be created or written (:func:`make_dir`, :func:`writing`).
    """
    created = make_dir(folder)
    try:
        with _locked(folder, what, wait_s, waiting) as note:
            yield note
    finally:
        for p in reversed(created):
            try:
                p.rmdir()
            except OSError:  # not empty (the writer wrote there) or gone
                break


@contextlib.contextmanager
def _locked(folder: Path, what: str, wait_s: float, waiting: Callable[[str], None] | None) -> Iterator[str | None]:
    """:func:`hold_lock` on an existing folder."""
    path = folder / LOCK_NAME
    before: list[bytes] = []

    def on_acquired(fd: int) -> None:
        before.append(os.pread(fd, 4096, 0))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_holder_record(what)).encode(), 0)

    def holder() -> str:
        try:
            return _describe_holder(_read_record(path.read_bytes()))
        except OSError:
            return _describe_holder(None)

    lock: filelock.UnixFileLock | None = filelock.UnixFileLock(path, timeout=wait_s, on_acquired=on_acquired)
    note = None
    try:
        with writing(path, "lock"):
            if waiting is not None and wait_s > 0:
                try:
                    lock.acquire(timeout=0)
                except filelock.Timeout:
                    waiting(f"{what} {folder} is in use by another specroute process ({holder()}); waiting for it")
                    lock.acquire()
            else:
                lock.acquire()
    except filelock.Timeout:
        raise UserError(f"{what} {folder} is in use by another specroute process ({holder()}); "
                        "wait for it to finish or stop it, or choose another folder") from None
    except OSError as e:
        if e.errno not in (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP):
            raise
        lock = None  # the filesystem has no flock
        note = (f"cannot lock {folder} on this filesystem ({e.strerror or e}); make sure no other specroute "
                "process writes there meanwhile")
    if lock is not None and before and before[0].strip():
        note = (f"took over the lock of {folder} left by a process that ended without releasing it "
                f"({_describe_holder(_read_record(before[0]))})")
    try:
        yield note
    finally:
        if lock is not None:
            with contextlib.suppress(OSError):  # while still held, so no one can lock the removed file
                path.unlink()
            lock.release()


def clear_abandoned(folder: Path) -> None:
    """Remove ``folder``'s lock file when no process holds its lock: the one a worker that its study ended
    (Ctrl-C, SIGTERM) leaves behind, so that the next ``--resume`` does not report a lock "left by a
    process that ended without releasing it". A lock still held, or a file that cannot be locked, stays."""
    path = folder / LOCK_NAME
    if not path.is_file():
        return
    lock = filelock.UnixFileLock(path, timeout=0)
    try:
        lock.acquire()
    except (filelock.Timeout, OSError):
        return
    try:
        with contextlib.suppress(OSError):  # while held, as in hold_lock
            path.unlink()
    finally:
        lock.release()
