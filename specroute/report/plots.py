"""The report's plots (matplotlib, Agg backend, PNG): LM curves with a seed band, gradient norms,
full fraction per layer. Each is written atomically into ``<out>/plots/``."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from specroute.store import atomic_write_bytes

PLOTS = {"lm_curves": "lm_curves.png", "grad_norm": "grad_norm.png", "full_fraction": "full_fraction.png"}


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


def _band(ax: Any, x: np.ndarray, ys: np.ndarray, label: str) -> None:
    """Mean line and min-max band over seeds (rows of ``ys``)."""
    line, = ax.plot(x, ys.mean(0), label=f"{label} (n={len(ys)})")
    if len(ys) > 1:
        ax.fill_between(x, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.2, linewidth=0)


def read_train_records(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("event") == "train":
            out.append(rec)
    return out


def plot_lm(summary: dict[str, Any], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for a in summary["arms"].values():
        curves = [np.array(([[0, s["initial_lm"]]] if s.get("initial_lm") is not None else []) + s["lm"], dtype=float)
                  for s in a["seeds"].values()]
        n = min(len(c) for c in curves)
        _band(ax, curves[0][:n, 0], np.stack([c[:n, 1] for c in curves]), a["label"])
    ax.axhline(summary["backbone"]["heldout_lm"], color="k", ls="--", lw=1, label="dense backbone")
    ax.set_xlabel("controller step")
    ax.set_ylabel("held-out LM loss (nats/token)")
    ax.set_title(f"{summary['study']} / {summary['profile']}: LM, mean and min-max over seeds")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_grad_norm(summary: dict[str, Any], runs_dir: Path, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
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
        _band(ax, series[0][k - 1:n, 0], ys, a["label"])
    ax.set_yscale("log")
    ax.set_xlabel("controller step")
    ax.set_ylabel("controller gradient norm (before clipping)")
    ax.set_title("gradient norm, moving average; mean and min-max over seeds")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    _save(fig, path)


def plot_full_fraction(summary: dict[str, Any], path: Path) -> None:
    plt = _plt()
    arms = list(summary["arms"].items())
    layers = sorted({l for _, a in arms for s in a["seeds"].values() for l in s["full_fraction"]["train"]}, key=int)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    width = 0.8 / max(1, 2 * len(arms))
    x = np.arange(len(layers))
    for i, (_, a) in enumerate(arms):
        for j, split in enumerate(("train", "eval")):
            vals = [np.mean([s["full_fraction"][split].get(l, np.nan) for s in a["seeds"].values()]) for l in layers]
            ax.bar(x + (2 * i + j) * width - 0.4 + width / 2, vals, width,
                   label=f"{a['label']} ({split})", alpha=1.0 if split == "train" else 0.55)
    ax.set_xticks(x, [f"layer {l}" for l in layers])
    ax.set_ylim(0, 1)
    ax.set_ylabel("realised full fraction")
    ax.set_title("full fraction per controlled layer (mean over seeds)")
    ax.legend(fontsize=7, ncol=2)
    _save(fig, path)


def write_plots(summary: dict[str, Any], out: Path) -> dict[str, str]:
    """Write every plot; return {name: path relative to ``out``}."""
    folder = out / "plots"
    plot_lm(summary, folder / PLOTS["lm_curves"])
    plot_grad_norm(summary, out / "runs", folder / PLOTS["grad_norm"])
    plot_full_fraction(summary, folder / PLOTS["full_fraction"])
    return {k: f"plots/{v}" for k, v in PLOTS.items()}
