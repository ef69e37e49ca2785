"""``specroute bench``: throughput and memory of routed vs dense training beside a reference model.

See :mod:`specroute.bench.runner` for what is timed and how, :mod:`specroute.bench.cases` for the cases,
:mod:`specroute.bench.figures` for the figures and targets, :mod:`specroute.bench.report` for the files.
"""

from specroute.bench.cases import BUDGETS, BenchOptions
from specroute.bench.report import (
           check_out_dir,
           default_out_dir,
           rich_tables,
           write_results,
)
from specroute.bench.runner import run_bench

__all__ = ["BUDGETS", "BenchOptions", "check_out_dir", "default_out_dir", "rich_tables", "run_bench",
           "write_results"]
