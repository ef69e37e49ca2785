"""Several processes on one study's output folder: shards, run claims and the study's short locks.

Processes of one study (the same resolved spec, :func:`specroute.train.study.spec_sha256`) may write one
``--out`` at once, e.g. ``--shard 0/2`` and ``--shard 1/2`` on two machines over a network filesystem, or
the tasks of a SLURM array (:mod:`specroute.train.launch`):

- the study's own lock (``<out>/.specroute.lock``, :func:`specroute.locks.hold_lock`) is held only for
  seconds: while a process checks the folder and claims its runs, while it writes (or checks) ``study.json``,
  and while it writes the report; another process waits for it (up to :data:`STUDY_LOCK_WAIT_S`);
- each process **claims** the unfinished runs it will train (:class:`RunClaims`: it holds their run folders'
  locks from the folder check on) and hands each claim over to whoever trains the run when it starts;
  a second process whose runs overlap a claimed or training run is **refused** at once, naming the holder
  (shards never overlap); a claim or run lock left by a killed process is taken over;
- the data are tokenised into the shared cache atomically (a second process that tokenises the same data
  at the same time keeps the first copy) and the backbone is trained by one process while the others wait
  for its cache (:func:`specroute.train.backbone.get_backbone`);
- every process writes the report of what has finished when its runs end (the last one sees every run).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

from specroute.locks import hold_lock
from specroute.store import UserError

#: Seconds a process waits for another's short hold of the study's folder lock (checking the folder,
#: writing study.json or the report: seconds each, but many processes may queue for it on a loaded
#: machine), before it is refused naming the holder.
STUDY_LOCK_WAIT_S = 600.0

R = TypeVar("R")


def parse_shard(text: str) -> tuple[int, int]:
    """``--shard i/N`` -> (i, N), 0 <= i < N. Raises UserError for anything else."""
    index, slash, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        i, n = -1, 0
    if not slash or n < 1 or not 0 <= i < n:
        raise UserError(f"--shard {text!r}: give i/N with 0 <= i < N, e.g. --shard 0/2 and --shard 1/2 for two "
                        "processes sharing one --out")
    return i, n


def shard_runs(runs: list[tuple[str, int, R]], index: int, count: int) -> list[tuple[str, int, R]]:
    """The ``index``-th of ``count`` shares of ``runs`` ((arm, seed, ...) tuples): the runs at positions
    index, index + count, ... of the (arm, seed)-sorted list, returned in their given order. The shares of
    0..count-1 are disjoint and together every run; the same list always splits the same way."""
    ordered = sorted((arm, seed) for arm, seed, *_ in runs)
    mine = set(ordered[index::count])
    return [r for r in runs if (r[0], r[1]) in mine]


def other_spec_refusal(flag: str, out: Path, recorded_sha: str | None, sha: str) -> UserError:
    """The refusal of a process that would join or continue the study in ``out`` (``flag``: ``--shard`` or
    ``--resume``) with another resolved spec: ``recorded_sha`` is the hash in its ``study.json`` (None when
    absent), ``sha`` this process's. A shard is told that every shard of a study must use the same spec and
    overrides, and to choose another ``--out`` for a study of its own: ``--overwrite`` would delete the runs
    the other shards finished there (and is refused with ``--shard``)."""
    found = f"{out} holds a study with another resolved spec (sha256 {str(recorded_sha)[:12]}, now {sha[:12]})"
    if flag == "--shard":
        return UserError(f"--shard: {found}; every shard of a study must use the same spec and overrides (the spec "
                         "file, --profile and every --set) as the shards that started it: run this shard with "
                         "theirs, or give another --out to run these overrides as a study of their own")
    return UserError(f"{flag}: {found}; processes that share an output folder must run the same spec (file, "
                     "--profile and --set); use --overwrite or another --out")


class RunClaims(contextlib.ExitStack):
    """The run folders this process will train, held (their locks) from the folder check until each run
    starts (:meth:`release`, then the trainer takes the lock itself) or the process ends."""

    def __init__(self) -> None:
        super().__init__()
        self._held: dict[Path, contextlib.ExitStack] = {}

    def probe(self, folders: Iterable[Path]) -> list[str]:
        """Refuse (UserError naming the holder) when another process holds one of ``folders`` (claimed or
        training it). Only existing folders are looked at; nothing is created or kept. Returns the notes of
        locks left there by processes that ended without releasing them (now removed)."""
        notes = []
        for folder in folders:
            if folder.is_dir():
                try:
                    with hold_lock(folder, "the run folder") as note:
                        if note:
                            notes.append(note)
                except UserError as e:
                    raise UserError(f"{e}. Processes that share an output folder must train different runs "
                                    "(--shard i/N, or disjoint --arm / --seed)") from None
        return notes

    def take(self, folders: Iterable[Path]) -> list[str]:
        """Claim ``folders`` (created if missing; removed again if still empty when released). Returns
        the notes of claims taken over from processes that ended without releasing them."""
        notes = []
        for folder in folders:
            stack = contextlib.ExitStack()
            note = stack.enter_context(hold_lock(folder, "the run folder"))
            self._held[folder] = stack
            self.callback(stack.close)
            if note:
                notes.append(note)
        return notes

    def release(self, folder: Path) -> None:
        """Let go of the claim on ``folder`` (a no-op when it holds none): its run starts now."""
        stack = self._held.pop(folder, None)
        if stack is not None:
            stack.close()
