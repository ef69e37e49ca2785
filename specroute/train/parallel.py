"""Controller runs at once: in this process, in CPU worker processes, or one per CUDA device.

A study's pending runs go to **slots**: on a CPU, ``--workers`` worker processes (one intra-op thread
share each); on CUDA, one worker process per entry of ``--devices`` (``auto``: every visible device; a
device may be named twice to train two runs on it), each worker pinned to its device
(``torch.cuda.set_device``) for its whole life, so that a device never holds two runs' CUDA contexts unless
asked. A run takes the lowest free slot; a run finishing frees its slot for the next pending run
(:class:`Slots`, pure and tested without CUDA). With one slot the runs go one at a time in this process.

On any exception (a failed run, SIGINT, SIGTERM) every worker is terminated at once: their last
checkpoints are what ``--resume`` continues from, and waiting would mean waiting for their runs.

Where workers come from (:func:`worker_context`): on Linux a fork server that has imported the workers'
code once (torch, the trainer, the CLI and what torch.optim imports: about 3 s of CPU).
:func:`start_worker_server` starts it at the start of a study, so that the import overlaps the data
preparation and the backbone, and every worker is a fork of it, ready in milliseconds. Elsewhere each
worker is a fresh interpreter (spawn) that imports it all itself.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from rich.markup import escape
from torch import Tensor

from specroute.flops.analytic import count_params
from specroute.locks import clear_abandoned
from specroute.spec.models import RunSpec
from specroute.store import UserError
from specroute.train.device import Device, deterministic
from specroute.train.distributed import SINGLE, World
from specroute.train.progress import StudyProgress
from specroute.train.runs import init_worker, is_failed, read_result, run_controller, run_in_worker
from specroute.train.tracking import TrackingFlags
from specroute.train.trainer import StepBudget

#: Above this many parameters controller runs go one at a time by default on a CPU (memory per worker).
PARALLEL_MAX_PARAMS = 20_000_000
#: Seconds between two looks at the running workers (their results, their progress messages).
POLL_S = 0.25


class Job(NamedTuple):
    """One controller run to do: its arm, seed, run spec, backbone weights (CPU) and run folder."""

    arm: str
    seed: int
    spec: RunSpec
    backbone: dict[str, Tensor]
    folder: Path


#: What the fork server imports before it forks the first worker (:func:`worker_context`): the trainer, the
#: compiler's front end (which the first ``torch.optim`` optimiser of a process imports) and the CLI (each
#: worker runs the ``specroute`` script's imports again, as multiprocessing does with the main module).
WORKER_MODULES = ["specroute.train.runs", "torch._dynamo", "specroute.cli"]


def worker_context() -> multiprocessing.context.BaseContext:
    """The multiprocessing context of worker processes: on Linux the fork server (preloading
    :data:`WORKER_MODULES`; it never runs a parallel region or touches CUDA, so that its forks are safe),
    elsewhere spawn."""
    if sys.platform != "linux":
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(WORKER_MODULES)
    return ctx


def start_worker_server() -> None:
    """Start the fork server of :func:`worker_context` now, in the background (nothing under spawn); it
    ignores SIGINT, and so do the workers it forks (this process ends them). It ends with this process."""
    ctx = worker_context()
    if ctx.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        with _sigint_ignored():
            forkserver.ensure_running()


def uses_workers(slots: int, pending: int, one_at_a_time: bool, world: World) -> bool:
    """Whether :func:`run_controllers` trains in worker processes: more than one slot and pending run, no
    step budget (``one_at_a_time``), no data parallel (``world``), and a main module that a worker can
    import again (multiprocessing does; a script read from standard input, ``python -``, cannot be: every
    worker would fail at its start, and the pool start another, without end)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    reimportable = getattr(main, "__spec__", None) is not None or path is None or Path(path).is_file()
    return slots > 1 and pending > 1 and not one_at_a_time and world.size == 1 and reimportable


def auto_workers(device: Device, spec: RunSpec, pending: int) -> int:
    """Controller runs at once on a CPU: one per core (each with one intra-op thread; small models
    use cores better this way than with intra-op threads), unless the model is large
    (> :data:`PARALLEL_MAX_PARAMS`, where memory matters more); on CUDA the devices decide (1 here)."""
    if device.type != "cpu" or count_params(spec).total > PARALLEL_MAX_PARAMS:
        return 1
    return max(1, min(os.cpu_count() or 1, pending))


def run_threads(device: Device, spec: RunSpec, workers: int) -> int:
    """Intra-op threads of each controller run on a CPU: one for small models (the runs go one per core,
    and the same count in this process and in workers keeps their metrics equal: float reductions depend
    on it), else the cores shared among ``workers``. More threads than cores in all make every parallel
    op wait for a descheduled thread (measured: a smoke step 20x slower on a loaded 2-core machine)."""
    cores = os.cpu_count() or 1
    if device.type == "cpu" and count_params(spec).total <= PARALLEL_MAX_PARAMS:
        return 1
    return max(1, cores // workers)


def parse_devices(text: str, visible: int) -> list[int]:
    """``--devices`` -> the CUDA device index of each slot.

    ``auto``: every visible device once (none without CUDA: the CPU's workers apply); ``0,2``: those
    devices; a repeated index (``0,0``) gives that device two slots. ``visible``: torch's device count.
    Raises UserError for a malformed list, an index not visible, or a list without CUDA."""
    text = text.strip()
    if text == "auto":
        return list(range(visible))
    try:
        indices = [int(x) for x in text.split(",")]
    except ValueError:
        raise UserError(f"--devices {text!r}: give auto or comma-separated CUDA device indices, e.g. 0,2") from None
    if not visible:
        raise UserError(f"--devices {text}: torch sees no CUDA device here; leave --devices out on a CPU "
                        "(--workers sets the runs at once there)")
    bad = [i for i in indices if not 0 <= i < visible]
    if bad:
        raise UserError(f"--devices {text}: no CUDA device {bad[0]} (torch sees {visible}: "
                        f"0..{visible - 1}; CUDA_VISIBLE_DEVICES renumbers them)")
    return indices


@dataclass
class Slots:
    """Which slot each run trains in: a run takes the lowest free slot; a finishing run frees its own.

    ``names``: one per slot (e.g. ``cuda:0``, ``cuda:2`` or ``cpu``), for messages. Pure bookkeeping:
    :func:`run_parallel` asks :meth:`start` for every pending run it can place and calls :meth:`finish`
    when one ends."""

    names: Sequence[str]
    busy: dict[int, Any] = field(default_factory=dict)

    def start(self, run: Any) -> int | None:
        """The slot ``run`` goes to (now busy with it), or None when every slot is busy."""
        free = [i for i in range(len(self.names)) if i not in self.busy]
        if not free:
            return None
        self.busy[free[0]] = run
        return free[0]

    def finish(self, run: Any) -> int:
        """Free the slot of ``run``; returns it. Raises KeyError for a run that holds none."""
        for slot, held in self.busy.items():
            if held == run:
                del self.busy[slot]
                return slot
        raise KeyError(run)


def run_parallel(jobs: list[Job], data_path: Path | None, device: Device, cuda_indices: Sequence[int | None],
                 progress: StudyProgress, on_start: Callable[[Job], None] = lambda job: None,
                 tracking: TrackingFlags | None = None,
                 on_tail: Callable[[], None] | None = None) -> Iterator[tuple[Job, dict[str, Any]]]:
    """Run controller jobs in one worker process per slot; yield (job, result) as each run ends.

    ``cuda_indices``: per slot, the CUDA device its worker is pinned to (None for CPU workers, which split
    the cores between them). ``on_start`` is called with each job just before it goes to its worker;
    ``tracking``: the study's tracking flags (:class:`specroute.train.tracking.TrackingFlags`);
    ``on_tail`` is called once, in this process, when a slot frees with no run left to start (the report's
    imports, on a core that would wait for the last runs)."""
    ctx = worker_context()
    q = ctx.Queue()
    slots = Slots([f"cuda:{i}" if i is not None else "cpu" for i in cuda_indices])
    threads = (run_threads(device, jobs[0].spec, len(cuda_indices)) if device.type == "cpu"
               else max(1, (os.cpu_count() or 1) // len(cuda_indices)))
    backbone_id: dict[int, int] = {}  # each distinct backbone once, numbered, to every worker
    backbones: dict[int, dict[str, Tensor]] = {}
    for job in jobs:
        backbones[backbone_id.setdefault(id(job.backbone), len(backbone_id))] = job.backbone
    pools = []
    with _sigint_ignored():  # workers start ignoring Ctrl-C (inherited): this process ends them, quietly
        for index in cuda_indices:
            initargs = (q, threads, True, index, backbones, dict(os.environ))
            pools.append(ctx.Pool(1, initializer=init_worker, initargs=initargs))
    at_once = min(len(cuda_indices), len(jobs))
    pending, running = list(range(len(jobs))), {}
    try:
        while pending or running:
            while pending and (slot := slots.start(pending[0])) is not None:
                job = jobs[pending.pop(0)]
                on_start(job)
                running[slot] = pools[slot].apply_async(
                    run_in_worker, (job.arm, job.spec, str(data_path), backbone_id[id(job.backbone)],
                                    str(job.folder), at_once, tracking, device.type))
            done = [slot for slot, res in running.items() if res.ready()]
            progress.drain(q)
            if not done:
                time.sleep(POLL_S)
                continue
            for slot in done:
                result, index = running.pop(slot).get(), slots.busy[slot]
                slots.finish(index)
                yield jobs[index], result
            if on_tail is not None and not pending and running:
                on_tail()
                on_tail = None
    except BaseException:
        for pool in pools:
            pool.terminate()
            pool.join()
        for index in slots.busy.values():  # their workers were ended holding the run folders' locks
            clear_abandoned(jobs[index].folder)
        raise
    else:
        for pool in pools:
            pool.close()
    finally:
        for pool in pools:
            pool.join()


def run_controllers(jobs: list[Job], data: Any, device: Device, workers: int | None,
                    cuda_indices: Sequence[int], progress: StudyProgress, budget: StepBudget,
                    on_start: Callable[[Job], None] = lambda job: None, one_at_a_time: bool = False,
                    world: World = SINGLE, tracking: TrackingFlags | None = None,
                    on_tail: Callable[[], None] | None = None) -> dict[str, dict[int, dict[str, Any]]]:
    """Every controller run, in this process or in worker processes (CPU: ``workers``, None for
    :func:`auto_workers`; CUDA: one per entry of ``cuda_indices``); {arm: {seed: result}}.
    ``one_at_a_time`` (a step budget: tests) keeps every run in this process, and so does data parallel
    (``world``: every process trains each run together, :mod:`specroute.train.distributed`). ``tracking``:
    the study's tracking flags. ``on_start`` is called with each job before it
    starts (the study hands the run folder's lock over to whoever trains it); ``on_tail``: see
    :func:`run_parallel` (workers only)."""
    done_before = {j.folder: (j.folder / "result.json").is_file() for j in jobs}
    finished = [j for j in jobs if done_before[j.folder]]
    todo = [j for j in jobs if not done_before[j.folder]]
    if device.type == "cuda":
        slots: list[int | None] = list(cuda_indices) or [None]
    else:
        slots = [None] * (workers or auto_workers(device, jobs[0].spec, len(todo)))
    done: Iterator[tuple[Job, dict[str, Any]]]
    if uses_workers(len(slots), len(todo), one_at_a_time, world):
        done = itertools.chain(((j, read_result(j.folder / "result.json")) for j in finished),
                               run_parallel(todo, data.path, device, slots, progress, on_start, tracking, on_tail))
    else:
        if device.type == "cuda" and slots[0] is not None:
            torch.cuda.set_device(slots[0])
        done = ((j, _in_process(j, data, device, progress, budget, on_start, world, tracking)) for j in jobs)
    results: dict[str, dict[int, dict[str, Any]]] = {}
    for job, res in done:
        results.setdefault(job.arm, {})[job.seed] = res
        if is_failed(res):
            progress.note(f"[red]{escape(job.arm)} seed {job.seed}: failed[/] ({escape(res['failure']['message'])})")
            continue
        progress.note(f"{job.arm} seed {job.seed}: best_lm {res['best_lm']:.4f} avg_lm {res['avg_lm']:.4f} "
                      f"final_lm {res['final_lm']:.4f} ({res['wall_s']:.0f} s)")
    return results


def _in_process(job: Job, data: Any, device: Device, progress: StudyProgress, budget: StepBudget,
                on_start: Callable[[Job], None], world: World, tracking: TrackingFlags | None) -> dict[str, Any]:
    if not (job.folder / "result.json").is_file():
        on_start(job)
    with deterministic(device, threads=run_threads(device, job.spec, 1)):
        return run_controller(job.arm, job.spec, data, job.backbone, device, job.folder, progress, budget,
                              world=world, tracking=tracking)


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored in this process for the block (so that processes started in it ignore it too; a
    Ctrl-C meanwhile is lost, not half-delivered to workers that are starting)."""
    try:
        before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: signals are not ours to change
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)
