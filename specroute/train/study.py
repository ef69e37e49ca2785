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

Several processes may write one study at once (``--shard i/N``, the tasks of a SLURM array,
:mod:`specroute.train.sharing`): the study's folder lock (:func:`specroute.locks.hold_lock`) is held only
for seconds (checking the folder and claiming the runs, writing ``study.json``, writing the report), and
every run is claimed by the process that will train it; a second process whose runs overlap one claimed
or training run is refused at once, naming the holder; one of another study (another spec hash) is refused
too. A start that fails before ``study.json`` is written (bad data, a full or read-only disk) leaves nothing
behind. Every process writes the report of every run finished in the folder when its own runs end
(:mod:`specroute.report.aggregate`); its controller runs go one at a time, in CPU worker processes or one
per CUDA device (:mod:`specroute.train.parallel`).

A controller run whose training diverges (non-finite loss, gradient norm or held-out LM) is recorded as
failed (:mod:`specroute.train.runs`) while the others go on; the report is written with a "Failed runs"
section and :attr:`StudyResult.failed` lists them (the CLI then exits 1). A diverged backbone stops the
study at once (UserError: nothing to route).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from rich.console import Console
from rich.markup import escape

from specroute.data.shards import prepare_data
from specroute.spec.loader import Resolved, dump_run
from specroute.spec.models import RunSpec
from specroute.spec.sweeps import confirm_sweep
from specroute.locks import hold_lock
from specroute.report.aggregate import INPUTS
from specroute.store import (ANY, FILE, LOCK_NAME, UserError, atomic_write_json, check_out_dir, clear_out_dir,
                             listed_entries,
                             sha256_json)
from specroute.report.plots import PLOTS, import_report_libraries
from specroute.text import plural
from specroute.train import estimate
from specroute.train.backbone import backbone_key, backbone_steps_left, checkpoint_of, get_backbone
from specroute.train.device import Device, deterministic, environment, pick_device
from specroute.train.memory import check_memory
from specroute.train.distributed import join_world, main_only, on_main
from specroute.train.tracking import TrackingFlags, check_available
from specroute.train.progress import StudyProgress, TokenisingProgress
from specroute.train.parallel import (Job, auto_workers, parse_devices, run_controllers, run_threads, start_worker_server,
                                      uses_workers)
from specroute.train.runs import RUN_LAYOUT, RUN_LOCK_WAIT_S, run_dir, run_steps_left
from specroute.train.sharing import STUDY_LOCK_WAIT_S, RunClaims, other_spec_refusal, shard_runs
from specroute.train.trainer import Diverged, StepBudget

if TYPE_CHECKING:
    from specroute.report.summary import FailedRun

#: The plots any version of the report has written (beside :data:`specroute.report.plots.PLOTS`).
EARLIER_PLOTS = ("lm_curves.png", "grad_norm.png", "full_fraction.png")


def study_layout() -> dict[str, object]:
    """What a study writes into its output folder (and all that ``overwrite`` deletes), as a
    :data:`specroute.store.Layout`: ``study.json``, ``sessions.json``, ``inputs.json``, ``report.md``,
    ``summary.json``, ``slurm/`` (the logs of a SLURM array, :mod:`specroute.train.launch`), the
    report's plots in ``plots/`` (:data:`specroute.report.plots.PLOTS` and :data:`EARLIER_PLOTS`) and
    ``runs/<arm>/seed<k>/`` (:data:`specroute.train.runs.RUN_LAYOUT`)."""
    return {"study.json": FILE, "sessions.json": FILE, "report.md": FILE, "summary.json": FILE, INPUTS: FILE,
            "slurm": ANY,
            "plots": {name: FILE for name in {*PLOTS.values(), *EARLIER_PLOTS}},
            "runs": {"*": {"seed[0-9]*": RUN_LAYOUT}}}


@dataclass
class StudyOptions:
    """How to run a study (the CLI's options).

    ``arms`` / ``seeds``: run only these (empty = all). ``cache``: cache root override. ``yes``: no
    confirmation for a paper-profile run without a GPU. ``workers``: controller runs at once on a CPU
    (None: see :func:`specroute.train.parallel.auto_workers`). ``max_steps_this_session``: stop (as if the
    process died) after that many optimiser steps in total; for interruption tests. ``shard``: (i, N), run
    only the i-th of N shares of the selected runs (:func:`specroute.train.sharing.shard_runs`), joining the
    study in ``out``. ``devices``: the CUDA devices, one run on each at once
    (:func:`specroute.train.parallel.parse_devices`; ignored on a CPU when ``auto``). ``tensorboard`` /
    ``wandb``: tracking over the spec's ``train.tracking`` (:class:`specroute.train.tracking.TrackingFlags`).
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
    shard: tuple[int, int] | None = None
    devices: str = "auto"


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


def prepare_out(out: Path, sha: str, resume: bool, overwrite: bool, flag: str = "--resume") -> str | None:
    """Check (and with ``overwrite`` clear) the output folder (:func:`specroute.store.check_out_dir`;
    see the module docstring); ``resume`` needs the same study there (its ``study.json`` and spec hash).
    The caller holds the folder's lock. ``flag``: the option that asked to continue (``--resume``, or
    ``--shard``, which joins the study there), for messages.

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
        raise UserError(f"{flag}: {out} holds no study (no study.json among {', '.join(entries[:5])}); "
                        "check --out, or choose an empty folder")
    try:
        recorded = json.loads(meta.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{flag}: cannot read {meta} ({e}); use --overwrite or another --out") from None
    old = recorded.get("spec_sha256") if isinstance(recorded, dict) else None
    if old != sha:
        raise other_spec_refusal(flag, out, old, sha)
    return None


def _not_started(out: Path, sha: str) -> bool:
    """Whether ``out`` holds only what the start of the study with spec hash ``sha`` writes before its
    first run (``study.json``, and ``sessions.json`` if that start failed or was interrupted)."""
    try:
        names = set(listed_entries(out))
        if "study.json" not in names or not names <= {"study.json", "sessions.json"}:
            return False
        recorded = json.loads((out / "study.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):  # unreadable: check_out_dir says so
        return False
    return isinstance(recorded, dict) and recorded.get("spec_sha256") == sha


def run_study(resolved: Resolved, options: StudyOptions, console: Console | None = None,
              confirm: Callable[[str], bool] | None = None) -> StudyResult:
    """Run the study's selected runs and write the report (of every run finished in the folder).

    Args:
        resolved: the loaded study (:func:`specroute.spec.load_study`).
        options: see :class:`StudyOptions`.
        console: where progress, the estimate and notes go (None: silent).
        confirm: asks the user a yes/no question; None means nobody can answer (no terminal), so a run
            that needs confirmation is refused unless ``options.yes``.
    Returns:
        The output folder and the summary (summary.json's content).
    Raises:
        UserError: bad output folder, one another process is writing (its lock) or that holds another
            study, a run another process trains, data unavailable, a filesystem that cannot take the writes
            (disk full, read-only), refused confirmation, bad ``devices``. SpecError: unknown arm.
        specroute.train.trainer.Interrupted: the session's step budget ran out (tests).
    """
    from specroute.report.aggregate import study_record, write_study_report
    from specroute.report.sessions import interrupted_session, with_session, write_sessions
    from specroute.report.summary import inputs_record

    t_start = time.perf_counter()
    study = resolved.study
    runs = select_runs(resolved, options.arms, options.seeds)
    if options.shard is not None:
        if options.overwrite:
            raise UserError("--shard and --overwrite exclude each other: a shard joins the study in --out "
                            "(clear it first with a run without --shard, or choose another --out)")
        runs = shard_runs(runs, *options.shard)
        if not runs:
            raise UserError(f"--shard {options.shard[0]}/{options.shard[1]}: no run falls to this shard (the study "
                            f"has {plural(len(resolved.runs()), 'run')}); use fewer shards")
    out = Path(options.out) if options.out else default_out(resolved)
    sha = spec_sha256(resolved)
    device = pick_device(options.device)
    world = join_world(device.type)  # several processes under torchrun: one data-parallel run
    if not world.is_main:
        console = None  # the main process shows the progress
    note = console.print if console else (lambda *a, **k: None)
    cuda = ([] if world.size > 1 else  # data parallel: torchrun placed each process on its device
            parse_devices(options.devices, torch.cuda.device_count() if device.type == "cuda" else 0))
    specs = [spec for _, _, spec in runs] or [resolved.arm_spec(next(iter(study.arms)))]
    tracking = TrackingFlags(study.name, out, options.tensorboard, options.wandb)
    check_available(tracking, [s.train.tracking for s in specs])
    # runs at once on one device: CPU workers share its memory; CUDA devices each hold their own runs
    per_device = (max(map(cuda.count, cuda), default=1) if device.type == "cuda"
                  else options.workers or auto_workers(device, specs[0], len(runs)))
    # Memory first: nothing (folder, data, model) is touched for a study that cannot fit.
    memory_warning = check_memory(specs, device.type, max(1, min(per_device, len(runs))), options.yes)
    if memory_warning:
        note(f"[yellow]warning: {escape(memory_warning)}[/]")
    # backbone.pretrained next (downloaded if need be): one that cannot be had stops the study before any folder
    checkpoint = checkpoint_of(specs[0], resolved.source.parent, options.cache)
    waiting = (lambda message: note(f"[dim]{escape(message)}[/]"))
    def claim() -> str | None:  # the main process checks the folder and claims the runs (the others wait)
        if options.overwrite and (options.arms or options.seeds):
            _refuse_partial_overwrite(out, {(a, s) for a, s, _ in runs})
        taken = claims.probe(run_dir(out, a, s) for a, s, _ in runs)
        notice = prepare_out(out, sha, options.resume or options.shard is not None, options.overwrite,
                             "--shard" if options.shard is not None else "--resume")
        taken += claims.take(run_dir(out, a, s) for a, s, _ in runs
                             if not (run_dir(out, a, s) / "result.json").is_file())
        for taken_note in taken:
            note(f"[yellow]{escape(taken_note)}[/]")
        return notice

    slots = len(cuda) if device.type == "cuda" else per_device
    at_once = slots if uses_workers(slots, len(runs), options.max_steps_this_session is not None, world) else 1
    if world.is_main and at_once > 1:
        start_worker_server()  # it imports the workers' code while this process prepares the data
    with _removed_if_empty(out), RunClaims() as claims:
        with main_only(world, hold_lock(out, "the output folder", STUDY_LOCK_WAIT_S, waiting)) as lock_note:
            if lock_note:
                note(f"[yellow]{escape(lock_note)}[/]")
            notice = on_main(world, claim)
        world.barrier()
        if notice and options.shard is None:
            note(f"[yellow]{escape(notice)}[/]")
        first = runs[0][2]
        share = f" (shard {options.shard[0]}/{options.shard[1]})" if options.shard else ""
        note(f"[bold]{study.name}[/] profile [cyan]{study.profile}[/]: {plural(len(runs), 'run')}{share} "
             f"({plural(len({a for a, _, _ in runs}), 'arm')} x {plural(len({s for _, s, _ in runs}), 'seed')}) "
             f"on {device.type}{f' {cuda}' if len(cuda) > 1 else ''} "
             f"({device.dtype_name}); output {escape(str(out))}")
        with deterministic(device):
            confirm_sweep(resolved.raw_base, runs, options.yes, confirm)
            rate = probe_and_confirm(study.profile, runs, device, options.yes, confirm, at_once)
            note(f"data: {first.data.kind} (tokenizer {first.data.tokenizer}) ...")
            if any(s.data != first.data for _, _, s in runs):
                raise UserError("arms with different data are not supported in one study")
            with TokenisingProgress(console) as tokenising:
                data = prepare_data(first.data, resolved.source.parent, options.cache, tokenising.update,
                                    checkpoint.tokenizer_file if checkpoint else None)
            note(f"data: {data.meta['train_tokens']:,} train + {data.meta['heldout_tokens']:,} held-out tokens, "
                 f"corpus sha256 {data.meta['corpus_sha256'][:12]}, cache {escape(str(data.path))}")
            backbone_specs = {backbone_key(s, data): s for _, _, s in runs}
            steps_left = {k: backbone_steps_left(s, data, options.cache) for k, s in backbone_specs.items()}
            runs_left = {(a, s): run_steps_left(run_dir(out, a, s), spec) for a, s, spec in runs}
            note(describe_estimate(backbone_specs, steps_left, runs, runs_left, rate, at_once))
            with main_only(world, hold_lock(out, "the output folder", STUDY_LOCK_WAIT_S, waiting)):
                on_main(world, lambda: write_study_json(out, study_record(resolved, sha)))
            budget = StepBudget(options.max_steps_this_session)
            with StudyProgress(console, sum(steps_left.values()) + sum(runs_left.values())) as progress, \
                    main_only(world, interrupted_session(out, t_start, lock=True)):
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
                run_controllers(jobs, data, device, options.workers, cuda, progress, budget,
                                on_start=lambda job: claims.release(job.folder),
                                one_at_a_time=options.max_steps_this_session is not None, world=world,
                                tracking=tracking, on_tail=import_report_libraries if world.is_main else None)
        inputs = inputs_record(data, next(iter(backbones.values())), environment(device))
    if world.is_main:
        import_report_libraries()  # seconds on a busy machine: before the lock, not under it (or done)
        with hold_lock(out, "the output folder", STUDY_LOCK_WAIT_S, waiting):
            sessions = with_session(out, t_start, "complete")
            with interrupted_session(out, t_start):  # a report that cannot be written (disk full) is a failed session
                summary = write_study_report(out, resolved, sha, inputs, sessions)
            write_sessions(out, sessions)
    world.barrier()
    if not world.is_main:
        summary = json.loads((out / "summary.json").read_text())
    note(f"report: {escape(str(out / 'report.md'))}")
    return StudyResult(out, summary)


def _refuse_partial_overwrite(out: Path, selected: set[tuple[str, int]]) -> None:
    """Raise UserError when ``--overwrite`` with ``--arm`` / ``--seed`` would delete finished runs of ``out``
    outside the selection (``--overwrite`` replaces the whole folder, not the selected runs)."""
    others = sorted(f"{d.parent.name} seed {d.name.removeprefix('seed')}"
                    for d in (out / "runs").glob("*/seed*") if d.name.removeprefix("seed").isdigit()
                    and (d / "result.json").is_file()
                    and (d.parent.name, int(d.name.removeprefix("seed"))) not in selected)
    if others:
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise UserError(f"--overwrite replaces the whole folder {out}, which holds finished runs outside the "
                        f"selected --arm / --seed ({shown}); nothing was changed. Rerun without --arm / --seed "
                        "to replace the whole study, or give another --out")


def write_study_json(out: Path, record: dict[str, Any]) -> None:
    """Write ``out/study.json`` (atomically) unless another process of the same study wrote it first;
    the caller holds the folder's lock. Raises UserError when the folder holds another study's."""
    meta = out / "study.json"
    if meta.is_file():
        try:
            old = json.loads(meta.read_text()).get("spec_sha256")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            old = None
        if old == record["spec_sha256"]:
            return
        raise UserError(f"{out} now holds another study (spec sha256 {str(old)[:12]}, this one "
                        f"{record['spec_sha256'][:12]}), started there by another process meanwhile; processes "
                        "sharing an output folder must run the same spec (file, --profile and --set); choose another "
                        "--out")
    atomic_write_json(meta, record)


@contextlib.contextmanager
def _removed_if_empty(out: Path) -> Iterator[None]:
    """Remove ``out`` after the block if the block created it and left it empty (a failed start)."""
    existed = out.exists()
    try:
        yield
    finally:
        if not existed:
            with contextlib.suppress(OSError):
                out.rmdir()


def probe_and_confirm(profile: str, runs: list[tuple[str, int, RunSpec]], device: Device, yes: bool,
                      confirm: Callable[[str], bool] | None, at_once: int = 1) -> estimate.Throughput:
    """Measure throughput (the controller step at the threads each of ``at_once`` concurrent runs gets); for
    the paper profile without a GPU ask first (refuse when nobody can answer)."""
    needs_confirm = profile == "paper" and device.type != "cuda" and not yes
    if needs_confirm and confirm is None:
        raise UserError(f"the paper profile on {device.type} (no GPU) takes days; nobody can confirm here "
                        "(no terminal). Pass --yes to run it anyway, or run on a CUDA machine.")
    first, heaviest = runs[0][2], estimate.heaviest([s for _, _, s in runs])
    rate = estimate.probe(first, heaviest, device, run_threads(device, heaviest, at_once))
    if needs_confirm:
        rough = (estimate.backbone_seconds(first, first.backbone.train.steps, rate)
                 + estimate.runs_wall_seconds([estimate.run_seconds(s, s.train.steps, rate) for _, _, s in runs],
                                              at_once))
        if not confirm(f"the paper profile on {device.type} (no GPU) needs about {estimate.human(rough)} "
                       "(backbone included unless cached). Continue?"):
            raise UserError("cancelled: the paper profile needs a GPU to finish in reasonable time")
    return rate


def describe_estimate(backbone_specs: dict[str, RunSpec], steps_left: dict[str, int],
                      runs: list[tuple[str, int, RunSpec]], runs_left: dict[tuple[str, int], int],
                      rate: estimate.Throughput, at_once: int = 1) -> str:
    """The study's estimated time: the backbones left, then the runs left, ``at_once`` at a time."""
    secs_bb = sum(estimate.backbone_seconds(backbone_specs[k], n, rate) for k, n in steps_left.items())
    per_run = [estimate.run_seconds(spec, runs_left[(a, s)], rate) for a, s, spec in runs if runs_left[(a, s)]]
    if not per_run and not secs_bb:
        return "estimated time: nothing left to train (the backbone is cached and every run has finished)"
    secs_runs = estimate.runs_wall_seconds(per_run, at_once)
    how = "one at a time" if at_once == 1 or len(per_run) <= 1 else f"{min(at_once, len(per_run))} at a time"
    return (f"estimated time: {estimate.human(secs_bb + secs_runs)} (backbone {estimate.human(secs_bb)}, "
            f"{plural(len(per_run), 'run')} {estimate.human(secs_runs)}, {how}; "
            f"throughput probe {rate.dense_macs_per_s / 1e9:.1f} GMAC/s dense, "
            f"{rate.controller_macs_per_s / 1e9:.1f} GMAC/s controller)")
