"""What the CLI prints: the resolved-spec summary, the FLOPs tables, the verify table, the claims table.

Each function takes the ``rich`` console to print on and the data a library function returned; none
computes anything the library has not (``specroute bench`` has its tables in :mod:`specroute.bench.report`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from specroute.claims.paper import PROXY
from specroute.flops.analytic import count_params
from specroute.text import plural


#: How the parameter groups of ``train.trainable`` are written in what the CLI prints.
GROUP_NAMES = {"backbone": "backbone", "cheap_ffn": "cheap FFN", "gate": "gate"}


def millions(n: int) -> str:
    """A count in millions with two decimals, larger ones in billions or powers of ten: ``157_520_000`` ->
    ``"157.52M"``, ``2_500_000_000`` -> ``"2.50B"``, ``4.8e19`` -> ``"4.80e+19"``."""
    if n < 1e9:
        return f"{n / 1e6:.2f}M"
    if n < 1e12:
        return f"{n / 1e9:.2f}B"
    return f"{n:.2e}"


def gate_summary(gate: Any) -> str:
    """One-line description of a gate spec (G1 or G3) for the arms table."""
    controls = [f"score init std {gate.score_init_std:g}"] if gate.score_init_std is not None else []
    if gate.kind == "G1":
        return f"G1 ({', '.join([f'hidden {gate.hidden}', *controls])})"
    controls += [f"score {gate.score_norm}"] if gate.score_norm != "none" else []
    controls += [f"target {gate.target}"] if gate.target != "h_after" else []
    return f"G3 ({', '.join([f'latent {gate.latent_dim}', f'predictor {gate.predictor_hidden}', *controls])})"


# --------------------------------------------------------------------------------------------------
# specroute validate


def print_spec(console: Console, study: Any, arms: dict[str, Any], memory: Any = None) -> None:
    """The resolved spec: the first arm's model, routing, oracle, data and training, then one row per arm, and
    ``memory`` (a :class:`specroute.train.memory.Judgement`, if given): the estimate, a warning if it would not
    fit this machine. Text from the spec is printed as text, never as markup."""
    first = next(iter(arms.values()))
    m, r = first.model, first.routing
    console.print(f"[bold]{escape(study.name)}[/] — {escape(study.description)}  "
                  f"(profile: [cyan]{escape(study.profile)}[/])")
    console.print(
        f"model: {m.n_layers} layers x d_model {m.d_model}, {m.n_heads} heads, context {m.context_length}, "
        f"vocab {m.vocab_size}, FFN {m.ffn_hidden}, tied={m.tie_embeddings}"
        + (f"; {', '.join(m.architecture_changes)}" if m.architecture_changes else "")
    )
    console.print(
        f"routing: controlled layers {r.controlled_layers}, full_fraction {r.budget.full_fraction} "
        f"({r.budget.enforcement}{'' if r.budget.causal else ', not causal'}), cheap FFN {r.cheap_ffn_hidden}, "
        f"execution {r.execution}, estimator {r.estimator}"
    )
    o = first.loss.oracle
    cf = f"per_token ({o.tokens_per_sequence} tokens/sequence)" if o.counterfactual == "per_token" else o.counterfactual
    layers = plural(o.layers_per_step, "controlled layer") if o.layers_per_step else "all controlled layers"
    console.print(
        f"oracle (util/rank): {o.labeling}, {cf}, {layers} per step, "
        f"util {o.util_target} {o.util_loss}, rank margin {o.rank_margin:g}, "
        f"{o.rank_pairs_per_token or 'all'} pairs/token"
    )
    console.print(f"data: {first.data.kind} (tokenizer {first.data.tokenizer});  seeds: {study.seeds}")
    t = first.train
    console.print(f"train: {t.steps} steps x {t.batch_size} x {t.seq_len} tokens, trainable {t.trainable}; "
                  f"backbone: {first.backbone.checkpoint or f'pretrain {first.backbone.train.steps} steps'}")
    table = Table(title="arms")
    for col in ("arm", "gate", "full fraction", "λ util", "λ rank", "λ jepa", "λ budget", "labeling",
                "routed model params", "gate params", "trained params"):
        table.add_column(col, justify="right" if "params" in col else "left", no_wrap=col == "arm" or "params" in col)
    for name, s in arms.items():
        pc = count_params(s)
        table.add_row(Text(name), gate_summary(s.gate), f"{s.routing.budget.full_fraction:g}", f"{s.loss.util:g}", f"{s.loss.rank:g}", f"{s.loss.jepa:g}",
                      f"{s.loss.budget:g}", s.loss.oracle.labeling, f"{pc.routed_model:,} ({millions(pc.routed_model)})",
                      f"{pc.gate:,}", f"{pc.trained:,}")
    console.print(table)
    pc = count_params(first)
    console.print(
        f"parameter count: routed model (backbone + cheap FFNs) = [bold]{millions(pc.routed_model)}[/]; gate params "
        "(the controller) counted apart" + (f", G3's fixed target head {pc.target_head:,}" if pc.target_head else "")
        + "; trained params = "
        + " or ".join(dict.fromkeys(" + ".join(GROUP_NAMES[g] for g in s.train.trainable) for s in arms.values()))
        + " (train.trainable, per arm)."
    )
    if memory is not None:
        if memory.status == "fits":
            console.print(f"memory: {escape(memory.message)}", highlight=False)
        else:
            console.print(f"[yellow]warning:[/] {escape(memory.message)} (`specroute run` here refuses it "
                          "without --yes)", highlight=False)
    console.print("[green]valid[/]")


# --------------------------------------------------------------------------------------------------
# specroute flops


def print_flops(console: Console, rep: dict[str, Any]) -> None:
    """The FLOPs report of :func:`specroute.flops.accounting.flops_report`: parameters, GFLOPs per step by
    component for each execution, the proxy under every denominator, and the paper comparison."""
    from specroute.flops.accounting import COMPONENTS, EXECUTIONS

    st = rep["step"]
    console.print(f"[bold]{rep['study']}[/] (profile: [cyan]{rep['profile']}[/]): one step = {st['batch_size']} x "
                  f"{st['seq_len']} tokens; controlled layers {st['controlled_layers']} of {st['n_layers']}, budget "
                  f"{st['full_fraction']}; oracle labels {st['labelled_layers_per_step'] or 'all'} layers/step")
    params = Table(title="parameters")
    for col in ("arm", "routed model", "backbone", "cheap FFNs", "gate", "target head", "trained"):
        params.add_column(col, justify="left" if col == "arm" else "right")
    for arm, a in rep["arms"].items():
        p = a["params"]
        params.add_row(arm, *(millions(p[k]) for k in ("routed_model", "backbone", "cheap_ffn", "gate",
                                                         "target_head", "trained")))
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
        paper = f"{PROXY['utilrank' if a['uses_oracle'] else 'lm']}x"
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


# --------------------------------------------------------------------------------------------------
# specroute verify


_STATUS_STYLE = {"pass": "[green]pass[/]", "fail": "[bold red]FAIL[/]", "skip": "[dim]skip[/]"}


def print_verify(console: Console, reports: list[Any], profile: str | None) -> None:
    """The verifier results (check-major, specs in the given order), the counts, then each failure's detail."""
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
                  f"({plural(len({r.check for r in reports}), 'check')} x "
                  f"{plural(len({r.spec for r in reports}), 'spec')})")
    for r in reports:
        if r.status == "fail":
            console.print(Text.assemble(("FAIL", "bold red"), f" {r.check} on {r.spec}: {r.detail}"), soft_wrap=True)


def print_claims(console: Console, verdicts: list[Any], report: Path | None) -> None:
    """One row per :class:`specroute.claims.Verdict`: claim and statement, verdict and why, n, the effect with
    its 95% interval, the numbers and the criterion (C10/C11 only without a report)."""
    title = f"claims (arXiv 2604.17228) against {report}" if report else "claims (no report: C10 and C11 only)"
    table = Table(title=title)
    for col in ("claim", "verdict", "n", "effect [95% interval]", "numbers and criterion"):
        table.add_column(col, overflow="fold")
    style = {"reproduced": "green", "not reproduced": "red", "inconclusive": "yellow",
             "supported: necessary condition": "cyan"}
    for v in verdicts:
        why = "" if v.verdict == "not checkable" else f"\n[dim]{escape(v.reason)}[/]"
        verdict = f"[{style.get(v.verdict, 'dim')}]{escape(v.label)}[/]{why}"
        table.add_row(f"{v.id}\n[dim]{escape(v.statement)}[/]", verdict, "–" if v.n is None else str(v.n), v.effect_text,
                      f"{escape(v.numbers)}\n[dim]criterion: {escape(v.criterion)}[/]")
    console.print(table)


def print_regression(console: Console, problems: list[str], fragile: list[str], reference: Path) -> None:
    """Each claim-regression problem against ``reference``, the fragile verdicts (reported, not failed),
    then the count of problems."""
    for p in problems:
        console.print(f"[bold red]regression[/] {p}", markup=True, highlight=False)
    for p in fragile:
        console.print(f"[yellow]fragile[/] {p}", markup=True, highlight=False)
    console.print(f"claim regression: {plural(len(problems), 'problem')} against {reference}")
