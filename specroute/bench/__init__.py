"""``specroute bench``: throughput and memory of routed vs dense training beside a reference model.

See :mod:`specroute.bench.runner` for what is timed and how, :mod:`specroute.bench.report` for the
figures, targets and files.
"""

from specroute.bench.report import check_out_dir, default_out_dir, rich_tables, write_results
from specroute.bench.runner import BUDGETS, BenchOptions, run_bench

__all__ = ["BUDGETS", "BenchOptions", "check_out_dir", "default_out_dir", "rich_tables", "run_bench",
           "write_results"]
