"""The report's sweep figures: per ``sweeps:`` entry of the study, the LM of each swept arm against its grid
values (report.md table, ``plots/sweeps.png``). summary.json's ``sweeps`` (:func:`specroute.report.summary.
sweep_entries`) says which arm has which values; the metrics are the arms' own (means and spreads over seeds)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from specroute.text import md_table

#: The arm metrics shown per swept arm (report table and plot panels), with their headers.
SWEEP_METRICS = {"avg_lm": "avg_lm", "final_lm": "final_lm", "causal_final_lm": "final_lm causal"}
#: The header of a sweep table's last column, which marks the arm of lowest avg_lm.
SWEEP_NOTE = "note"


def sweeps_of(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The summary's sweeps with at least one finished arm, each with ``done``: its arms present in ``arms``."""
    out = []
    for sw in summary.get("sweeps") or []:
        done = [a for a in sw["arms"] if a in summary["arms"]]
        if done:
            out.append({**sw, "done": done})
    return out


def _pm(arm: dict[str, Any], metric: str) -> str:
    m, s = arm["mean"].get(metric), arm["std"].get(metric)
    if m is None:
        return "–"
    return f"{m:.4f} ± {s:.4f}" if len(arm["seeds"]) > 1 else f"{m:.4f}"


def sweeps_section(summary: dict[str, Any]) -> list[str]:
    """The "Sweeps" section (empty for a study without sweeps): per sweep, one row per swept arm with its
    grid values and :data:`SWEEP_METRICS` (mean ± std over seeds), the arm of lowest ``avg_lm`` marked."""
    lines: list[str] = []
    for sw in sweeps_of(summary):
        arms = summary["arms"]
        metrics = [m for m in SWEEP_METRICS if any(arms[a]["mean"].get(m) is not None for a in sw["done"])]
        best = min(sw["done"], key=lambda a: arms[a]["mean"].get("avg_lm") or float("inf"))
        rows = [(*(f"{sw['arms'][a][p]:g}" if isinstance(sw["arms"][a][p], float) else str(sw["arms"][a][p])
                   for p in sw["grid"]), *(_pm(arms[a], m) for m in metrics), "lowest avg_lm" if a == best else "")
                for a in sw["done"]]
        lines += ["", f"### Sweep `{sw['name']}`" + (f" ({sw['label']})" if sw["label"] else ""), "",
                  f"{len(sw['done'])} of {len(sw['arms'])} arms finished; mean ± std over seeds. Plot: "
                  + "`plots/sweeps.png`.", "",
                  *md_table((*sw["grid"], *(SWEEP_METRICS[m] for m in metrics), SWEEP_NOTE), rows)]
    return lines


def plot_sweeps(summary: dict[str, Any], path: Path) -> None:
    """One panel per distinct grid (sweeps over the same fields share a panel): avg_lm (mean, whiskers ± std
    over seeds) against the first grid field's values, one line per sweep and combination of the other
    fields' values."""
    from specroute.report.plots import _legend, _plt, _save

    plt = _plt()
    panels: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for sw in sweeps_of(summary):
        panels.setdefault(tuple(sw["grid"]), []).append(sw)
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), squeeze=False)
    for ax, (grid, sweeps) in zip(axes[0], panels.items()):
        first, rest = grid[0], grid[1:]
        lines: dict[tuple, list[tuple[Any, float, float]]] = {}
        for sw in sweeps:
            for a in sw["done"]:
                values, arm = sw["arms"][a], summary["arms"][a]
                if arm["mean"].get("avg_lm") is not None:
                    lines.setdefault((sw["name"], *(values[p] for p in rest)), []).append(
                        (values[first], arm["mean"]["avg_lm"], arm["std"].get("avg_lm") or 0.0))
        xs_all = [t[0] for pts in lines.values() for t in pts]
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs_all)
        for (name, *key), pts in lines.items():
            pts.sort(key=lambda t: t[0] if numeric else str(t[0]))
            x = [t[0] for t in pts] if numeric else [str(t[0]) for t in pts]
            label = ", ".join([name if len(sweeps) > 1 or not rest else "",
                               *(f"{p.rsplit('.', 1)[-1]}={v:g}" if isinstance(v, float) else f"{p}={v}"
                                 for p, v in zip(rest, key))]).strip(", ")
            ax.errorbar(x, [t[1] for t in pts], yerr=[t[2] for t in pts], marker="o", capsize=3, label=label or name)
        if numeric and xs_all:
            xs = np.array(sorted(set(xs_all)), dtype=float)
            if xs.min() > 0 and xs.max() / xs.min() >= 8:
                ax.set_xscale("log")
                ax.minorticks_off()
            ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.set_xlabel(first)
        ax.set_ylabel("avg_lm (held-out nats/token)")
        ax.set_title(f"sweep{'s' if len(sweeps) > 1 else ''} {', '.join(sw['name'] for sw in sweeps)} "
                     "(mean ± std over seeds)", fontsize=9)
        ax.grid(alpha=0.3)
        _legend(ax, fontsize=7)
    _save(fig, path)
