"""The sessions of a study: each ``specroute run`` into an output folder (the first, and each ``--resume``
after an interruption) appends its wall time to ``<out>/sessions.json``, so that the report's total wall
time is the sum over the interrupted and resumed parts, not only the last one's.

``sessions.json`` is a list of ``{"started": ISO-8601 UTC, "wall_s": seconds, "ended": "complete" |
"interrupted" | "failed"}``. A session killed with SIGKILL cannot record itself; its time is missing.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from specroute.store import UserError, atomic_write_json

SESSIONS = "sessions.json"


def read_sessions(out: Path) -> list[dict[str, Any]]:
    """The sessions recorded in ``out`` (empty when none, or the file is unreadable)."""
    try:
        sessions = json.loads((out / SESSIONS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [s for s in sessions if isinstance(s, dict) and isinstance(s.get("wall_s"), (int, float))] \
        if isinstance(sessions, list) else []


def with_session(out: Path, t_start: float, ended: str) -> list[dict[str, Any]]:
    """``out``'s sessions with this one (started at ``time.perf_counter()`` value ``t_start``) appended,
    last; nothing is written (:func:`write_sessions`)."""
    wall = time.perf_counter() - t_start
    started = datetime.fromtimestamp(time.time() - wall, timezone.utc).isoformat(timespec="seconds")
    return [*read_sessions(out), {"started": started, "wall_s": wall, "ended": ended}]


def write_sessions(out: Path, sessions: list[dict[str, Any]]) -> None:
    atomic_write_json(out / SESSIONS, sessions)


def record_session(out: Path, t_start: float, ended: str) -> list[dict[str, Any]]:
    """Append this session to ``out``'s sessions (:func:`with_session`) and write them; return them all."""
    sessions = with_session(out, t_start, ended)
    write_sessions(out, sessions)
    return sessions


@contextlib.contextmanager
def interrupted_session(out: Path, t_start: float, lock: bool = False) -> Iterator[None]:
    """Record the session as interrupted (Ctrl-C, SIGTERM, a step budget) or failed if the block raises;
    the exception propagates. A session that completes is recorded by :func:`write_sessions`. ``lock``:
    take ``out``'s lock for the write (other processes of the study may write it too; a caller that holds
    it already passes False)."""
    from specroute.locks import hold_lock
    from specroute.train.sharing import STUDY_LOCK_WAIT_S
    from specroute.train.trainer import Interrupted

    try:
        yield
    except BaseException as e:
        ended = "interrupted" if isinstance(e, (KeyboardInterrupt, Interrupted)) else "failed"
        held = hold_lock(out, "the output folder", STUDY_LOCK_WAIT_S) if lock else contextlib.nullcontext()
        with contextlib.suppress(OSError, UserError), held:  # e.g. the full disk that stopped the session
            record_session(out, t_start, ended)
        raise
