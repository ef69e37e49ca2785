"""The ``specroute`` command line: thin commands over the library (docs/DESIGN.md, "CLI contract").

User errors print one clear message and exit 2; tracebacks are for bugs.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from specroute.spec import SpecError, load_study

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
# Wide enough for the tables when output is piped (rich defaults to 80 columns there).
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

SpecArg = Annotated[Path, typer.Argument(help="A study spec (YAML).")]
ProfileOpt = Annotated[Optional[str], typer.Option("--profile", "-p", help="Profile under `profiles:`.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override: key.path=value (YAML value).")]
ArmOpt = Annotated[Optional[list[str]], typer.Option("--arm", help="Only this arm (repeatable); default: all.")]


def fail(message: str, code: int = 2) -> None:
    """Print a user error and exit with ``code`` (2 for bad input)."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code)


def load_or_exit(spec: Path, profile: str | None, sets: list[str] | None):
    try:
        return load_study(spec, profile, sets or [])
    except SpecError as e:
        fail("invalid spec\n" + e.render())


@app.command()
def validate(spec: SpecArg, profile: ProfileOpt = None, set_: SetOpt = None, arm: ArmOpt = None,
             json_out: Annotated[bool, typer.Option("--json", help="Print the resolved spec as JSON.")] = False):
    """Resolve and validate a spec; print the resolved spec and its parameter count."""
    from specroute.model.cost import count_params
    from specroute.spec.loader import dump_run

    resolved = load_or_exit(spec, profile, set_)
    study = resolved.study
    try:
        arms = {a: resolved.arm_spec(a) for a in (arm or study.arms)}
    except SpecError as e:
        fail("invalid spec\n" + e.render())
    if json_out:
        payload = {
            "study": study.name, "profile": study.profile, "seeds": study.seeds,
            "arms": {a: {"spec": dump_run(s), "params": count_params(s).as_dict()} for a, s in arms.items()},
        }
        typer.echo(json.dumps(payload, indent=2))
        return
    first = next(iter(arms.values()))
    m, r = first.model, first.routing
    console.print(f"[bold]{study.name}[/] — {study.description}  (profile: [cyan]{study.profile}[/])")
    console.print(
        f"model: {m.n_layers} layers x d_model {m.d_model}, {m.n_heads} heads, context {m.context_length}, "
        f"vocab {m.vocab_size}, FFN {m.ffn_hidden}, tied={m.tie_embeddings}"
    )
    console.print(
        f"routing: controlled layers {r.controlled_layers}, full_fraction {r.budget.full_fraction} "
        f"({r.budget.enforcement}{'' if r.budget.causal else ', not causal'}), cheap FFN {r.cheap_ffn_hidden}, "
        f"execution {r.execution}, estimator {r.estimator}"
    )
    o = first.loss.oracle
    console.print(
        f"oracle (util/rank): {o.labeling}, {o.layers_per_step or 'all'} controlled layer(s) per step, "
        f"util {o.util_target} {o.util_loss}, rank margin {o.rank_margin:g}, "
        f"{o.rank_pairs_per_token or 'all'} pairs/token"
    )
    console.print(f"data: {first.data.kind} (tokenizer {first.data.tokenizer});  seeds: {study.seeds}")
    t = first.train
    console.print(f"train: {t.steps} steps x {t.batch_size} x {t.seq_len} tokens, trainable {t.trainable}; "
                  f"backbone: {first.backbone.checkpoint or f'pretrain {first.backbone.train.steps} steps'}")
    table = Table(title="arms")
    for col in ("arm", "gate", "util", "rank", "jepa", "budget", "labeling", "routed model params",
                "controller params"):
        table.add_column(col, justify="right" if "params" in col else "left")
    for name, s in arms.items():
        pc = count_params(s)
        table.add_row(name, _gate_summary(s.gate), f"{s.loss.util:g}", f"{s.loss.rank:g}", f"{s.loss.jepa:g}",
                      f"{s.loss.budget:g}", s.loss.oracle.labeling, f"{pc.routed_model:,} ({_millions(pc.routed_model)})",
                      f"{pc.controller:,}")
    console.print(table)
    console.print(
        "parameter count: routed model (backbone + cheap FFNs) = "
        f"[bold]{_millions(count_params(first).routed_model)}[/]; the gate is the controller, counted apart."
    )
    console.print("[green]valid[/]")


def _gate_summary(gate) -> str:
    if gate.kind == "G1":
        return f"G1 (hidden {gate.hidden})"
    return f"G3 (latent {gate.latent_dim}, predictor {gate.predictor_hidden})"


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f}M"


@app.command()
def schema():
    """Print the JSON Schema of the spec language (for editors)."""
    from specroute.spec.models import SpecFile

    typer.echo(json.dumps(SpecFile.model_json_schema(), indent=2))


@app.command()
def bench(
    spec: SpecArg,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON instead of tables.")] = False,
    quick: Annotated[bool, typer.Option("--quick", help="Tiny sizes, 1 warm-up, 2 rounds: seconds.")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", help="Output folder; default reports/bench/<study>_<profile>[_quick].")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing result in the output folder.")] = False,
    repeats: Annotated[Optional[int], typer.Option("--repeats", min=1, help="Timed rounds (default 5; quick 2).")] = None,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda (CUDA runs in bf16 autocast).")] = "auto",
):
    """Throughput and peak memory of dense / masked / gather training beside transformers' GPT-2."""
    from specroute.bench import BenchOptions, check_out_dir, default_out_dir, rich_tables, run_bench, write_results
    from specroute.store import UserError

    resolved = load_or_exit(spec, profile, set_)
    out = out or default_out_dir(resolved.study.name, resolved.study.profile, quick)
    quiet = json_out or not sys.stderr.isatty()
    try:
        check_out_dir(out, overwrite)
        summary = run_bench(resolved, BenchOptions(repeats=repeats, quick=quick, device=device),
                            progress=None if quiet else lambda msg: err_console.print(f"[dim]{msg}[/]"))
        write_results(summary, out, overwrite)
    except UserError as e:
        fail(str(e))
    if json_out:
        typer.echo(json.dumps(summary, indent=2))
        return
    for table in rich_tables(summary):
        console.print(table)
    for warning in summary["warnings"]:
        console.print(f"[yellow]warning:[/] {warning}")
    console.print(f"wrote {escape(str(out))}/summary.json, report.md, throughput_vs_budget.png")


@app.command()
def run(
    spec: SpecArg,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Report folder; default reports/<study>/<profile>.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted study in --out.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a previous study's results in --out.")] = False,
    arm: ArmOpt = None,
    seed: Annotated[Optional[list[int]], typer.Option("--seed", help="Only this seed (repeatable); default: all.")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before a paper-profile run without a GPU.")] = False,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda (CUDA runs in bf16 autocast).")] = "auto",
    cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", help="Cache root (default $SPECROUTE_CACHE or ~/.cache/specroute).")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", min=1, help="Controller runs at once (default: one per CPU core for small models on CPU, else 1).")] = None,
):
    """Run a study (backbone, every arm x seed) and write its report."""
    import os

    # Idle OpenMP threads sleep instead of spinning: on a busy CPU, spinning threads slow a run manyfold.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from specroute.store import UserError
    from specroute.train import Interrupted, StudyOptions, run_study

    if resume and overwrite:
        fail("--resume and --overwrite exclude each other")
    resolved = load_or_exit(spec, profile, set_)
    options = StudyOptions(out=out, resume=resume, overwrite=overwrite, arms=list(arm or []),
                           seeds=list(seed or []), device=device, cache=cache_dir, yes=yes, workers=workers)
    confirm = (lambda q: typer.confirm(q, default=False)) if sys.stdin.isatty() else None
    try:
        with _sigterm_as_interrupt():
            result = run_study(resolved, options, console=console, confirm=confirm)
    except SpecError as e:
        fail("invalid spec\n" + e.render())
    except UserError as e:
        fail(str(e))
    except _Terminated:
        err_console.print("terminated; continue with the same command plus --resume")
        raise typer.Exit(128 + signal.SIGTERM) from None
    except (Interrupted, KeyboardInterrupt):
        err_console.print("interrupted; continue with the same command plus --resume")
        raise typer.Exit(130) from None
    console.print(f"wrote {escape(str(result.out))}/report.md, summary.json, plots/")


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


@app.command()
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
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as in `run`: no spinning threads on a busy CPU
    from specroute.verify import Context, run_verification
    from specroute.verify.runner import default_specs, verifier_ids

    paths = list(paths or [])
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
    ctx = Context(examples=examples)
    if regression is not None:
        _verify_regression(regression, specs, ctx, json_out, update_reference)
        return
    if update_reference:
        fail("--update-reference needs --regression FILE")
    if claims:
        _verify_claims(reports_in[0] if reports_in else None, specs, json_out)
        return
    quiet = json_out or not sys.stderr.isatty()
    try:
        reports = run_verification(specs, profile, ctx, only,
                                   progress=None if quiet else lambda m: err_console.print(f"[dim]{m}[/]"))
    except SpecError as e:
        fail("invalid spec\n" + e.render())
    failed = [r for r in reports if r.status == "fail"]
    if json_out:
        typer.echo(json.dumps({"profile": profile, "specs": [str(p) for p in specs], "examples": examples,
                               "results": [r.as_dict() for r in reports], "failed": len(failed)}, indent=2))
    else:
        _verify_table(reports, profile)
    if failed:
        raise typer.Exit(1)


_STATUS_STYLE = {"pass": "[green]pass[/]", "fail": "[bold red]FAIL[/]", "skip": "[dim]skip[/]"}


def _verify_table(reports, profile: str | None) -> None:
    table = Table(title=f"specroute verify (profile: {profile or 'each spec default'})", show_lines=False)
    for col in ("check", "spec", "status", "measured", "expected"):
        table.add_column(col, overflow="fold")
    order = {c: i for i, c in enumerate(dict.fromkeys(r.check for r in reports))}
    reports = sorted(reports, key=lambda r: order[r.check])  # check-major, specs in the given order
    last = None
    for r in reports:
        if last is not None and r.check != last:
            table.add_section()
        table.add_row(r.check if r.check != last else "", r.spec, _STATUS_STYLE[r.status],
                      r.measured if r.status != "skip" else r.detail, r.expected)
        last = r.check
    console.print(table)
    counts = {s: sum(r.status == s for r in reports) for s in ("pass", "fail", "skip")}
    console.print(f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped "
                  f"({len({r.check for r in reports})} checks x {len({r.spec for r in reports})} specs)")
    for r in reports:
        if r.status == "fail":
            console.print(Text.assemble(("FAIL", "bold red"), f" {r.check} on {r.spec}: {r.detail}"), soft_wrap=True)


def _verify_claims(report: Path | None, specs: list[Path], json_out: bool) -> None:
    from specroute.claims import CLAIMS, evaluate_claims, load_summary, mechanism_input, paper_proxies

    summary: dict = {"arms": {}, "profile": None}
    if report is not None:
        try:
            summary = load_summary(report)
        except (OSError, ValueError) as e:
            fail(f"cannot read the report {report}: {e}")
        if not (isinstance(summary, dict) and isinstance(summary.get("arms"), dict) and "study" in summary):
            fail(f"{report} is not a study report's summary.json (no 'study' and 'arms'); "
                 "give the folder `specroute run` wrote, or its summary.json")
        own = Path("specs") / f"{summary.get('study')}.yaml"
        specs = [own] if own.is_file() else specs
    proxies = mech = None
    for path in specs:
        load_or_exit(path, None, None)
        proxies = proxies or paper_proxies(path)
        mech = mech or mechanism_input(path)
    verdicts = evaluate_claims(summary, mechanism=mech, paper_proxies=proxies)
    if json_out:
        typer.echo(json.dumps({"report": str(report) if report else None, "claims": [c.as_dict() for c in CLAIMS],
                               "verdicts": [v.as_dict() for v in verdicts]}, indent=2))
        return
    title = f"claims (arXiv 2604.17228) against {report}" if report else "claims (no report: C10 and C11 only)"
    table = Table(title=title)
    for col in ("claim", "verdict", "n", "effect [95% interval]", "numbers and criterion"):
        table.add_column(col, overflow="fold")
    style = {"reproduced": "green", "not reproduced": "red", "inconclusive": "yellow",
             "supported: necessary condition": "cyan"}
    for v in verdicts:
        color = style.get(v.verdict, "dim")
        why = "" if v.verdict == "not checkable" else f"\n[dim]{v.reason}[/]"
        table.add_row(f"{v.id}\n[dim]{v.statement}[/]", f"[{color}]{v.label}[/]{why}", "–" if v.n is None else str(v.n),
                      v.effect_text, f"{v.numbers}\n[dim]criterion: {v.criterion}[/]")
    console.print(table)


def _verify_regression(reference: Path, specs: list[Path], ctx, json_out: bool, update: bool = False) -> None:
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
    current = collect(specs, micro_summary, micro_spec, ctx)
    problems, notes = compare(ref, current), fragile(ref, current)
    if json_out:
        typer.echo(json.dumps({"reference": str(reference), "problems": problems, "fragile": notes}, indent=2))
    else:
        for p in problems:
            console.print(f"[bold red]regression[/] {p}", markup=True, highlight=False)
        for p in notes:
            console.print(f"[yellow]fragile[/] {p}", markup=True, highlight=False)
        console.print(f"claim regression: {len(problems)} problem(s) against {reference}")
    if problems:
        raise typer.Exit(1)


@app.command()
def flops(spec: SpecArg, profile: ProfileOpt = None,
          json_out: Annotated[bool, typer.Option("--json", help="Print the accounting as JSON.")] = False):
    """Parameters, training FLOPs per step by component, the proxy under every reading, and the paper's
    1.53x / 1.07x beside ours."""
    from specroute.accounting import COMPONENTS, EXECUTIONS, flops_report

    try:
        rep = flops_report(spec, profile)
    except SpecError as e:
        fail("invalid spec\n" + e.render())
    if json_out:
        typer.echo(json.dumps(rep, indent=2))
        return
    st = rep["step"]
    console.print(f"[bold]{rep['study']}[/] (profile: [cyan]{rep['profile']}[/]): one step = {st['batch_size']} x "
                  f"{st['seq_len']} tokens; controlled layers {st['controlled_layers']} of {st['n_layers']}, budget "
                  f"{st['full_fraction']}; oracle labels {st['labelled_layers_per_step'] or 'all'} layer(s)/step")
    params = Table(title="parameters")
    for col in ("arm", "routed model", "backbone", "cheap FFNs", "gate", "target head", "controller (trained)"):
        params.add_column(col, justify="left" if col == "arm" else "right")
    for arm, a in rep["arms"].items():
        p = a["params"]
        params.add_row(arm, *(_millions(p[k]) for k in ("routed_model", "backbone", "cheap_ffn", "gate",
                                                          "target_head", "controller")))
    console.print(params)
    for execution in EXECUTIONS:
        t = Table(title=f"training GFLOPs per step, {execution} execution (FLOPs = 2 x MACs)")
        t.add_column("arm")
        for c in (*COMPONENTS, "total"):
            t.add_column(c.replace("_", " "), justify="right")
        for arm, a in rep["arms"].items():
            f = a["flops"][execution]
            t.add_row(arm, *(f"{f[c] / 1e9:,.1f}" for c in (*COMPONENTS, "total")))
        dense = rep["arms"][next(iter(rep["arms"]))]["dense_flops"]
        t.add_row("[dim]full-only: forward / controller-only / full training[/]", *([""] * len(COMPONENTS)),
                  " / ".join(f"{dense[d] / 1e9:,.1f}" for d in ("forward_only", "controller_only", "full_training")))
        console.print(t)
    proxy = Table(title="FLOPs proxy = step / full-only step (denominator x execution)")
    proxy.add_column("arm")
    for execution in EXECUTIONS:
        for d in ("forward_only", "controller_only", "full_training"):
            proxy.add_column(f"{d}\n{execution}", justify="right")
    proxy.add_column("paper", justify="right")
    for arm, a in rep["arms"].items():
        paper = "1.53x" if a["uses_oracle"] else "1.07x"
        proxy.add_row(arm, *(f"{a['proxy'][e][d]:.3f}x" for e in EXECUTIONS
                             for d in ("forward_only", "controller_only", "full_training")), paper)
    console.print(proxy)
    if rep.get("paper"):
        ours = rep["paper"]["ours"]
        shown = ", ".join(f"{'util/rank' if k == 'utilrank' else 'no util/rank'} {v:.2f}x (paper "
                          f"{rep['paper']['paper'][k]:.2f}x)" for k, v in ours.items() if v is not None)
        console.print(f"[bold]paper comparison[/] ({rep['paper']['reading']}): {shown}")
        for line in rep["paper"]["explanation"]:
            console.print(f"  - {line}", soft_wrap=True)


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
