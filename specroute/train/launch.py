"""A study on a SLURM cluster: one array job, one task per (arm, seed) run, through submitit.

``specroute run SPEC --launcher slurm --partition P --gpus-per-run 1 --time 4:00:00 [--account A]``
checks the output folder and writes ``study.json`` here (so a bad ``--out`` or another study there is
refused before anything is queued), then submits one array job through ``submitit`` (the optional extra
``pip install 'specroute[slurm]'``) whose every task runs one selected run into the shared ``--out`` as a
process of the study (:mod:`specroute.train.sharing`: the first task to need the backbone trains it while
the others wait for the cache; each task writes the report of what has finished). The command then waits
for the tasks and rewrites the report from every run (:func:`specroute.report.aggregate.rebuild_report`),
or, with ``--no-wait``, prints the job id and leaves that to ``specroute report OUT``. submitit keeps its
logs and pickles in ``<out>/slurm/``.

Tests use submitit's own local or debug executors (``--launcher submitit-local`` / ``submitit-debug``,
hidden options): the same array, run as processes of this machine or in this process.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specroute.store import UserError

#: ``--launcher`` values: ``local`` (this machine), ``slurm``, and submitit's executors for tests.
LAUNCHERS = {"local": None, "slurm": "slurm", "submitit-local": "local", "submitit-debug": "debug"}
#: The folder of ``--out`` where submitit keeps its logs and pickles.
SLURM_DIR = "slurm"


@dataclass(frozen=True)
class SlurmOptions:
    """How to submit: ``partition``, ``gpus_per_run`` (GPUs of each task), ``time_min`` (each task's time
    limit, minutes), ``account`` (None: the user's default), ``wait`` (wait for the tasks, then report)."""

    partition: str | None = None
    gpus_per_run: int = 1
    time_min: int = 240
    account: str | None = None
    cpus_per_run: int | None = None
    wait: bool = True


def parse_time(text: str) -> int:
    """A SLURM time limit -> minutes: ``MM``, ``HH:MM:SS`` or ``D-HH:MM:SS`` (``--time``). Raises
    UserError for anything else or a limit under one minute."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d{1,2}):(\d{1,2})", text.strip())
    if m:
        days, hours, minutes, seconds = (int(g or 0) for g in m.groups())
        total = days * 1440 + hours * 60 + minutes + (1 if seconds else 0)
    elif text.strip().isdigit():
        total = int(text)
    else:
        total = 0
    if total < 1:
        raise UserError(f"--time {text!r}: give minutes (90), HH:MM:SS (4:00:00) or D-HH:MM:SS (1-00:00:00)")
    return total


def _submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise UserError("--launcher slurm needs submitit, which is not installed: pip install 'specroute[slurm]'") \
            from None
    return submitit


def run_task(resolved: Any, out: str, arm: str, seed: int, cache: str | None, device: str) -> dict[str, Any]:
    """One array task: the run (arm, seed) of the study into ``out``, as a process of the shared study;
    returns the run's result (a failed run's too: :func:`specroute.train.runs.is_failed`)."""
    from specroute.train.runs import read_result, run_dir
    from specroute.train.study import StudyOptions, run_study

    options = StudyOptions(out=Path(out), resume=True, arms=[arm], seeds=[seed], cache=cache, device=device,
                           yes=True, workers=1)
    run_study(resolved, options)
    return read_result(run_dir(Path(out), arm, seed) / "result.json")


def task_error(e: BaseException) -> str:
    """The last error line of a task's failure (submitit's message holds the task's traceback and then the
    paths of its logs), without the exception's module path."""
    lines = [line for line in str(e).splitlines() if re.match(r"[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b", line)]
    return re.sub(r"^[\w.]+\.(?=\w+:)", "", lines[-1]) if lines else repr(e)


def submit_study(resolved: Any, options: Any, launcher: str, slurm: SlurmOptions,
                 note: Any = lambda *a, **k: None) -> tuple[list[str], dict[str, Any] | None]:
    """Check ``options.out`` (as :func:`specroute.train.study.run_study` does), record the study there, and
    submit its selected unfinished runs as one array job (``launcher``: a key of :data:`LAUNCHERS` but ``local``).

    Returns the job ids and, when ``slurm.wait``, the summary of the report written once every task
    ended (else None). Raises UserError: submitit missing, an output folder that cannot be used, the
    cluster refusing the job (its message), a task that ended in an error (after the report of the rest).
    """
    from specroute.locks import hold_lock
    from specroute.report.aggregate import rebuild_report, study_record
    from specroute.train.runs import run_dir
    from specroute.train.sharing import STUDY_LOCK_WAIT_S
    from specroute.train.study import default_out, prepare_out, select_runs, spec_sha256, write_study_json

    submitit = _submitit()
    if launcher == "slurm" and submitit.SlurmExecutor.affinity() <= 0:
        raise UserError("--launcher slurm: no SLURM here (srun is not on the PATH); run the command on a node of "
                        "the cluster (e.g. its login node), or leave --launcher out to run on this machine")
    runs = select_runs(resolved, options.arms, options.seeds)
    out = Path(options.out) if options.out else default_out(resolved)
    sha = spec_sha256(resolved)
    with hold_lock(out, "the output folder", STUDY_LOCK_WAIT_S):
        prepare_out(out, sha, options.resume, options.overwrite)
        write_study_json(out, study_record(resolved, sha))
    runs = [(a, s, spec) for a, s, spec in runs if not (run_dir(out, a, s) / "result.json").is_file()]
    if not runs:
        note(f"every selected run has finished in {out}; nothing to submit")
        return [], rebuild_report(out)
    executor = submitit.AutoExecutor(folder=out / SLURM_DIR, cluster=LAUNCHERS[launcher])
    params: dict[str, Any] = {"name": f"specroute-{resolved.study.name}", "timeout_min": slurm.time_min,
                              "slurm_array_parallelism": len(runs)}
    if launcher == "slurm":
        params.update(gpus_per_node=slurm.gpus_per_run, tasks_per_node=1, slurm_partition=slurm.partition,
                      slurm_account=slurm.account, cpus_per_task=slurm.cpus_per_run)
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    device = "cpu" if launcher != "slurm" and options.device == "auto" else options.device
    args = [(resolved, str(out), arm, seed, str(options.cache) if options.cache else None, device)
            for arm, seed, _ in runs]
    try:
        jobs = executor.map_array(run_task, *zip(*args))
    except Exception as e:  # noqa: BLE001 -- sbatch missing or refusing: its message is the user's to read
        raise UserError(f"submitting the array job failed: {e}") from None
    ids = [job.job_id for job in jobs]
    note(f"submitted {len(jobs)} task(s) as job {ids[0].split('_')[0] if ids else '?'} "
         f"({launcher}); logs in {out / SLURM_DIR}")
    if not slurm.wait:
        return ids, None
    errors = []
    for (arm, seed, _), job in zip(runs, jobs):
        try:
            job.result()
        except Exception as e:  # noqa: BLE001 -- a task's error (submitit re-raises it here) is reported, not raised
            errors.append(f"{arm} seed {seed} (task {job.job_id}): {task_error(e)}")
    try:
        summary = rebuild_report(out)
    except UserError:
        if not errors:
            raise
        summary = None
    if errors:
        raise UserError(f"{len(errors)} of {len(jobs)} task(s) ended in an error: {'; '.join(errors)}. The report "
                        f"({out / 'report.md'}) covers the runs that finished; see the logs in {out / SLURM_DIR}")
    return ids, summary
