"""The benchmark's figures, targets and files: ``summary.json``, ``report.md``, ``throughput_vs_budget.png``.

Savings are step-time savings, ``1 - t_variant / t_baseline`` from the medians; the predicted saving is
the same ratio of analytic MACs (``specroute.model.cost``): ``1 - macs_variant / macs_baseline``. The
gather efficiency at a budget is realised / predicted saving of gather over masked.

Targets (issue 5): on CPU at width >= 512, our dense training step within 5% of the reference's (or
faster); gather at budget 0.5 realising >= 80% of its predicted saving over masked; on CUDA, the same
benchmark in bf16. A target whose conditions this run does not meet is ``n/a`` (the figure is still
shown); a miss says by how much and gives the measured facts that explain it.
"""

from __future__ import annotations

import math
import os
import shutil
import statistics
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from specroute.bench.runner import PAPER_HOURS, BenchOptions, Case, quartile_spread
from specroute.spec.loader import Resolved
from specroute.store import UserError, atomic_write_json, atomic_write_text, temp_dir_beside
from specroute.train.device import Device

#: Target thresholds (issue 5, item 5).
DENSE_VS_REFERENCE_MAX = 0.05      # our dense step at most 5% slower than the reference's
GATHER_EFFICIENCY_MIN = 0.80       # realised / predicted saving of gather over masked at b = 0.5
TARGET_BUDGET = 0.5
TARGET_MIN_WIDTH = 512
#: Share of the machine's CPU time taken by other processes during the timing above which a run is
#: flagged as disturbed.
BUSY_OTHER_SHARE = 0.10
PLOT = "throughput_vs_budget.png"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b not in (None, 0) else None


def _min(c: Case) -> float | None:
    """A case's fastest round: the least disturbed by other processes."""
    return min(c.times_s) if c.times_s else None


def _cpu(c: Case) -> float | None:
    """Median process CPU time of a case's steps (a cross-check that machine load disturbs less)."""
    return statistics.median(c.cpu_s) if c.cpu_s else None


def _paired_saving(c: Case, base: Case) -> float | None:
    """Median over rounds of 1 - t_c / t_base, each from the same round (cancels slow load drifts)."""
    pairs = [1 - a / b for a, b in zip(c.times_s, base.times_s)]
    return statistics.median(pairs) if pairs else None


def _saving(t: float | None, base: float | None) -> float | None:
    r = _ratio(t, base)
    return None if r is None else 1.0 - r


def summarise(resolved: Resolved, options: BenchOptions, device: Device, env: dict[str, Any],
              settings: dict[str, Any], cases: list[Case], memory: str) -> dict[str, Any]:
    """The JSON-able summary of a benchmark run."""
    tokens = settings["tokens_per_step"]
    by = {c.name: c for c in cases}
    t = {n: c.median_s for n, c in by.items()}
    macs = {n: c.macs for n, c in by.items()}
    budgets = []
    for b in settings["budgets"]:
        name = f"train/gather@{b:g}"
        share = math.ceil(b * settings["seq_len"] - 1e-9) / settings["seq_len"]
        vs_masked = _saving(t[name], t["train/masked"])
        cpu_vs_masked = _saving(_cpu(by[name]), _cpu(by["train/masked"]))
        pred_masked = _saving(macs[name], macs["train/masked"])
        budgets.append({
            "budget": b, "realised_full_fraction": share,
            "train_tokens_per_s": tokens / t[name], "train_median_s": t[name],
            "measured_saving_vs_dense": _saving(t[name], t["train/dense"]),
            "predicted_saving_vs_dense": _saving(macs[name], macs["train/dense"]),
            "measured_saving_vs_masked": vs_masked, "predicted_saving_vs_masked": pred_masked,
            "efficiency_vs_masked": _ratio(vs_masked, pred_masked),
            "paired_saving_vs_masked": _paired_saving(by[name], by["train/masked"]),
            "fastest_saving_vs_masked": _saving(_min(by[name]), _min(by["train/masked"])),
            "cpu_time_saving_vs_masked": cpu_vs_masked,
            "cpu_time_efficiency_vs_masked": _ratio(cpu_vs_masked, pred_masked),
        })
    recipes = []
    paper_ratio = PAPER_HOURS["lm"] / PAPER_HOURS["utilrank"]
    for pair in settings["pairs"]:
        u, l = by[f"recipe/{pair['utilrank']}"], by[f"recipe/{pair['lm']}"]
        u_s, l_s = statistics.mean(u.times_s), statistics.mean(l.times_s)  # what a run's wall time sums
        ratio = _ratio(l_s, u_s)
        proxy = _ratio(l.extra["flops_proxy"], u.extra["flops_proxy"])
        recipes.append({
            **pair, "statistic": "mean", "utilrank_s": u_s, "lm_s": l_s,
            "measured_ratio": ratio, "measured_saving": None if ratio is None else 1 - ratio,
            "flops_proxy_utilrank": u.extra["flops_proxy"], "flops_proxy_lm": l.extra["flops_proxy"],
            "predicted_ratio": proxy, "predicted_saving": None if proxy is None else 1 - proxy,
            "paper_hours": dict(PAPER_HOURS), "paper_ratio": paper_ratio, "paper_saving": 1 - paper_ratio,
        })
    summary: dict[str, Any] = {
        "study": resolved.study.name, "profile": resolved.study.profile, "spec_file": str(resolved.source),
        "quick": options.quick, "environment": env,
        "settings": {**settings, "repeats": options.rounds, "warmup": options.warmup_steps,
                     "memory_method": memory},
        "reference": {"name": "transformers GPT2LMHeadModel (sdpa)", "status": by["train/hf_gpt2"].status,
                      "version": env.get("transformers")},
        "cases": [c.as_dict(tokens) for c in cases],
        "budgets": budgets, "recipes": recipes,
    }
    summary["targets"] = targets(summary, by)
    summary["warnings"] = warnings(summary)
    return summary


def warnings(summary: dict[str, Any]) -> list[str]:
    """Conditions that make this run's timings less trustworthy (shown above the tables)."""
    env, out = summary["environment"], []
    others = env.get("other_processes_cpu_share")
    if others is not None and others > BUSY_OTHER_SHARE:
        out.append(f"the machine was busy: other processes took {others:.0%} of its CPU time while the cases "
                   "were timed, so the timings are disturbed; rerun on a quiet machine")
    if summary["settings"]["repeats"] < 5:
        out.append(f"median of {summary['settings']['repeats']} rounds (fewer than 5)")
    return out


def targets(summary: dict[str, Any], by: dict[str, Case]) -> list[dict[str, Any]]:
    """Each target of issue 5 with its figure, PASS / MISS / n/a, by how much, and a note."""
    env, st = summary["environment"], summary["settings"]
    width = st["model"]["d_model"]
    scale_ok = not summary["quick"] and width >= TARGET_MIN_WIDTH
    scale_why = ("quick mode (shrunken sizes)" if summary["quick"]
                 else f"width {width} < {TARGET_MIN_WIDTH}") if not scale_ok else ""
    others = f"other processes' share of the CPUs {_share(env.get('other_processes_cpu_share'))}"
    out = []

    # 1. dense vs reference
    d, h = by["train/dense"], by["train/hf_gpt2"]
    fig = None if h.median_s is None else d.median_s / h.median_s - 1
    fwd = None
    if by["forward/hf_gpt2"].median_s:
        fwd = by["forward/dense"].median_s / by["forward/hf_gpt2"].median_s - 1
    paired = _paired_saving(d, h)
    paired = None if paired is None else -paired
    entry = {"id": "dense_vs_reference", "what": "our dense training step vs GPT-2 (transformers), time",
             "figure": fig, "threshold": f"<= +{DENSE_VS_REFERENCE_MAX:.0%}", "forward_figure": fwd,
             "paired_figure": paired}
    if fig is None:
        entry.update(status="n/a", by=None, note=f"reference {h.status}")
    else:
        passed = fig <= DENSE_VS_REFERENCE_MAX
        entry.update(status=("PASS" if passed else "MISS") if scale_ok else "n/a",
                     by=None if passed else fig - DENSE_VS_REFERENCE_MAX,
                     note=(f"{_spread_note(d, h)}; paired by round: {_pct(paired)}; "
                           f"fastest rounds: {_pct(_ratio(_min(d), _min(h)) - 1)}; "
                           f"forward-only: {_pct(fwd)}; {others}"
                           + (f"; target applies at width >= {TARGET_MIN_WIDTH}, this run: {scale_why}"
                              if not scale_ok else "")))
    out.append(entry)

    # 2. gather efficiency at b = 0.5
    row = next(r for r in summary["budgets"] if r["budget"] == TARGET_BUDGET)
    eff = row["efficiency_vs_masked"]
    g, m = by[f"train/gather@{TARGET_BUDGET:g}"], by["train/masked"]
    entry = {"id": "gather_efficiency",
             "what": f"gather at b={TARGET_BUDGET}: realised / predicted step-time saving over masked",
             "figure": eff, "threshold": f">= {GATHER_EFFICIENCY_MIN:.0%}",
             "measured_saving": row["measured_saving_vs_masked"],
             "predicted_saving": row["predicted_saving_vs_masked"]}
    passed = eff is not None and eff >= GATHER_EFFICIENCY_MIN
    ideal = m.median_s * g.macs / m.macs
    overhead = g.median_s - ideal
    entry.update(
        status=("PASS" if passed else "MISS") if scale_ok else "n/a",
        by=None if passed or eff is None else eff - GATHER_EFFICIENCY_MIN,
        note=(f"saving over masked measured {_share(row['measured_saving_vs_masked'])}, predicted "
              f"{_share(row['predicted_saving_vs_masked'])}; gather step {overhead * 1e3:+.1f} ms "
              f"({overhead / g.median_s:+.1%}) vs the MAC-proportional time (index/scatter work, smaller "
              f"GEMMs and elementwise ops are not in the MAC model); saving paired by round "
              f"{_share(row['paired_saving_vs_masked'])}, between the fastest rounds "
              f"{_share(row['fastest_saving_vs_masked'])}; {_spread_note(m, g)}; {others}"
              + (f"; target applies at width >= {TARGET_MIN_WIDTH}, this run: {scale_why}" if not scale_ok else "")))
    out.append(entry)

    # 3. CUDA bf16
    cuda = env.get("device") == "cuda"
    out.append({"id": "cuda_bf16", "what": "the same benchmark on CUDA in bf16",
                "figure": None, "threshold": "runs", "by": None,
                "status": "PASS" if cuda and "bfloat16" in str(env.get("dtype")) else "n/a",
                "note": (f"ran on {env.get('device_name')} in {env.get('dtype')}" if cuda else
                         "no CUDA device on this machine: the CUDA path (bf16 autocast, synchronised timing, "
                         "max_memory_allocated) is in the code but was not run here")})
    return out


def _spread_note(*cases: Case) -> str:
    parts = [f"{c.variant}{'@' + format(c.budget, 'g') if c.variant == 'gather' else ''} "
             f"{quartile_spread(c.times_s):.0%}" for c in cases if quartile_spread(c.times_s) is not None]
    return "repetition spread (IQR/median): " + ", ".join(parts) if parts else "single repetition"


# --------------------------------------------------------------------------------------------------
# formatting


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:+.1%}"


def _load(loads: list[float] | None) -> str:
    return "unknown" if not loads else " / ".join(f"{x:.2f}" for x in loads)


def _share(x: float | None) -> str:
    return "—" if x is None else f"{x:.1%}"


def _num(x: float | None, fmt: str = ",.0f") -> str:
    return "—" if x is None else format(x, fmt)


def case_rows(summary: dict[str, Any]) -> list[list[str]]:
    rows = []
    for c in summary["cases"]:
        if c["kind"] == "recipe":
            continue
        ok = c["status"] == "ok"
        rows.append([
            c["name"], _num(c["tokens_per_s"]) if ok else c["status"],
            _num(c["median_s"] and c["median_s"] * 1e3, ",.1f"), _num(c["spread"], ".0%"),
            _num(c["peak_mb"], ",.1f"), _num(c["predicted_macs"] and c["predicted_macs"] / 1e9, ",.2f"),
        ])
    return rows


CASE_COLS = ["case", "tokens/s", "median ms", "spread", "peak MB", "GMACs (pred.)"]
BUDGET_COLS = ["budget", "full share", "train tokens/s", "time vs dense: measured", "predicted",
               "time vs masked: measured", "predicted", "saving realised/predicted"]
RECIPE_COLS = ["gate", "util/rank arm", "LM-only arm", "util/rank mean step ms", "LM-only mean step ms",
               "measured ratio (change)", "FLOPs-proxy ratio (change)", "paper 1.75 h / 2.87 h (change)"]
TARGET_COLS = ["target", "figure", "threshold", "status", "by", "note"]


def budget_rows(summary: dict[str, Any]) -> list[list[str]]:
    return [[f"{r['budget']:g}", f"{r['realised_full_fraction']:.3f}", _num(r["train_tokens_per_s"]),
             _pct(-r["measured_saving_vs_dense"]), _pct(-r["predicted_saving_vs_dense"]),
             _pct(-r["measured_saving_vs_masked"]), _pct(-r["predicted_saving_vs_masked"]),
             _num(r["efficiency_vs_masked"], ".0%")] for r in summary["budgets"]]


def recipe_rows(summary: dict[str, Any]) -> list[list[str]]:
    return [[r["gate"], r["utilrank"], r["lm"], _num(r["utilrank_s"] * 1e3, ",.1f"), _num(r["lm_s"] * 1e3, ",.1f"),
             f"{r['measured_ratio']:.3f} ({_pct(-r['measured_saving'])})",
             f"{r['predicted_ratio']:.3f} ({_pct(-r['predicted_saving'])})",
             f"{r['paper_ratio']:.3f} ({_pct(-r['paper_saving'])})"] for r in summary["recipes"]]


def target_rows(summary: dict[str, Any]) -> list[list[str]]:
    rows = []
    for t in summary["targets"]:
        fig = t["figure"]
        shown = "—" if fig is None else (_pct(fig) if t["id"] == "dense_vs_reference" else f"{fig:.0%}")
        by = "—" if t["by"] is None else (f"{t['by']:+.1%}" if t["id"] == "dense_vs_reference"
                                          else f"{t['by'] * 100:+.0f} pp")
        rows.append([t["id"], shown, t["threshold"], t["status"], by, t["note"]])
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
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows]
    return "\n".join(lines)


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
            ["load average (1, 5, 15 min)", f"{_load(env.get('load_avg_1_5_15'))} at start, "
                                            f"{_load(env.get('load_avg_1_5_15_end'))} at end"],
            ["other processes during the timing", f"{_share(env.get('other_processes_cpu_share'))} of the "
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
        f"{st['warmup']} warm-up step(s) per case, then {st['repeats']} rounds with the cases interleaved "
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
        "- Predicted figures: analytic multiply-adds of `specroute.model.cost` (matmuls only).",
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
        "adds up). The paper's figure is whole-run wall time on one V100-32GB (2.87 h -> 1.75 h, CLAIMS "
        "C12), including evaluation and data loading.",
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


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse an output folder that is a file or holds anything but a benchmark result, and an existing
    result unless ``overwrite`` (raises UserError)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder; choose another --out")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    foreign = [name for name in entries if name not in OWNED]
    if foreign:
        raise UserError(f"--out {out} holds files that are not a benchmark result ({', '.join(foreign[:5])}); "
                        "nothing was changed; choose another --out")
    if entries and not overwrite:
        raise UserError(f"{out} already holds a result; pass --overwrite to replace it or --out DIR")


def write_results(summary: dict[str, Any], out: Path, overwrite: bool) -> Path:
    """Write summary.json, report.md and the plot into ``out`` as one step: they are built in a
    temporary folder beside it, which then replaces ``out`` (a crash leaves the old result whole).
    ``out`` may only hold a previous result (:func:`check_out_dir`)."""
    check_out_dir(out, overwrite)
    tmp = temp_dir_beside(out)
    try:
        atomic_write_json(tmp / "summary.json", summary)
        atomic_write_text(tmp / "report.md", markdown(summary))
        plot(summary, tmp / PLOT)
        if out.exists():
            old = temp_dir_beside(out)
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
