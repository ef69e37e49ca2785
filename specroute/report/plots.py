"""The report's plots (matplotlib, Agg backend, PNG): LM curves with a seed band, gradient norms, the
gate's score distribution per controlled layer, the realised full fraction per layer for the arms
that route by threshold (under top-k it is the budget by construction and says nothing), the gate's score
spread and G3's action dependence of predictor and target (``gate_scale``), and, for runs that log them,
the gradient norm of each loss term on the controller, and for top-k arms their held-out LM and full share
under the calibrated causal threshold beside top-k's (``causal_lm``), and each sweep's LM against its grid
values (``sweeps``, :mod:`specroute.report.sweeps`). Each arm has one colour in every plot
(:func:`arm_colours`, from the study's arm order), each loss term one in the last (:data:`TERM_COLOURS`).
Each plot is written atomically into ``<out>/plots/``."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from specroute.losses import LOSS_TERMS
from specroute.store import atomic_write_bytes

PLOTS = {"lm_curves": "lm_curves.png", "grad_norm": "grad_norm.png", "score_distribution": "score_distribution.png",
         "full_fraction": "full_fraction.png", "gate_scale": "gate_scale.png",
         "loss_grad_norms": "loss_grad_norms.png", "causal_lm": "causal_lm.png", "sweeps": "sweeps.png"}

#: One colour per loss term (and their sum) in :func:`plot_loss_grad_norms`, the same in every study.
TERM_COLOURS = {**{t: f"C{i}" for i, t in enumerate(LOSS_TERMS)}, "total": "k"}
#: Line style per parameter group in :func:`plot_loss_grad_norms`.
GROUP_STYLES = {"gate": "-", "cheap_ffn": "--", "backbone": ":"}


def import_report_libraries() -> None:
    """Import matplotlib and scipy.stats (the report's intervals and tests) now: seconds on a busy machine,
    better spent before taking a lock to write the report, or while a study's last runs train."""
    _plt()
    import scipy.stats  # noqa: F401


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    atomic_write_bytes(path, buf.getvalue())


def arm_colours(summary: dict[str, Any]) -> dict[str, Any]:
    """One colour per arm, the same in every plot: matplotlib's tab10 (then tab20) in the study's arm order."""
    plt = _plt()
    arms = list(summary["arms"])
    cmap = plt.get_cmap("tab10" if len(arms) <= 10 else "tab20")
    return {arm: cmap(i % cmap.N) for i, arm in enumerate(arms)}


def _band(ax: Any, x: np.ndarray, ys: np.ndarray, label: str, colour: Any) -> None:
    """Mean line and min-max band over seeds (rows of ``ys``)."""
    ax.plot(x, ys.mean(0), color=colour, label=f"{label} (n={len(ys)})")
    if len(ys) > 1:
        ax.fill_between(x, ys.min(0), ys.max(0), color=colour, alpha=0.2, linewidth=0)


def _legend(ax: Any, **kwargs: Any) -> None:
    """A legend, unless nothing is labelled (every run failed: an empty plot, without an empty legend)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kwargs)


#: Characters per line of an arm's label under a plot's x axis or in a legend (longer labels are wrapped).
LABEL_WRAP_CHARS = 28


def _wrapped(label: str) -> str:
    """An arm's label broken into lines of at most :data:`LABEL_WRAP_CHARS` characters (at spaces)."""
    return "\n".join(textwrap.wrap(label, LABEL_WRAP_CHARS, break_long_words=False, break_on_hyphens=False)) or label


def _arm_legend(fig: Any, summary: dict[str, Any], arms: list[str], extra: list[Any] = (), marker: bool = False,
                ) -> None:
    """One legend for the whole figure, below its panels (never over the data): a swatch (or, with
    ``marker``, a filled dot) in each arm's colour with its label, then the ``extra`` handles (what the
    markers or lines mean). The figure must use the constrained layout, which makes room for it."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    colours = arm_colours(summary)
    handles = [Line2D([], [], ls="none", marker="o", color=colours[arm], label=summary["arms"][arm]["label"])
               if marker else Patch(color=colours[arm], label=summary["arms"][arm]["label"]) for arm in arms]
    handles += list(extra)
    if handles:
        longest = max(len(h.get_label()) for h in handles)
        fig.legend(handles=handles, loc="outside lower center", fontsize=7, frameon=False,
                   ncol=max(1, min(len(handles), 4, 120 // max(1, longest))))


def read_train_records(path: Path) -> list[dict[str, Any]]:
    """The training-step records of a run's ``metrics.jsonl`` ([] when there is none;
    :func:`specroute.train.trainer.read_metrics`, which raises UserError for a damaged file: the report
    leaves such a run out before plotting, :func:`specroute.report.aggregate.collect_runs`)."""
    from specroute.train.trainer import read_metrics

    return [rec for rec in read_metrics(path) if rec.get("event") == "train"]


def plot_lm(summary: dict[str, Any], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    colours = arm_colours(summary)
    for arm, a in summary["arms"].items():
        curves = [np.array(([[0, s["initial_lm"]]] if s.get("initial_lm") is not None else []) + s["lm"], dtype=float)
                  for s in a["seeds"].values()]
        n = min(len(c) for c in curves)
        _band(ax, curves[0][:n, 0], np.stack([c[:n, 1] for c in curves]), a["label"], colours[arm])
    ax.axhline(summary["backbone"]["heldout_lm"], color="k", ls="--", lw=1, label="dense backbone")
    ax.set_xlabel("controller step")
    ax.set_ylabel("held-out LM loss (nats/token)")
    ax.set_title(f"{summary['study']} / {summary['profile']}: LM, mean and min-max over seeds")
    _legend(ax, fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_grad_norm(summary: dict[str, Any], runs_dir: Path, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    colours = arm_colours(summary)
    for arm, a in summary["arms"].items():
        series = []
        for seed in a["seeds"]:
            recs = read_train_records(runs_dir / arm / f"seed{seed}" / "metrics.jsonl")
            if recs:
                series.append(np.array([[r["step"], r["grad_norm"]] for r in recs], dtype=float))
        if not series:
            continue
        n = min(len(s) for s in series)
        ys = np.stack([s[:n, 1] for s in series])
        k = max(1, n // 30)  # moving average over ~1/30 of the run
        if k > 1:
            kernel = np.ones(k) / k
            ys = np.stack([np.convolve(y, kernel, mode="valid") for y in ys])
        _band(ax, series[0][k - 1:n, 0], ys, a["label"], colours[arm])
    ax.set_yscale("log")
    ax.set_xlabel("controller step")
    ax.set_ylabel("controller gradient norm (before clipping)")
    ax.set_title("gradient norm, moving average; mean and min-max over seeds")
    _legend(ax, fontsize=8)
    ax.grid(alpha=0.3, which="both")
    _save(fig, path)


def threshold_arms(summary: dict[str, Any]) -> list[str]:
    """Arms whose realised full fraction is a measurement (threshold routing), not fixed by a top-k budget."""
    return [arm for arm, a in summary["arms"].items() if a.get("enforcement") == "threshold"]


def _layers(arms: list[dict[str, Any]], read: Any) -> list[str]:
    return sorted({l for a in arms for s in a["seeds"].values() for l in (read(s) or {})}, key=int)


def plot_full_fraction(summary: dict[str, Any], path: Path) -> None:
    """Realised full fraction per controlled layer (train: solid, last evaluation: hatched) of the
    threshold-routed arms, beside the budget."""
    plt = _plt()
    colours = arm_colours(summary)
    arms = [(arm, summary["arms"][arm]) for arm in threshold_arms(summary)]
    layers = _layers([a for _, a in arms], lambda s: s["full_fraction"]["train"])
    fig, ax = plt.subplots(figsize=(7, 4.2))
    width = 0.8 / max(1, 2 * len(arms))
    x = np.arange(len(layers))
    for i, (arm, a) in enumerate(arms):
        for j, split in enumerate(("train", "eval")):
            vals = [np.mean([s["full_fraction"][split].get(l, np.nan) for s in a["seeds"].values()]) for l in layers]
            ax.bar(x + (2 * i + j) * width - 0.4 + width / 2, vals, width, color=colours[arm],
                   label=f"{a['label']} ({split})", alpha=1.0 if split == "train" else 0.55,
                   hatch=None if split == "train" else "//", edgecolor="white" if split == "eval" else None)
    budgets = sorted({a["full_fraction_budget"] for _, a in arms if a.get("full_fraction_budget") is not None})
    for b in budgets:
        ax.axhline(b, color="k", ls="--", lw=1, label=f"budget b = {b:g}")
    ax.set_xticks(x, [f"layer {l}" for l in layers])
    ax.set_ylim(0, 1)
    ax.set_ylabel("realised full fraction")
    ax.set_title("full fraction per controlled layer, threshold routing (mean over seeds)")
    _legend(ax, fontsize=7, ncol=2)
    _save(fig, path)


def plot_scores(summary: dict[str, Any], path: Path) -> None:
    """The gate's score distribution per controlled layer at the last evaluation, per arm: box from the 25%
    to the 75% quantile, median tick, whiskers from 5% to 95% (quantiles averaged over seeds)."""
    plt = _plt()
    colours = arm_colours(summary)
    arms = [(arm, a) for arm, a in summary["arms"].items()
            if any(s.get("score_quantiles") for s in a["seeds"].values())]
    layers = _layers([a for _, a in arms], lambda s: s.get("score_quantiles"))
    fig, ax = plt.subplots(figsize=(7, 4.2), layout="constrained")
    width = 0.8 / max(1, len(arms))
    for i, (arm, a) in enumerate(arms):
        labelled = False
        for k, l in enumerate(layers):
            qs = [s["score_quantiles"][l] for s in a["seeds"].values() if (s.get("score_quantiles") or {}).get(l)]
            if not qs:
                continue
            q05, q25, q50, q75, q95 = np.mean(np.array(qs, dtype=float), axis=0)
            x = k + i * width - 0.4 + width / 2
            ax.vlines(x, q05, q95, color=colours[arm], lw=1)
            ax.bar(x, q75 - q25, width * 0.8, bottom=q25, color=colours[arm], alpha=0.6,
                   label=None if labelled else a["label"])
            labelled = True
            ax.hlines(q50, x - width * 0.4, x + width * 0.4, color="k", lw=1)
            ax.plot([x], [q50], marker="o", ms=4, color=colours[arm])  # visible when the box is thin
    ax.axhline(0, color="grey", ls=":", lw=1)
    ax.set_xticks(np.arange(len(layers)), [f"layer {l}" for l in layers])
    ax.set_ylabel("gate score (routing logit)")
    ax.set_title("gate scores per controlled layer, last evaluation: 5/25/50/75/95% (mean over seeds)", fontsize=10)
    from matplotlib.lines import Line2D

    key = [Line2D([], [], color="grey", lw=6, alpha=0.6, label="25-75% (box)"),
           Line2D([], [], color="k", lw=1, marker="o", ms=4, mfc="grey", mec="grey", label="median"),
           Line2D([], [], color="grey", lw=1, marker="|", ms=8, label="5-95% (whisker)")]
    _arm_legend(fig, summary, [arm for arm, _ in arms], key if arms else [])
    _save(fig, path)


def layer_diagnostics(seed: dict[str, Any], when: str) -> dict[str, dict[str, float]]:
    """:func:`specroute.report.summary.layer_diagnostics`, imported when called: the summary module imports
    the trainer, which imports :data:`PLOTS` from here."""
    from specroute.report.summary import layer_diagnostics as read

    return read(seed, when)


def _diagnostic_mean(a: dict[str, Any], when: str, name: str, layer: str) -> float | None:
    """An arm's gate diagnostic ``name`` of ``layer`` at ``when``, mean over seeds (None if not recorded)."""
    xs = [v for s in a["seeds"].values() if (v := (layer_diagnostics(s, when).get(name) or {}).get(layer)) is not None]
    return float(np.mean(xs)) if xs else None


def plot_gate_scale(summary: dict[str, Any], path: Path) -> None:
    """Left: the std of the gate's score over tokens per controlled layer, before training (hollow) and at the
    last evaluation (filled), per arm; right, G3 arms: ||P(z, full) - P(z, cheap)|| (filled) beside the
    target's ||T(full) - T(cheap)|| (hollow) at the last evaluation. Means over seeds, log scale."""
    plt = _plt()
    colours = arm_colours(summary)
    arms = list(summary["arms"].items())
    layers = _layers([a for _, a in arms], lambda s: layer_diagnostics(s, "final").get("score_std"))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    width = 0.8 / max(1, len(arms))
    drawn: dict[Any, set[str]] = {left: set(), right: set()}
    for i, (arm, a) in enumerate(arms):
        for k, l in enumerate(layers):
            x = k + i * width - 0.4 + width / 2
            for ax, filled, hollow in ((left, "score_std", ("initial", "score_std")),
                                       (right, "pred_gap", ("final", "target_gap"))):
                top = _diagnostic_mean(a, "final", filled, l)
                if top is not None and top > 0:
                    ax.plot([x], [top], "o", color=colours[arm])
                    drawn[ax].add(arm)
                low = _diagnostic_mean(a, *hollow, l)
                if low is not None and low > 0:
                    ax.plot([x], [low], "o", mfc="none", color=colours[arm])
                    drawn[ax].add(arm)
    titles = ((left, "gate score std over tokens\n(logit, log scale)",
               "gate score spread per controlled layer: before (o) / after (●) training"),
              (right, "latent gap ‖full − cheap‖₂\n(log scale)",
               "G3, last evaluation: predictor ‖P(z, full) − P(z, cheap)‖ (●),\ntarget ‖T(full) − T(cheap)‖ (o)"))
    for ax, ylabel, title in titles:
        ax.set_xticks(np.arange(len(layers)), [f"layer {l}" for l in layers])
        ax.set_xlim(-0.5, len(layers) - 0.5)  # both panels place an arm at the same x
        if drawn[ax]:
            ax.set_yscale("log")
        ax.set_ylabel(ylabel, fontsize=9)
        ax.set_title(title, fontsize=9)
    if not drawn[right]:
        right.text(0.5, 0.5, "no G3 arm recorded the latent gaps", ha="center", va="center",
                   transform=right.transAxes, color="grey")
    from matplotlib.lines import Line2D

    key = [Line2D([], [], ls="none", marker="o", color="grey", label="after training (left), predictor P (right)"),
           Line2D([], [], ls="none", marker="o", mfc="none", color="grey",
                  label="before training (left), target T (right)")]
    shown = [arm for arm, _ in arms if arm in drawn[left] | drawn[right]]
    _arm_legend(fig, summary, shown, key if shown else [], marker=True)
    _save(fig, path)


def loss_grad_arms(summary: dict[str, Any]) -> list[str]:
    """Arms whose runs logged each loss term's gradient norm (``train.loss_grad_norm_every``)."""
    return [arm for arm, a in summary["arms"].items() if a.get("loss_grad_norm")]


def plot_loss_grad_norms(summary: dict[str, Any], runs_dir: Path, path: Path) -> None:
    """Per arm (one panel each, shared log y axis), each loss term's gradient norm over the logged steps,
    weighted as the term enters the total: one colour per term (:data:`TERM_COLOURS`; their sum, ``total``,
    a wide pale line behind), one line style per parameter group (:data:`GROUP_STYLES`), mean over seeds
    (a non-finite value, null in the log, left out). A zero mean (a term that reached the group in no seed
    at that step, e.g. util on an earlier layer's cheap FFN when only the first controlled layer was
    labelled) is left out of the log scale, and a series that is zero throughout is not drawn."""
    from matplotlib.lines import Line2D

    plt = _plt()
    arms = loss_grad_arms(summary)
    cols = min(len(arms), 3) or 1
    rows = max(1, -(-len(arms) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows + 0.8), sharey=True, squeeze=False,
                             layout="constrained")
    for ax in axes.flat[len(arms):]:
        ax.set_visible(False)
    drawn_terms, drawn_groups = set(), set()
    for ax, arm in zip(axes.flat, arms):
        a = summary["arms"][arm]
        per_step: dict[tuple[str, str], dict[int, list[float]]] = {}
        for seed in a["seeds"]:
            for r in read_train_records(runs_dir / arm / f"seed{seed}" / "metrics.jsonl"):
                for group, terms in (r.get("loss_grad_norm") or {}).items():
                    for term, v in terms.items():
                        per_step.setdefault((group, term), {}).setdefault(r["step"], []).append(
                            np.nan if v is None else v)
        for (group, term), by_step in per_step.items():
            steps = sorted(by_step)
            ys = np.array([np.nanmean(by_step[s]) if not np.isnan(by_step[s]).all() else np.nan for s in steps])
            ys[ys <= 0] = np.nan  # zero in every seed at that step: off the log scale
            if np.isnan(ys).all():
                continue
            total = term == "total"
            ax.plot(steps, ys, color=TERM_COLOURS.get(term, "grey"), ls=GROUP_STYLES.get(group, "-."),
                    lw=3.5 if total else 1.4, alpha=0.3 if total else 1.0, zorder=1 if total else 2,
                    marker="." if len(steps) < 30 and not total else None)
            drawn_terms.add(term)
            drawn_groups.add(group)
        ax.set_yscale("log")
        ax.set_title(a["label"], fontsize=9)
        ax.set_xlabel("controller step", fontsize=8)
        ax.grid(alpha=0.3, which="both")
    for row in axes:
        row[0].set_ylabel("‖λ·∇term‖ on the group", fontsize=8)
    handles = [Line2D([], [], color=TERM_COLOURS[t], lw=3.5 if t == "total" else 2, alpha=0.3 if t == "total" else 1,
                      label=t) for t in TERM_COLOURS if t in drawn_terms]
    handles += [Line2D([], [], color="grey", ls=GROUP_STYLES[g], label=g) for g in GROUP_STYLES if g in drawn_groups]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle("gradient norm of each loss term on the controller, weighted as in the total (mean over seeds)",
                 fontsize=10)
    _save(fig, path)


def causal_arms(summary: dict[str, Any]) -> list[str]:
    """Arms evaluated under a calibrated causal threshold too (top-k arms, :mod:`specroute.train.calibration`)."""
    return [arm for arm, a in summary["arms"].items() if a.get("causal")]


def plot_causal(summary: dict[str, Any], path: Path) -> None:
    """Per top-k arm, left: final held-out LM under top-k (open) and under the calibrated causal threshold
    (filled), each seed a dot joined by a line, the mean a bar; right: the realised held-out full share per
    controlled layer under the threshold (mean over seeds, whiskers min-max), beside the budget (top-k's
    share by construction)."""
    plt = _plt()
    colours = arm_colours(summary)
    arms = [(arm, summary["arms"][arm]) for arm in causal_arms(summary)]
    layers = _layers([a for _, a in arms], lambda s: (s.get("causal") or {}).get("full_fraction"))
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(max(11.0, 4 + 0.9 * len(arms)), 4.8), layout="constrained",
                                 width_ratios=[1, 1.2] if len(arms) <= 4 else [1.3, 1])
    for i, (arm, a) in enumerate(arms):
        seeds = [s for s in a["seeds"].values() if s.get("causal")]
        topk, causal = [s["final_lm"] for s in seeds], [s["causal"]["final_lm"] for s in seeds]
        x = np.array([3 * i, 3 * i + 1.2])
        for t, c in zip(topk, causal):
            ax.plot(x, [t, c], color=colours[arm], lw=0.8, alpha=0.7)
        ax.scatter(np.full(len(topk), x[0]), topk, facecolors="none", edgecolors=colours[arm], zorder=3)
        ax.scatter(np.full(len(causal), x[1]), causal, color=colours[arm], zorder=3, label=a["label"])
        ax.hlines([np.mean(topk), np.mean(causal)], x - 0.25, x + 0.25, color="k", lw=1.5)
    # one tick per arm, at the middle of its pair, named by the arm (wrapped, slanted: long sweep names fit)
    ax.set_xticks([3 * i + 0.6 for i in range(len(arms))], [_wrapped(a["label"]) for _, a in arms], fontsize=7,
                  rotation=40 if len(arms) > 2 else 0, ha="right" if len(arms) > 2 else "center",
                  rotation_mode="anchor")
    ax.set_xlim(-0.8, 3 * max(1, len(arms)) - 1.0)
    ax.set_ylabel("final held-out LM (nats/token)")
    ax.set_title("per arm: top-k (o, left) vs calibrated causal threshold (●, right);\n"
                 "a line per seed, a bar at the mean", fontsize=10)
    width = 0.8 / max(1, len(arms))
    xl = np.arange(len(layers))
    for i, (arm, a) in enumerate(arms):
        shares = np.array([[s["causal"]["full_fraction"].get(l, np.nan) for l in layers]
                           for s in a["seeds"].values() if s.get("causal")], dtype=float)
        mean = np.nanmean(shares, 0)
        err = np.stack([mean - np.nanmin(shares, 0), np.nanmax(shares, 0) - mean])
        bx.bar(xl + i * width - 0.4 + width / 2, mean, width, yerr=err, color=colours[arm], label=a["label"],
               capsize=2)
    from matplotlib.lines import Line2D

    budgets = []
    for b in sorted({a["full_fraction_budget"] for _, a in arms}):
        bx.axhline(b, color="k", ls="--", lw=1)
        bx.annotate(f"b = {b:g}", (1.0, b), xycoords=("axes fraction", "data"), xytext=(2, 0),
                    textcoords="offset points", fontsize=7, va="center")
        budgets.append(b)
    bx.set_xticks(xl, [f"layer {l}" for l in layers])
    bx.set_ylim(0, 1)
    bx.set_ylabel("held-out full share, causal threshold")
    bx.set_title("realised full share per controlled layer (mean, min-max over seeds)", fontsize=10)
    key = [Line2D([], [], color="k", ls="--", lw=1, label="budget b (top-k's full share)")] if budgets else []
    _arm_legend(fig, summary, [arm for arm, _ in arms], key)
    _save(fig, path)


def write_plots(summary: dict[str, Any], out: Path) -> dict[str, str]:
    """Write the plots that carry information for this study; return {name: path relative to ``out``}.

    The LM curves and gradient norms when a run finished (none when every run failed); the score
    distribution when the runs recorded scores; the
    full fraction per layer only when an arm routes by threshold; the gate's score scale and G3's action
    dependence when the runs recorded gate diagnostics; each loss term's gradient norm when an arm logged them;
    the causal evaluation when a top-k arm has one; the swept arms' LM when the study has sweeps.
    """
    folder = out / "plots"
    made = []
    if any(a["seeds"] for a in summary["arms"].values()):
        plot_lm(summary, folder / PLOTS["lm_curves"])
        plot_grad_norm(summary, out / "runs", folder / PLOTS["grad_norm"])
        made += ["lm_curves", "grad_norm"]
    if any(s.get("score_quantiles") for a in summary["arms"].values() for s in a["seeds"].values()):
        plot_scores(summary, folder / PLOTS["score_distribution"])
        made.append("score_distribution")
    if threshold_arms(summary):
        plot_full_fraction(summary, folder / PLOTS["full_fraction"])
        made.append("full_fraction")
    if any(layer_diagnostics(s, "final") for a in summary["arms"].values() for s in a["seeds"].values()):
        plot_gate_scale(summary, folder / PLOTS["gate_scale"])
        made.append("gate_scale")
    if loss_grad_arms(summary):
        plot_loss_grad_norms(summary, out / "runs", folder / PLOTS["loss_grad_norms"])
        made.append("loss_grad_norms")
    if causal_arms(summary):
        plot_causal(summary, folder / PLOTS["causal_lm"])
        made.append("causal_lm")
    from specroute.report.sweeps import plot_sweeps, sweeps_of

    if sweeps_of(summary):
        plot_sweeps(summary, folder / PLOTS["sweeps"])
        made.append("sweeps")
    for k in PLOTS.keys() - set(made):  # a plot an earlier report of this study wrote that no longer applies
        (folder / PLOTS[k]).unlink(missing_ok=True)
    return {k: f"plots/{PLOTS[k]}" for k in made}
