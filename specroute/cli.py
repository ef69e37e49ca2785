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
def validate(spec: SpecArg, profile: ProfileOpt = None, set_: SetOpt = None,
             json_out: Annotated[bool, typer.Option("--json", help="Print the resolved spec as JSON.")] = False):
    """Resolve and validate a spec; print the resolved spec and its parameter count."""
    from specroute.model.cost import count_params
    from specroute.spec.loader import dump_run

    resolved = load_or_exit(spec, profile, set_)
    study = resolved.study
    arms = {arm: resolved.arm_spec(arm) for arm in study.arms}
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
    console.print(f"data: {first.data.kind} (tokenizer {first.data.tokenizer});  seeds: {study.seeds}")
    t = first.train
    console.print(f"train: {t.steps} steps x {t.batch_size} x {t.seq_len} tokens, trainable {t.trainable}; "
                  f"backbone: {first.backbone.checkpoint or f'pretrain {first.backbone.train.steps} steps'}")
    table = Table(title="arms")
    for col in ("arm", "gate", "util", "rank", "jepa", "budget", "labeling", "routed model params",
                "controller params"):
        table.add_column(col, justify="right" if "params" in col else "left")
    for arm, s in arms.items():
        pc = count_params(s)
        table.add_row(arm, s.gate.kind, f"{s.loss.util:g}", f"{s.loss.rank:g}", f"{s.loss.jepa:g}",
                      f"{s.loss.budget:g}", s.loss.oracle.labeling, f"{pc.routed_model:,} ({_millions(pc.routed_model)})",
                      f"{pc.controller:,}")
    console.print(table)
    console.print(
        "parameter count: routed model (backbone + cheap FFNs) = "
        f"[bold]{_millions(count_params(first).routed_model)}[/]; the gate is the controller, counted apart."
    )
    console.print("[green]valid[/]")


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f}M"


@app.command()
def schema():
    """Print the JSON Schema of the spec language (for editors)."""
    from specroute.spec.models import StudySpec

    typer.echo(json.dumps(StudySpec.model_json_schema(), indent=2))


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
