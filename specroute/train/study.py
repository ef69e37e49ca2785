"""Run a study end to end: data, backbone, every (arm, seed) controller run, report.

The output folder (default ``reports/<study>/<profile>/``) holds ``study.json`` (the resolved spec, its
hash and the run selection), ``runs/<arm>/seed<k>/`` (see :mod:`specroute.train.runs`), and the report
(``report.md``, ``summary.json``, ``plots/``; see :mod:`specroute.report`).

Nothing already written is lost: a non-empty output folder is refused unless ``resume`` (continue it:
finished runs are kept, interrupted ones continue from their last checkpoint, the spec must be the same)
or ``overwrite`` (delete what a previous study wrote there, then start afresh; refused when the folder
holds no ``study.json`` or anything a study does not write, :func:`study_layout`, even inside ``plots/`` and
``runs/``). The rule is :func:`specroute.store.check_out_dir`'s, shared with ``specroute bench``. A folder
that holds only the ``study.json`` (and ``sessions.json``) of the same spec, a start that failed before
any run began, is continued without ``--resume``.

One process writes a study at a time: the study holds the lock of its output folder
(:func:`specroute.locks.hold_lock`) from before the folder is checked until the report is written, and
each controller run the lock of its run folder; a second ``specroute run`` into the same folder is
refused at once, naming the holder. A start that fails before ``study.json`` is written (bad data, a
full or read-only disk) leaves nothing behind.

A controller run whose training diverges (non-finite loss, gradient norm or held-out LM) is recorded as
failed (:mod:`specroute.train.runs`) while the others go on; the report is written with a "Failed runs"
section and :attr:`StudyResult.failed` lists them (the CLI then exits 1). A diverged backbone stops the
study at once (UserError: nothing to route).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from rich.console import Console
from rich.markup import escape
from torch import Tensor

from specroute.data.shards import prepare_data
from specroute.flops.analytic import count_params
from specroute.spec.loader import Resolved, dump_run
from specroute.spec.models import RunSpec
from specroute.spec.sweeps import confirm_sweep
from specroute.locks import hold_lock
from specroute.store import (FILE, LOCK_NAME, UserError, atomic_write_json, check_out_dir, clear_out_dir,
                             sha256_json)
from specroute.report.plots import PLOTS
from specroute.text import plural
from specroute.train import estimate
from specroute.train.backbone import backbone_key, backbone_steps_left, get_backbone
from specroute.train.device import Device, deterministic, environment, pick_device
from specroute.train.memory import check_memory
from specroute.train.distributed import SINGLE, World, join_world, main_only, on_main
from specroute.train.tracking import TrackingFlags, check_available
from specroute.train.progress import StudyProgress, TokenisingProgress
from specroute.train.runs import (RUN_LAYOUT, RUN_LOCK_WAIT_S, init_worker, is_failed, run_controller, run_dir,
                                  run_in_worker, run_steps_left)
from specroute.train.trainer import Diverged, StepBudget

if TYPE_CHECKING:
    from specroute.report.summary import FailedRun

#: Above this many parameters controller runs go one at a time by default (memory per worker).
PARALLEL_MAX_PARAMS = 20_000_000
#: The plots any version of the report has written (beside :data:`specroute.report.plots.PLOTS`).
EARLIER_PLOTS = ("lm_curves.png", "grad_norm.png", "full_fraction.png")


def study_layout() -> dict[str, object]:
    """What a study writes into its output folder (and all that ``overwrite`` deletes), as a
    :data:`specroute.store.Layout`: ``study.json``, ``sessions.json``, ``report.md``, ``summary.json``, the
    report's plots in ``plots/`` (:data:`specroute.report.plots.PLOTS` and :data:`EARLIER_PLOTS`) and
    ``runs/<arm>/seed<k>/`` (:data:`specroute.train.runs.RUN_LAYOUT`)."""
    return {"study.json": FILE, "sessions.json": FILE, "report.md": FILE, "summary.json": FILE,
            "plots": {name: FILE for name in {*PLOTS.values(), *EARLIER_PLOTS}},
            "runs": {"*": {"seed[0-9]*": RUN_LAYOUT}}}


@dataclass
class StudyOptions:
    """How to run a study (the CLI's options).

    ``arms`` / ``seeds``: run only these (empty = all). ``cache``: cache root override. ``yes``: no
    confirmation for a paper-profile run without a GPU. ``workers``: controller runs at once
    (None: see :func:`auto_workers`). ``tensorboard`` / ``wandb``: tracking over the spec's
    ``train.tracking`` (:class:`specroute.train.tracking.TrackingFlags`). ``max_steps_this_session``: stop (as if the
    process died) after that many optimiser steps in total; for interruption tests.
    """

    out: Path | None = None
    resume: bool = False
    overwrite: bool = False
    arms: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    device: str = "auto"
    cache: str | Path | None = None
    yes: bool = False
    workers: int | None = None
    max_steps_this_session: int | None = None
    tensorboard: Path | None = None
    wandb: str | None = None


@dataclass
class StudyResult:
    out: Path
    summary: dict[str, Any]

    @property
    def failed(self) -> list[FailedRun]:
        """The failed runs of the report (:class:`specroute.report.summary.FailedRun`), in spec order."""
        from specroute.report.summary import failed_runs

        return failed_runs(self.summary)

    def failure_message(self) -> str | None:
        """One paragraph on the failed runs (None when every run finished): how many, each one's step and
        non-finite values, and where the report is."""
        failed = self.failed
        if not failed:
            return None
        total = sum(len(a["seeds"]) for a in self.summary["arms"].values()) + len(failed)
        by_arm: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for arm, seed, f in failed:
            by_arm.setdefault(arm, []).append((seed, f))
        each = []
        for arm, runs in by_arm.items():
            seeds = ", ".join(seed for seed, _ in runs)
            steps = "/".join(dict.fromkeys(str(f["step"]) for _, f in runs))
            values = {k: v for _, f in runs for k, v in f["nonfinite"].items()}
            each.append(f"{arm} seed{'s' if len(runs) > 1 else ''} {seeds} at step {steps} of {runs[0][1]['steps']} "
                        f"({', '.join(f'{k} {v}' for k, v in values.items())})")
        return (f"{len(failed)} of {plural(total, 'run')} failed (non-finite values): "
                f"{'; '.join(each)}. The report ({self.out / 'report.md'}) covers the finished runs and lists "
                "these under \"Failed runs\"; a smaller learning rate (train.optimizer.lr_peak) or a gradient clip "
                "(train.grad_clip) usually prevents this")


def default_out(resolved: Resolved) -> Path:
    return Path("reports") / resolved.study.name / resolved.study.profile


def spec_sha256(resolved: Resolved) -> str:
    """Hash of the resolved study (every arm's run spec and the study's seeds and comparisons)."""
    study = resolved.study
    return sha256_json({
        "arms": {a: dump_run(resolved.arm_spec(a)) for a in study.arms},
        "seeds": study.seeds, "profile": study.profile,
        "comparisons": [c.model_dump(mode="json") for c in study.comparisons],
    })


def select_runs(resolved: Resolved, arms: list[str], seeds: list[int]) -> list[tuple[str, int, RunSpec]]:
    """The (arm, seed, spec) runs to do. Raises SpecError for an unknown arm, UserError for a seed
    the study does not list."""
    for arm in arms:
        resolved.arm_spec(arm)  # raises SpecError naming the known arms
    bad = [s for s in seeds if s not in resolved.study.seeds]
    if bad:
        raise UserError(f"seed(s) {bad} not in the study's seeds {resolved.study.seeds} "
                        "(change them with --set seeds=[...])")
    return [(a, s, spec) for a, s, spec in resolved.runs()
            if (not arms or a in arms) and (not seeds or s in seeds)]


def prepare_out(out: Path, sha: str, resume: bool, overwrite: bool) -> str | None:
    """Check (and with ``overwrite`` clear) the output folder (:func:`specroute.store.check_out_dir`;
    see the module docstring); ``resume`` needs the same study there (its ``study.json`` and spec hash).
    The caller holds the folder's lock.

    Returns a notice for the user (``resume`` with nothing to resume), else None. Raises UserError for a
    folder that cannot be used as asked; nothing is changed then.
    """
    if not overwrite and out.is_dir() and _not_started(out, sha):  # a failed start of this same study
        resume = True
    entries = check_out_dir(out, study_layout(), "a study", overwrite, resume, marker="study.json")
    if not entries:
        return f"--resume: no study in {out} yet; starting one" if resume else None
    if overwrite:
        for lock in sorted(out.glob(f"runs/*/*/{LOCK_NAME}")):  # a worker of a killed study may still be ending
            with hold_lock(lock.parent, "the run folder", wait_s=RUN_LOCK_WAIT_S):
                pass
        clear_out_dir(out, study_layout())
        return None
    meta = out / "study.json"
    if not meta.is_file():
        raise UserError(f"--resume: {out} holds no study (no study.json among {', '.join(entries[:5])}); "
                        "check --out, or choose an empty folder")
    try:
        recorded = json.loads(meta.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"--resume: cannot read {meta} ({e}); use --overwrite or another --out") from None
    old = recorded.get("spec_sha256") if isinstance(recorded, dict) else None
    if old != sha:
        raise UserError(f"--resume: {out} holds a study with another resolved spec (sha256 {str(old)[:12]}, "
                        f"now {sha[:12]}); use --overwrite or another --out")
    return None


def _not_started(out: Path, sha: str) -> bool:
    """Whether ``out`` holds only what the start of the study with spec hash ``sha`` writes before its
    first run (``study.json``, and ``sessions.json`` if that start failed or was interrupted)."""
    try:
        names = {p.name for p in out.iterdir() if p.name != LOCK_NAME}
        if "study.json" not in names or not names <= {"study.json", "sessions.json"}:
            return False
        recorded = json.loads((out / "study.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):  # unreadable: check_out_dir says so
        return False
    return isinstance(recorded, dict) and recorded.get("spec_sha256") == sha


def auto_workers(device: Device, spec: RunSpec, pending: int) -> int:
    """Controller runs at once: on a CPU one per core (each with one intra-op thread; small models
    use cores better this way than with intra-op threads), unless the model is large
    (> :data:`PARALLEL_MAX_PARAMS`, where memory matters more); on CUDA one."""
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


class Job(NamedTuple):
    """One controller run to do: its arm, seed, run spec, backbone weights (CPU) and run folder."""

    arm: str
    seed: int
    spec: RunSpec
    backbone: dict[str, Tensor]
    folder: Path


def run_parallel(jobs: list[Job], data_path: Path | None, workers: int, progress: StudyProgress,
                 tracking: TrackingFlags | None = None) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """Run controller jobs in ``workers`` spawned processes (CPU); yield (arm, seed, result) in job order.

    On any exception here (a failed run, SIGINT, SIGTERM) the workers are terminated at once: their last
    checkpoints are what ``--resume`` continues from, and waiting would mean waiting for their runs."""
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    threads = run_threads(Device("cpu", None), jobs[0].spec, workers)
    with _sigint_ignored():  # workers start ignoring Ctrl-C (inherited): this process ends them, quietly
        pool = ctx.Pool(workers, initializer=init_worker, initargs=(q, threads, os.getpid()))
    try:
        at_once = min(workers, len(jobs))
        pending = [pool.apply_async(run_in_worker, (j.arm, j.spec, str(data_path), j.backbone, str(j.folder),
                                                    at_once, tracking)) for j in jobs]
        for job, res in zip(jobs, pending):
            while True:
                try:
                    result = res.get(timeout=0.25)
                    break
                except multiprocessing.TimeoutError:
                    progress.drain(q)
            progress.drain(q)
            yield job.arm, job.seed, result
    except BaseException:
        pool.terminate()
        raise
    else:
        pool.close()
    finally:
        pool.join()


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored in this process for the block (so that processes started in it ignore it too; a
    Ctrl-C meanwhile is lost, not half-delivered to workers that are importing)."""
    try:
        before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: signals are not ours to change
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def run_study(resolved: Resolved, options: StudyOptions, console: Console | None = None,
              confirm: Callable[[str], bool] | None = None) -> StudyResult:
    """Run the study's selected runs and write the report.

    Args:
        resolved: the loaded study (:func:`specroute.spec.load_study`).
        options: see :class:`StudyOptions`.
        console: where progress, the estimate and notes go (None: silent).
        confirm: asks the user a yes/no question; None means nobody can answer (no terminal), so a run
            that needs confirmation is refused unless ``options.yes``.
    Returns:
        The output folder and the summary (summary.json's content).
    Raises:
        UserError: bad output folder, one another process is writing (its lock), data unavailable, a
            filesystem that cannot take the writes (disk full, read-only), refused confirmation.
            SpecError: unknown arm.
        specroute.train.trainer.Interrupted: the session's step budget ran out (tests).
    """
    from specroute.report.sessions import interrupted_session, with_session, write_sessions

    t_start = time.perf_counter()
    study = resolved.study
    runs = select_runs(resolved, options.arms, options.seeds)
    out = Path(options.out) if options.out else default_out(resolved)
    sha = spec_sha256(resolved)
    device = pick_device(options.device)
    world = join_world(device.type)  # several processes under torchrun: one data-parallel run
    if not world.is_main:
        console = None  # the main process shows the progress
    note = console.print if console else (lambda *a, **k: None)
    specs = [spec for _, _, spec in runs]
    tracking = TrackingFlags(study.name, out, options.tensorboard, options.wandb)
    check_available(tracking, [s.train.tracking for s in specs])
    # Memory first: nothing (folder, data, model) is touched for a study that cannot fit.
    memory_warning = check_memory(specs, device.type, min(options.workers or auto_workers(device, specs[0], len(runs)),
                                                          len(runs)), options.yes)
    if memory_warning:
        note(f"[yellow]warning: {escape(memory_warning)}[/]")
    with main_only(world, hold_lock(out, "the output folder")) as lock_note:
        if lock_note:
            note(f"[yellow]{escape(lock_note)}[/]")
        notice = on_main(world, lambda: prepare_out(out, sha, options.resume, options.overwrite))
        world.barrier()
        if notice:
            note(f"[yellow]{escape(notice)}[/]")
        first = runs[0][2]
        note(f"[bold]{study.name}[/] profile [cyan]{study.profile}[/]: {plural(len(runs), 'run')} "
             f"({plural(len({a for a, _, _ in runs}), 'arm')} x {plural(len({s for _, s, _ in runs}), 'seed')}) "
             f"on {device.type} "
             f"({device.dtype_name}); output {escape(str(out))}")
        with deterministic(device):
            confirm_sweep(resolved.raw_base, runs, options.yes, confirm)
            rate = probe_and_confirm(study.profile, runs, device, options.yes, confirm)
            note(f"data: {first.data.kind} (tokenizer {first.data.tokenizer}) ...")
            if any(s.data != first.data for _, _, s in runs):
                raise UserError("arms with different data are not supported in one study")
            with TokenisingProgress(console) as tokenising:
                data = prepare_data(first.data, resolved.source.parent, options.cache, tokenising.update)
            note(f"data: {data.meta['train_tokens']:,} train + {data.meta['heldout_tokens']:,} held-out tokens, "
                 f"corpus sha256 {data.meta['corpus_sha256'][:12]}, cache {escape(str(data.path))}")
            backbone_specs = {backbone_key(s, data): s for _, _, s in runs}
            steps_left = {k: backbone_steps_left(s, data, options.cache) for k, s in backbone_specs.items()}
            runs_left = {(a, s): run_steps_left(run_dir(out, a, s), spec) for a, s, spec in runs}
            note(describe_estimate(backbone_specs, steps_left, runs, runs_left, rate))
            on_main(world, lambda: atomic_write_json(out / "study.json", {
                "study": study.name, "profile": study.profile, "spec_sha256": sha, "source": str(resolved.source),
                "arms": {a: dump_run(resolved.arm_spec(a)) for a in study.arms}, "seeds": study.seeds,
            }))
            budget = StepBudget(options.max_steps_this_session)
            with StudyProgress(console, sum(steps_left.values()) + sum(runs_left.values())) as progress, \
                    main_only(world, interrupted_session(out, t_start)):
                backbones = {}
                for key, spec in backbone_specs.items():
                    try:
                        if not world.is_main:  # the main process trains (or loads) it into the cache first
                            world.barrier()
                        backbones[key] = get_backbone(spec, data, device, options.cache, resolved.source.parent,
                                                      progress, budget)
                        if world.is_main:
                            world.barrier()
                    except Diverged as e:
                        raise UserError(f"{e}. The study stops: every controller run needs the trained backbone; "
                                        "a smaller backbone.train.optimizer.lr_peak or a backbone.train.grad_clip "
                                        "usually prevents this") from None
                    info = backbones[key].info
                    progress.note(f"backbone ({info['source']}): held-out LM {info['heldout_lm']:.3f} nats/token vs "
                                  f"unigram entropy {data.meta['unigram_entropy_nats']:.3f}")
                jobs = [Job(arm, seed, spec, backbones[backbone_key(spec, data)].state, run_dir(out, arm, seed))
                        for arm, seed, spec in runs]
                results = run_controllers(jobs, data, device, options, progress, budget, world, tracking)
        results = with_earlier_runs(results, resolved, out)

        from specroute.report import build_summary, write_report

        sessions = with_session(out, t_start, "complete")
        summary = build_summary(resolved, sha, runs, results, data, next(iter(backbones.values())),
                                environment(device), sum(s["wall_s"] for s in sessions), sessions)
        if world.is_main:
            with interrupted_session(out, t_start):  # a report that cannot be written (disk full) is a failed session
                write_report(out, summary, resolved)
            write_sessions(out, sessions)
        world.barrier()
    note(f"report: {escape(str(out / 'report.md'))}")
    return StudyResult(out, summary)


def probe_and_confirm(profile: str, runs: list[tuple[str, int, RunSpec]], device: Device, yes: bool,
                      confirm: Callable[[str], bool] | None) -> estimate.Throughput:
    """Measure throughput; for the paper profile without a GPU ask first (refuse when nobody can answer)."""
    needs_confirm = profile == "paper" and device.type != "cuda" and not yes
    if needs_confirm and confirm is None:
        raise UserError(f"the paper profile on {device.type} (no GPU) takes days; nobody can confirm here "
                        "(no terminal). Pass --yes to run it anyway, or run on a CUDA machine.")
    first = runs[0][2]
    rate = estimate.probe(first, estimate.heaviest([s for _, _, s in runs]), device)
    if needs_confirm:
        rough = (estimate.backbone_seconds(first, first.backbone.train.steps, rate)
                 + sum(estimate.run_seconds(s, s.train.steps, rate) for _, _, s in runs))
        if not confirm(f"the paper profile on {device.type} (no GPU) needs about {estimate.human(rough)} "
                       "(backbone included unless cached). Continue?"):
            raise UserError("cancelled: the paper profile needs a GPU to finish in reasonable time")
    return rate


def describe_estimate(backbone_specs: dict[str, RunSpec], steps_left: dict[str, int],
                      runs: list[tuple[str, int, RunSpec]], runs_left: dict[tuple[str, int], int],
                      rate: estimate.Throughput) -> str:
    secs_bb = sum(estimate.backbone_seconds(backbone_specs[k], n, rate) for k, n in steps_left.items())
    secs_runs = sum(estimate.run_seconds(spec, runs_left[(a, s)], rate) for a, s, spec in runs)
    return (f"estimated time: {estimate.human(secs_bb + secs_runs)} (backbone {estimate.human(secs_bb)}, "
            f"{plural(sum(1 for n in runs_left.values() if n), 'run')} {estimate.human(secs_runs)} if run one at a "
            "time; "
            f"throughput probe {rate.dense_macs_per_s / 1e9:.1f} GMAC/s dense, "
            f"{rate.controller_macs_per_s / 1e9:.1f} GMAC/s controller)")


def run_controllers(jobs: list[Job], data: Any, device: Device,
                    options: StudyOptions, progress: StudyProgress,
                    budget: StepBudget, world: World = SINGLE,
                    tracking: TrackingFlags | None = None) -> dict[str, dict[int, dict[str, Any]]]:
    """Every controller run, in this process or (CPU, several pending, one process) in worker processes;
    under data parallel (``world``) one run after another, each by every process."""
    done_before = {j.folder: (j.folder / "result.json").is_file() for j in jobs}
    finished = [j for j in jobs if done_before[j.folder]]
    todo = [j for j in jobs if not done_before[j.folder]]
    workers = options.workers or auto_workers(device, jobs[0].spec, len(todo))
    if workers > 1 and len(todo) > 1 and options.max_steps_this_session is None and world.size == 1:
        done = itertools.chain(
            ((j.arm, j.seed, json.loads((j.folder / "result.json").read_text())) for j in finished),
            run_parallel(todo, data.path, workers, progress, tracking))
    else:
        def in_process(j: Job) -> dict[str, Any]:
            with deterministic(device, threads=run_threads(device, j.spec, 1)):
                return run_controller(j.arm, j.spec, data, j.backbone, device, j.folder, progress, budget,
                                      world=world, tracking=tracking)

        done = ((j.arm, j.seed, in_process(j)) for j in jobs)
    results: dict[str, dict[int, dict[str, Any]]] = {}
    for arm, seed, res in done:
        results.setdefault(arm, {})[seed] = res
        if is_failed(res):
            progress.note(f"[red]{escape(arm)} seed {seed}: failed[/] ({escape(res['failure']['message'])})")
            continue
        progress.note(f"{arm} seed {seed}: best_lm {res['best_lm']:.4f} avg_lm {res['avg_lm']:.4f} "
                      f"final_lm {res['final_lm']:.4f} ({res['wall_s']:.0f} s)")
    return results


def with_earlier_runs(results: dict[str, dict[int, dict[str, Any]]], resolved: Resolved,
                      out: Path) -> dict[str, dict[int, dict[str, Any]]]:
    """Add the runs of this study that earlier invocations (other --arm / --seed) finished in ``out``;
    arms in spec order."""
    for arm in resolved.study.arms:
        for seed in resolved.study.seeds:
            done = run_dir(out, arm, seed) / "result.json"
            if seed not in results.get(arm, {}) and done.is_file():
                results.setdefault(arm, {})[seed] = json.loads(done.read_text())
    return {arm: results[arm] for arm in resolved.study.arms if arm in results}
