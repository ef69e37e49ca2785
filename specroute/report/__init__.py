"""Reports: summary.json, report.md and plots of a study (docs/DESIGN.md, "Reports")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from specroute.report.markdown import write_markdown
from specroute.report.plots import write_plots
from specroute.report.summary import build_summary
from specroute.store import atomic_write_json


def write_report(out: Path, summary: dict[str, Any], resolved: Any = None) -> None:
    """Write summary.json, the plots and report.md into ``out`` (each file atomically)."""
    atomic_write_json(out / "summary.json", summary)
    plots = write_plots(summary, out)
    write_markdown(summary, plots, out / "report.md")


__all__ = ["build_summary", "write_report"]
