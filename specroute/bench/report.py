"""The benchmark's files: ``summary.json``, ``report.md`` (tables and text) and ``throughput_vs_budget.png``.

The figures and targets themselves come from :mod:`specroute.bench.figures`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from specroute import store
from specroute.bench.figures import fmt_load, fmt_num, fmt_pct, fmt_ratio, fmt_share, fmt_share_iv
from specroute.claims.paper import WALL_HOURS
from specroute.text import md_table, plural
from specroute.store import (
    atomic_write_json,
    atomic_write_text,
    replace_dir,
    temp_dir_beside,
)

PLOT = "throughput_vs_budget.png"


# --------------------------------------------------------------------------------------------------
# formatting


def case_rows(summary: dict[str, Any]) -> list[list[str]]:
    rows = []
    for c in summary["cases"]:
        if c["kind"] == "recipe":
            continue
        ok = c["status"] == "ok"
        rows.append([
            c["name"], fmt_num(c["tokens_per_s"]) if ok else c["status"],
            fmt_num(c["median_s"] and c["median_s"] * 1e3, ",.1f"), fmt_num(c["spread"], ".0%"),
            fmt_num(c["peak_mb"], ",.1f"), fmt_num(c["predicted_macs"] and c["predicted_macs"] / 1e9, ",.2f"),
            fmt_num(c.get("mfu"), ".1%"), fmt_num(c.get("compile_s"), ",.1f"),
        ])
    return rows


CASE_COLS = ["case", "tokens/s", "median ms", "spread", "peak MB", "GMACs (pred.)", "MFU", "compile s"]
BUDGET_COLS = ["budget", "full share", "train tokens/s", "time vs dense: measured", "predicted",
               "time vs masked: measured", "predicted", "saving realised/predicted"]
RECIPE_COLS = ["gate", "util/rank arm", "LM-only arm", "util/rank mean step ms", "LM-only mean step ms",
               "measured ratio (change)", "FLOPs-proxy ratio (change)", f"paper {WALL_HOURS['lm']} h / {WALL_HOURS['utilrank']} h (change)",
               "util/rank peak MB", "LM-only peak MB"]
TARGET_COLS = ["target", "figure [95% interval]", "threshold", "status", "settled", "by", "note"]


def budget_rows(summary: dict[str, Any]) -> list[list[str]]:
    return [[f"{r['budget']:g}", f"{r['realised_full_fraction']:.3f}", fmt_num(r["train_tokens_per_s"]),
             fmt_pct(-r["measured_saving_vs_dense"]), fmt_pct(-r["predicted_saving_vs_dense"]),
             fmt_pct(-r["measured_saving_vs_masked"]), fmt_pct(-r["predicted_saving_vs_masked"]),
             fmt_num(r["efficiency_vs_masked"], ".0%")] for r in summary["budgets"]]


def recipe_rows(summary: dict[str, Any]) -> list[list[str]]:
    return [[r["gate"], r["utilrank"], r["lm"], fmt_num(r["utilrank_s"] * 1e3, ",.1f"), fmt_num(r["lm_s"] * 1e3, ",.1f"),
             f"{r['measured_ratio']:.3f} ({fmt_pct(-r['measured_saving'])})",
             f"{r['predicted_ratio']:.3f} ({fmt_pct(-r['predicted_saving'])})",
             f"{r['paper_ratio']:.3f} ({fmt_pct(-r['paper_saving'])})",
             fmt_num(r.get("utilrank_peak_mb"), ",.1f"), fmt_num(r.get("lm_peak_mb"), ",.1f")] for r in summary["recipes"]]


def target_rows(summary: dict[str, Any]) -> list[list[str]]:
    rows = []
    for t in summary["targets"]:
        fig, iv = t["figure"], t.get("interval")
        if fig is None:
            shown = "—"
        elif t["id"] == "dense_vs_reference":
            shown = fmt_ratio(fig, iv)
        elif t["id"] == "recipe_vs_flops_proxy":
            shown = f"{fig * 100:+.1f} pp" + (f" [{iv[0] * 100:+.1f}, {iv[1] * 100:+.1f}]" if iv else "")
        else:
            shown = fmt_share_iv(fig, iv)
        by = "—" if t["by"] is None else (f"{t['by']:+.3f}x" if t["id"] == "dense_vs_reference"
                                          else f"{t['by'] * 100:+.0f} pp")
        settled = "—" if "settled" not in t else ("yes" if t["settled"] else "no")
        rows.append([t["id"], shown, t["threshold"], t["status"], settled, by, t["note"]])
    return rows


def rich_tables(summary: dict[str, Any]) -> list[Table]:
    """The report's tables for the terminal."""
    st = summary["settings"]
    title = (f"{summary['study']} / {summary['profile']}{' (quick)' if summary['quick'] else ''}: "
             f"B={st['batch_size']} x T={st['seq_len']}, {summary['environment']['device']} "
             f"{summary['environment']['dtype']}, {summary['environment']['threads']} threads, "
             f"median of {st['repeats']}")
    out = []
    for name, cols, rows in (
        (title, CASE_COLS, case_rows(summary)),
        ("gather by budget (full-parameter training step; negative = faster)", BUDGET_COLS, budget_rows(summary)),
        ("controller-only step: A3 (LM only) vs util/rank", RECIPE_COLS, recipe_rows(summary)),
        ("targets", TARGET_COLS, target_rows(summary)),
    ):
        table = Table(title=name, title_justify="left")
        for i, col in enumerate(cols):
            table.add_column(col, justify="left" if i == 0 or col in ("note", "status") else "right",
                             overflow="fold")
        for r in rows:
            table.add_row(*(escape(c) for c in r))  # cells are text: `specroute[reference]` is not markup
        out.append(table)
    return out


def _md_table(cols: list[str], rows: list[list[str]]) -> str:
    return "\n".join(md_table(cols, rows))


def markdown(summary: dict[str, Any]) -> str:
    env, st = summary["environment"], summary["settings"]
    m = st["model"]
    lines = [
        f"# Benchmark: {summary['study']} / {summary['profile']}{' (quick)' if summary['quick'] else ''}",
        "",
        f"Spec `{summary['spec_file']}`; `{env.get('argv')}`.",
        "",
        "## Where",
        "",
        _md_table(["", ""], [
            ["machine", f"{env.get('cpu_model')} ({env.get('machine')}), {env.get('cpu_count')} CPUs"],
            ["platform", str(env.get("platform"))],
            ["device / dtype", f"{env.get('device')} ({env.get('device_name')}) / {env.get('dtype')}"],
            ["torch threads", str(env.get("threads"))],
            ["versions", f"torch {env.get('torch')}, transformers {env.get('transformers') or 'not installed'}, "
                         f"python {env.get('python')}, specroute {env.get('specroute')}"],
            ["git commit", str(env.get("git_commit"))],
            ["load average (1, 5, 15 min)", f"{fmt_load(env.get('load_avg_1_5_15'))} at start, "
                                            f"{fmt_load(env.get('load_avg_1_5_15_end'))} at end"],
            ["other processes during the timing", f"{fmt_share(env.get('other_processes_cpu_share'))} of the "
                                                  "CPU time (/proc/stat less this process)"],
            ["timing wall time", f"{env.get('timing_wall_s', 0):.1f} s"],
        ]),
        "",
        "## What",
        "",
        f"- Model: {m['n_layers']} layers x d_model {m['d_model']}, {m['n_heads']} heads, FFN {m['ffn_hidden']}, "
        f"vocab {m['vocab_size']}, context {m['context_length']}, tied embeddings {m['tie_embeddings']}; "
        f"controlled layers {st['routing']['controlled_layers']}, cheap FFN {st['routing']['cheap_ffn_hidden']}, "
        f"gate {st['gate']['kind']} (routed cases built from arm `{st['base_arm']}`).",
        f"- Batch {st['batch_size']} x {st['seq_len']} = {st['tokens_per_step']} tokens per step (random ids); "
        f"{plural(st['warmup'], 'warm-up step')} per case, then {plural(st['repeats'], 'round')} with the cases "
        "interleaved "
        "round-robin, each case an untimed lead-in step then a timed step (so the timed step starts from its "
        "own steady state, not the previous case's); figures are medians; spread = (Q3 - Q1) / median of the rounds.",
        f"- `train/*`: full-parameter training step (forward, LM loss, backward of every parameter, clip "
        f"{st['grad_clip']}, {st['optimizer']}). `forward/*`: no-grad forward to logits. Routed cases: top-k per "
        f"sequence (exactly ceil(b*T) full tokens per sequence), score-scaling estimator.",
        f"- Reference: {summary['reference']['name']}, same dense configuration, activation "
        f"`{st['reference_activation']}` (GPT-2's tanh GELU through PyTorch's fused kernel), dropout 0, "
        f"loss from `labels`: {summary['reference']['status']}.",
        f"- `recipe/*`: the study's controller-only step (backbone frozen; the arm's losses, backward, clip, "
        f"AdamW on the controller), execution {', '.join(st['recipe_execution'])}.",
        f"- Peak memory: {st['memory_method']}.",
        "- Predicted figures: analytic multiply-adds of `specroute.flops.analytic` (matmuls only). MFU: 2 x those "
        f"MACs per median step time over the peak, {summary.get('peak', {}).get('source')}. `+compile`: the "
        "model's forward under torch.compile (`train.compile`); its first step compiles and is timed apart "
        "(`compile s`).",
        "- Targets are judged on paired per-round figures with a 95% percentile bootstrap interval over the "
        "rounds; `settled`: the whole interval is on one side of the threshold.",
        "",
        *(f"> **Warning:** {w}.\n" for w in summary["warnings"]),
        "## Throughput and memory",
        "",
        _md_table(CASE_COLS, case_rows(summary)),
        "",
        "## Gather by budget",
        "",
        "Step-time change of the full-parameter training step (negative = faster), measured beside the "
        "FLOPs-predicted change.",
        "",
        _md_table(BUDGET_COLS, budget_rows(summary)),
        "",
        f"![throughput against budget]({PLOT})",
        "",
        "## A3 vs util/rank (controller-only step)",
        "",
        "Mean step time without util/rank (A3) over mean step time with them (a util/rank step's cost "
        "depends on the controlled layer it labels, drawn at random; the mean is what a run's wall time "
        "adds up). The paper's figure is whole-run wall time on one V100-32GB "
        f"({WALL_HOURS['utilrank']} h -> {WALL_HOURS['lm']} h, CLAIMS C12), including evaluation and data loading.",
        "",
        _md_table(RECIPE_COLS, recipe_rows(summary)),
        "",
        "## Targets",
        "",
        _md_table(TARGET_COLS, target_rows(summary)),
        "",
    ]
    return "\n".join(lines)


def plot(summary: dict[str, Any], path: Path) -> None:
    """Training tokens/s against budget: gather measured; gather predicted over b in [0, 1] (the measured
    masked throughput times masked's MACs over gather's); dense / masked / GPT-2 as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = {c["name"]: c for c in summary["cases"]}
    rows = summary["budgets"]
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    xs = [r["budget"] for r in rows]
    ax.plot(xs, [r["train_tokens_per_s"] for r in rows], "o-", color="C0", label="gather (measured)")
    masked = cases["train/masked"]
    curve = summary["settings"]["predicted_gather_macs"]
    ax.plot([b for b, _ in curve], [masked["tokens_per_s"] * masked["predicted_macs"] / m for _, m in curve],
            "--", color="C0", alpha=0.6, label="gather predicted (masked measured x MACs ratio)")
    for name, style, color in (("train/dense", "-", "k"), ("train/masked", "--", "C3"), ("train/hf_gpt2", ":", "C2")):
        c = cases[name]
        if c["tokens_per_s"]:
            ax.axhline(c["tokens_per_s"], ls=style, color=color, label=name.split("/")[1])
    ax.set_xlabel("budget (full_fraction)")
    ax.set_ylabel("training tokens / s")
    env = summary["environment"]
    ax.set_title(f"{summary['study']}/{summary['profile']}: {env['device']} {env['dtype']}, "
                 f"torch threads: {env['threads']}", fontsize=10)
    ax.set_xticks([0, *xs, 1])
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------
# files


def default_out_dir(summary_or_study: str, profile: str, quick: bool) -> Path:
    """``reports/bench/<study>_<profile>[_quick]/``."""
    return Path("reports") / "bench" / f"{summary_or_study}_{profile}{'_quick' if quick else ''}"


#: What a benchmark writes into its output folder (all that ``--overwrite`` may replace).
OWNED = ("summary.json", "report.md", PLOT)
#: How the output-folder rule (:func:`specroute.store.check_out_dir`) names a benchmark's result.
WHAT = "a benchmark result"


def check_out_dir(out: Path, overwrite: bool) -> list[str]:
    """The output-folder rule (:func:`specroute.store.check_out_dir`) applied to a benchmark's result:
    returns ``out``'s entries; raises UserError for a folder that cannot take this result."""
    return store.check_out_dir(out, OWNED, WHAT, overwrite)


def write_results(summary: dict[str, Any], out: Path, overwrite: bool) -> Path:
    """Write summary.json, report.md and the plot into ``out`` as one step: they are built in a
    temporary folder beside it, which then replaces ``out`` (a crash leaves the old result whole).
    ``out`` may only hold a previous result (:func:`check_out_dir`; raises UserError)."""
    check_out_dir(out, overwrite)
    tmp = temp_dir_beside(out)
    try:
        atomic_write_json(tmp / "summary.json", summary)
        atomic_write_text(tmp / "report.md", markdown(summary))
        plot(summary, tmp / PLOT)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
