"""The ``specroute`` command line: thin commands over the library (DESIGN.md, "CLI contract").

User errors print one clear message and exit 2; tracebacks are for bugs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

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
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
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
    console.print(f"wrote {out}/summary.json, report.md, throughput_vs_budget.png")


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
        result = run_study(resolved, options, console=console, confirm=confirm)
    except SpecError as e:
        fail("invalid spec\n" + e.render())
    except UserError as e:
        fail(str(e))
    except (Interrupted, KeyboardInterrupt):
        err_console.print("interrupted; continue with the same command plus --resume")
        raise typer.Exit(130) from None
    console.print(f"wrote {result.out}/report.md, summary.json, plots/")


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
