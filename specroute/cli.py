"""The ``specroute`` command line: thin commands over the library (docs/DESIGN.md, "CLI contract").

Each command parses, calls the library, hands the result to :mod:`specroute.report.console` to print,
and exits with a code. User errors (:class:`~specroute.spec.SpecError`, :class:`~specroute.store.UserError`)
are caught once, in :func:`command`: one clear message on stderr, exit 2; tracebacks are for bugs.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape

from specroute.spec import SpecError, load_study
from specroute.spec.errors import MAX_PROBLEMS_SHOWN, MAX_REASON_CHARS, clip
from specroute.locks import hold_lock
from specroute.store import UserError, json_text

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Typed specs, training and verification for conditional depth routing in decoder-only "
                  "language models (README.md; docs/DESIGN.md).")
# Wide enough for the tables when output is piped (rich defaults to 80 columns there).
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

SpecArg = Annotated[Path, typer.Argument(help="A study spec (YAML).")]
ProfileOpt = Annotated[Optional[str], typer.Option("--profile", "-p", help="Profile under `profiles:`.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override: key.path=value (YAML value).")]
ArmOpt = Annotated[Optional[list[str]], typer.Option("--arm", help="Only this arm (repeatable); default: all.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto | cpu | cuda (CUDA runs in bf16 autocast).")]


def fail(message: str, code: int = 2) -> None:
    """Print a user error and exit with ``code`` (2 for bad input)."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code)


def command(fn: Callable[..., None]) -> Callable[..., None]:
    """Register ``fn`` as a command whose user errors print one message and exit 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except SpecError as e:
            fail("invalid spec\n" + e.render())
        except UserError as e:
            fail(str(e))

    return app.command()(wrapper)


def _progress(quiet: bool) -> Callable[[str], None] | None:
    """Progress lines of a long command on stderr (in a terminal or not: a log under nohup or CI shows the
    work going on); None with ``--json`` (``quiet``)."""
    return None if quiet else lambda msg: err_console.print(f"[dim]{escape(msg)}[/]")


def _passive_threads() -> None:
    # Idle OpenMP threads sleep instead of spinning: on a busy CPU, spinning threads slow a run manyfold.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@command
def validate(spec: SpecArg, profile: ProfileOpt = None, set_: SetOpt = None, arm: ArmOpt = None,
             json_out: Annotated[bool, typer.Option("--json", help="Print the resolved spec as JSON.")] = False):
    """Resolve and validate a spec; print the resolved spec, its parameter count and its memory estimate on
    this machine: exit 2 when its parameters and optimiser state alone exceed the machine's memory, a warning
    when the whole estimate may not fit (the spec may be meant for a larger machine)."""
    from specroute.flops.analytic import count_params
    from specroute.spec.loader import dump_run

    try:
        resolved = load_study(spec, profile, set_ or [])
        study = resolved.study
        arms = {a: resolved.arm_spec(a) for a in (arm or study.arms)}
    except SpecError as e:
        if json_out:  # a script reads the problems from stdout; the message still goes to stderr
            typer.echo(json_text({"valid": False, "problems": [
                {"file": p.file, "field": clip(p.field), "line": p.line, "reason": clip(p.reason, MAX_REASON_CHARS)}
                for p in e.problems[:MAX_PROBLEMS_SHOWN]], "problems_total": len(e.problems)}, indent=2))
        raise
    from specroute.report.console import print_spec  # torch, scipy: only once the spec is valid
    from specroute.train.device import pick_device
    from specroute.train.memory import available, estimate_study, judge

    device = pick_device("auto").type
    memory = estimate_study(list(arms.values()), device)
    fit = judge(memory, available(device))
    if fit.status == "cannot":
        raise UserError(fit.message)
    if json_out:
        typer.echo(json_text({
            "valid": True, "study": study.name, "profile": study.profile, "seeds": study.seeds,
            "arms": {a: {"spec": dump_run(s), "params": count_params(s).as_dict()} for a, s in arms.items()},
            "memory": {**memory.as_dict(), "fits": fit.status, "message": fit.message},
        }, indent=2))
    else:
        print_spec(console, study, arms, fit)


@command
def schema():
    """Print the JSON Schema of the spec language (for editors)."""
    from specroute.spec.study import SpecFile

    typer.echo(json_text(SpecFile.model_json_schema(), indent=2))


@command
def bench(
    spec: SpecArg,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON instead of tables.")] = False,
    quick: Annotated[bool, typer.Option("--quick", help="Tiny sizes, 1 warm-up, 2 rounds: seconds.")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", help="Output folder; default reports/bench/<study>_<profile>[_quick].")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing result in the output folder.")] = False,
    repeats: Annotated[Optional[int], typer.Option("--repeats", min=1, max=1000, help="Timed rounds (default 5; quick 2).")] = None,
    device: DeviceOpt = "auto",
    compile_: Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="Also time dense and GPT-2 training under torch.compile (default: on, off with --quick).")] = None,
):
    """Throughput and peak memory of dense / masked / gather training beside transformers' GPT-2."""
    from specroute.bench import BenchOptions, check_out_dir, default_out_dir, rich_tables, run_bench, write_results

    resolved = load_study(spec, profile, set_ or [])
    out = out or default_out_dir(resolved.study.name, resolved.study.profile, quick)
    with hold_lock(out, "the output folder"):  # one benchmark at a time into one folder
        check_out_dir(out, overwrite)
        summary = run_bench(resolved, BenchOptions(repeats=repeats, quick=quick, device=device, compile=compile_),
                            progress=_progress(json_out))
        write_results(summary, out, overwrite)
    if json_out:
        typer.echo(json_text(summary, indent=2))
        return
    for table in rich_tables(summary):
        console.print(table)
    for warning in summary["warnings"]:
        console.print(f"[yellow]warning:[/] {warning}")
    console.print(f"wrote {escape(str(out))}/summary.json, report.md, throughput_vs_budget.png")


@command
def run(
    spec: SpecArg,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Report folder; default reports/<study>/<profile>.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted study in --out.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a previous study's results in --out.")] = False,
    arm: ArmOpt = None,
    seed: Annotated[Optional[list[int]], typer.Option("--seed", help="Only this seed (repeatable); default: all.")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before a paper-profile run without a GPU; run a study that may not fit in memory.")] = False,
    device: DeviceOpt = "auto",
    cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", help="Cache root (default $SPECROUTE_CACHE or ~/.cache/specroute).")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", min=1, help="Controller runs at once on a CPU (default: one per core for small models).")] = None,
    tensorboard: Annotated[Optional[Path], typer.Option("--tensorboard", help="Also log every metric to TensorBoard under DIR/<study>/<arm>/seed<k> (extra: tracking).")] = None,
    wandb: Annotated[Optional[str], typer.Option("--wandb", help="Also log every metric to Weights & Biases: offline | online | off (extra: tracking); default: train.tracking.wandb.")] = None,
    devices: Annotated[str, typer.Option("--devices", help="CUDA devices, one run on each at once: auto (every visible one) or a list such as 0,2 (0,0: two runs on device 0).")] = "auto",
    shard: Annotated[Optional[str], typer.Option("--shard", help="Run only the i-th of N shares of the runs (i/N, e.g. 0/2), joining the study in --out that other shards write too.")] = None,
    launcher: Annotated[str, typer.Option("--launcher", help="local (this machine) or slurm (one array job through submitit; pip install 'specroute[slurm]').")] = "local",
    partition: Annotated[Optional[str], typer.Option("--partition", help="SLURM partition (--launcher slurm).")] = None,
    gpus_per_run: Annotated[int, typer.Option("--gpus-per-run", min=0, help="GPUs of each SLURM task (--launcher slurm).")] = 1,
    time_limit: Annotated[str, typer.Option("--time", help="Time limit of each SLURM task: minutes or HH:MM:SS (--launcher slurm).")] = "4:00:00",
    account: Annotated[Optional[str], typer.Option("--account", help="SLURM account to charge (--launcher slurm).")] = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="With --launcher slurm: submit and return; `specroute report OUT` later.")] = False,
):
    """Run a study (backbone, every arm x seed) and write its report. Data parallel over K processes:
    ``torchrun --nproc_per_node=K -m specroute run SPEC ...``."""
    _passive_threads()
    from specroute.train import Interrupted, StudyOptions, run_study
    from specroute.train.launch import LAUNCHERS
    from specroute.train.sharing import parse_shard

    if resume and overwrite:
        fail("--resume and --overwrite exclude each other")
    if wandb not in (None, "off", "offline", "online"):
        fail(f"--wandb {wandb}: use offline, online or off")
    if launcher not in LAUNCHERS:
        fail(f"--launcher {launcher!r}: use local or slurm")
    if launcher != "local" and shard is not None:
        fail("--shard and --launcher slurm exclude each other: the array job already runs every run as its own task")
    resolved = load_study(spec, profile, set_ or [])
    options = StudyOptions(out=out, resume=resume, overwrite=overwrite, arms=list(arm or []),
                           seeds=list(seed or []), device=device, cache=cache_dir, yes=yes, workers=workers,
                           tensorboard=tensorboard, wandb=wandb,
                           shard=parse_shard(shard) if shard is not None else None, devices=devices)
    if launcher != "local":
        _submit(resolved, options, launcher, partition, gpus_per_run, time_limit, account, not no_wait)
        return
    confirm = (lambda q: typer.confirm(q, default=False)) if sys.stdin.isatty() else None
    try:
        with _sigterm_as_interrupt():
            result = run_study(resolved, options, console=console, confirm=confirm)
    except _Terminated:
        err_console.print(f"terminated; {_how_to_continue(resolved, options)}")
        raise typer.Exit(128 + signal.SIGTERM) from None
    except (Interrupted, KeyboardInterrupt):
        err_console.print(f"interrupted; {_how_to_continue(resolved, options)}")
        raise typer.Exit(130) from None
    from specroute.train.distributed import main_process

    if not main_process():  # under torchrun the main process reports
        return
    console.print(f"wrote {escape(str(result.out))}/report.md, summary.json, plots/")
    missing = result.summary.get("missing") or {}
    if missing:
        console.print("the report covers the runs finished in this folder; not there yet: "
                      + "; ".join(f"{escape(a)} seed{'s' if len(s) > 1 else ''} {', '.join(map(str, s))}"
                                  for a, s in missing.items())
                      + f" (run them, or `specroute report {escape(str(result.out))}` once other processes end)")
    _note_unreadable(result.summary)
    failed = result.failure_message()
    if failed:
        fail(failed, code=1)


def _submit(resolved: Any, options: Any, launcher: str, partition: str | None, gpus: int, time_limit: str,
            account: str | None, wait: bool) -> None:
    """``run --launcher slurm``: submit the array job (:func:`specroute.train.launch.submit_study`)."""
    from specroute.train.launch import SlurmOptions, parse_time, submit_study

    slurm = SlurmOptions(partition=partition, gpus_per_run=gpus, time_min=parse_time(time_limit), account=account,
                         wait=wait)
    ids, summary = submit_study(resolved, options, launcher, slurm, note=console.print)
    from specroute.train.study import default_out

    out = Path(options.out) if options.out else default_out(resolved)
    if summary is None:
        console.print(f"job {escape(ids[0].split('_')[0])}: when its tasks end, `specroute report "
                      f"{escape(str(out))}` writes the report of every finished run")
        return
    console.print(f"wrote {escape(str(out))}/report.md, summary.json, plots/ ({len(ids)} task(s))")
    _fail_on_failed_runs(summary, out)


def _fail_on_failed_runs(summary: dict, out: Path) -> None:
    from specroute.train.study import StudyResult

    failed = StudyResult(out, summary).failure_message()
    if failed:
        fail(failed, code=1)


@command
def report(
    out: Annotated[Path, typer.Argument(help="A study's output folder (the --out of `specroute run`).")],
):
    """Rewrite a study folder's report.md, summary.json and plots from the runs finished there; list the
    missing ones (e.g. after `--shard` processes or a SLURM array)."""
    from specroute.report.aggregate import rebuild_report

    summary = rebuild_report(out)
    missing = summary.get("missing") or {}
    done = sum(len(a["seeds"]) for a in summary["arms"].values())
    console.print(f"wrote {escape(str(out))}/report.md, summary.json, plots/ from {done} finished run(s)")
    if missing:
        console.print("[yellow]missing:[/] " + "; ".join(f"{escape(a)} seed{'s' if len(s) > 1 else ''} "
                                                         f"{', '.join(map(str, s))}" for a, s in missing.items()))
    _note_unreadable(summary)
    _fail_on_failed_runs(summary, out)


def _note_unreadable(summary: dict) -> None:
    """Name the runs a report left out because a file of theirs is damaged (its "Unreadable runs")."""
    reasons = [why for seeds in (summary.get("unreadable") or {}).values() for why in seeds.values()]
    if reasons:
        console.print("[yellow]left out (unreadable):[/] " + "; ".join(escape(r) for r in reasons), soft_wrap=True)


def _how_to_continue(resolved: Any, options: Any) -> str:
    from specroute.train.study import default_out

    out = Path(options.out) if options.out else default_out(resolved)
    if (out / "study.json").is_file():
        return "continue with the same command plus --resume"
    return "nothing was written yet; run the same command again"


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the study is, so that it stops as on Ctrl-C (workers ended, resumable)."""


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: Any) -> None:
        raise _Terminated()

    try:
        before = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave SIGTERM as it is
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


@command
def verify(
    paths: Annotated[Optional[list[Path]], typer.Argument(
        help="Specs (YAML) to verify; default: every specs/*.yaml. With --claims, a report folder or "
             "summary.json here is the study to judge.", show_default=False)] = None,
    profile: ProfileOpt = None,
    claims: Annotated[bool, typer.Option("--claims", help="Judge the paper's claims (C1-C12) against the "
                                         "given report; without one, list them and judge C10/C11.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    only: Annotated[Optional[list[str]], typer.Option("--only", help="Only this check id (repeatable).")] = None,
    examples: Annotated[int, typer.Option("--examples", min=1, help="Hypothesis examples per property.")] = 8,
    regression: Annotated[Optional[Path], typer.Option(
        "--regression", help="Compare against a committed claims reference "
                             "(reports/reference/claims_reference.json).")] = None,
    update_reference: Annotated[bool, typer.Option("--update-reference", help="With --regression: rewrite "
                                                   "the reference from the current values instead.")] = False,
):
    """Run the verifiers (budget, causality, gradients, oracle, FLOPs, JEPA) on every arm of the specs;
    exit 1 on any failure."""
    _passive_threads()  # as in `run`: no spinning threads on a busy CPU
    from specroute.report.console import print_verify
    from specroute.verify import Context, run_verification

    report, specs = _split_paths(list(paths or []), claims, only)
    ctx = Context(examples=examples)
    if regression is not None:
        if report is not None:
            fail(f"--regression recomputes the committed micro study's verdicts; it judges no report ({report}): "
                 "judge a report with --claims alone")
        _verify_regression(regression, specs, ctx, json_out, update_reference)
        return
    if update_reference:
        fail("--update-reference needs --regression FILE")
    if claims:
        _verify_claims(report, specs, json_out)
        return
    reports = run_verification(specs, profile, ctx, only, progress=_progress(json_out))
    failed = [r for r in reports if r.status == "fail"]
    if json_out:
        typer.echo(json_text({"profile": profile, "specs": [str(p) for p in specs], "examples": examples,
                               "results": [r.as_dict() for r in reports], "failed": len(failed)}, indent=2))
    else:
        print_verify(console, reports, profile)
    if failed:
        raise typer.Exit(1)


def _split_paths(paths: list[Path], claims: bool, only: list[str] | None) -> tuple[Path | None, list[Path]]:
    """``verify``'s arguments -> (the report to judge or None, the specs); exits 2 on a bad combination."""
    from specroute.verify.runner import default_specs, verifier_ids

    reports_in = [p for p in paths if p.is_dir() or p.name.endswith(".json")
                  or (claims and p.suffix not in (".yaml", ".yml"))]  # with --claims: a report, even if missing
    specs = [p for p in paths if p not in reports_in] or default_specs()
    if reports_in and not claims:
        fail(f"{reports_in[0]} is a report, not a spec; add --claims to judge a report")
    if len(reports_in) > 1:
        fail("give at most one report to --claims")
    for p in specs:
        if not p.is_file():
            fail(f"spec {p} not found")
    unknown = sorted(set(only or []) - set(verifier_ids()))
    if unknown:
        fail(f"unknown check(s) {unknown}; known: {', '.join(verifier_ids())}")
    return (reports_in[0] if reports_in else None), specs


def _verify_claims(report: Path | None, specs: list[Path], json_out: bool) -> None:
    from specroute.claims import CLAIMS, bench_timing, evaluate_claims
    from specroute.report.console import print_claims

    summary, specs = _read_summary(report, specs)
    proxies, mech = _claim_inputs(specs)
    verdicts = evaluate_claims(summary, mechanism=mech, paper_proxies=proxies, bench=bench_timing(summary))
    if json_out:
        typer.echo(json_text({"report": str(report) if report else None, "claims": [c.as_dict() for c in CLAIMS],
                               "verdicts": [v.as_dict() for v in verdicts]}, indent=2))
    else:
        print_claims(console, verdicts, report)


def _read_summary(report: Path | None, specs: list[Path]) -> tuple[dict, list[Path]]:
    """The study report's summary (empty without one) and the specs to judge it by (its own, if shipped)."""
    from specroute.claims import load_summary

    if report is None:
        return {"arms": {}, "profile": None}, specs
    hint = "give the folder `specroute run` wrote, or its summary.json"
    if not report.exists():
        fail(f"--claims: {report} not found; {hint}")
    if report.is_dir() and not (report / "summary.json").is_file():
        fail(f"--claims: {report} holds no summary.json, so it is not a study report; {hint}")
    try:
        summary = load_summary(report)
    except UnicodeDecodeError:
        fail(f"--claims: {report} is not a study report's summary.json (not UTF-8 text); {hint}")
    except ValueError as e:
        fail(f"--claims: {report} is not a study report's summary.json (not JSON: {e}); {hint}")
    except OSError as e:
        fail(f"--claims: cannot read {report} ({e.strerror or e}); {hint}")
    if not (isinstance(summary, dict) and isinstance(summary.get("arms"), dict) and "study" in summary):
        fail(f"{report} is not a study report's summary.json (no 'study' and 'arms'); {hint}")
    own = Path("specs") / f"{summary.get('study')}.yaml"
    return summary, ([own] if own.is_file() else specs)


def _claim_inputs(specs: list[Path]) -> tuple[Any, Any]:
    """C11's paper proxies and C10's label measurement, each from the first spec that gives it."""
    from specroute.claims import mechanism_input, paper_proxies

    proxies = mech = None
    for path in specs:
        load_study(path, None, [])
        proxies = proxies or paper_proxies(path)
        mech = mech or mechanism_input(path)
    return proxies, mech


def _verify_regression(reference: Path, specs: list[Path], ctx: Any, json_out: bool, update: bool = False) -> None:
    from specroute.report.console import print_regression
    from specroute.verify.regression import (MICRO_SPEC, MICRO_SUMMARY, collect, compare, fragile, refresh,
                                             write_reference)

    try:
        ref = json.loads(reference.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if not update:
            fail(f"no reference at {reference}; create one with --update-reference")
        ref = {"micro": {"summary": MICRO_SUMMARY, "spec": MICRO_SPEC}}
    except (OSError, ValueError) as e:
        fail(f"cannot read the reference {reference}: {e}")
    micro = ref.get("micro") or {}
    micro_spec, micro_summary = Path(micro.get("spec") or MICRO_SPEC), Path(micro.get("summary") or MICRO_SUMMARY)
    if update:
        with tempfile.TemporaryDirectory(prefix="specroute-spread-") as work:
            current = refresh(specs, ctx, micro_spec, micro_summary, Path(work),
                              on_variant=lambda v: console.print(f"micro study under CPU variant {v.name} ..."))
        write_reference(reference, current)
        console.print(f"wrote {reference} and {micro_summary}; fragile verdicts: "
                      f"{', '.join(current['micro']['fragile']) or 'none'}")
        return
    current = collect(specs, micro_summary, micro_spec, ctx, progress=_progress(json_out))
    problems, notes = compare(ref, current), fragile(ref, current)
    if json_out:
        typer.echo(json_text({"reference": str(reference), "problems": problems, "fragile": notes}, indent=2))
    else:
        print_regression(console, problems, notes, reference)
    if problems:
        raise typer.Exit(1)


@command
def flops(spec: SpecArg, profile: ProfileOpt = None,
          json_out: Annotated[bool, typer.Option("--json", help="Print the accounting as JSON.")] = False):
    """Parameters, training FLOPs per step by component, the proxy under every reading, and the paper's
    1.53x / 1.07x beside ours."""
    from specroute.flops.accounting import flops_report
    from specroute.report.console import print_flops

    rep = flops_report(spec, profile)
    if json_out:
        typer.echo(json_text(rep, indent=2))
    else:
        print_flops(console, rep)


@command
def generate(
    run_dir: Annotated[Path, typer.Argument(help="A finished run's folder: <out>/runs/<arm>/seed<k>.")],
    prompt: Annotated[str, typer.Option("--prompt", help="Text to continue (the run's tokenizer).")],
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, max=1 << 20, help="Tokens to add.")] = 64,
    temperature: Annotated[float, typer.Option("--temperature", help="0: greedy; > 0: sampling.")] = 0.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sampling (temperature > 0).")] = 0,
    cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", help="Cache root holding the study's backbone.")] = None,
):
    """Continue a prompt with a trained run's routed model (KV cache; causal routing: a threshold gate's
    own rule, a top-k gate's calibrated thresholds)."""
    _passive_threads()
    from specroute.train.saved import check_temperature, generate_text, load_run

    check_temperature(temperature)
    saved = load_run(run_dir, cache_dir)
    typer.echo(generate_text(saved, prompt, max_new_tokens, temperature, seed))


def main() -> None:
    """The ``specroute`` command (also ``python -m specroute``): :data:`app`, then ``gc.freeze()`` as it
    exits, so that the interpreter's last garbage collection skips every object still alive (torch's and
    its compiler's; about 2 s on a CPU) that the process's end frees anyway. Tests call :data:`app`."""
    try:
        app(prog_name="specroute")
    finally:
        gc.freeze()


if __name__ == "__main__":  # pragma: no cover
    main()
