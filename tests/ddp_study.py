"""Launched by tests/test_distributed.py under torchrun: one run of the micro A3 study, data parallel over the
processes, interrupted by a step budget and resumed in the same processes.

Usage: torchrun --nproc_per_node=K tests/ddp_study.py OUT CACHE BUDGET [--set ITEM ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import micro
from specroute.train import Interrupted, StudyOptions, run_study

out, cache, budget, sets = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[5::2]
resolved = micro(*sets)
options = {"out": out, "arms": ["G3_utilrank"], "seeds": [0], "device": "cpu", "cache": cache, "workers": 1}
try:
    run_study(resolved, StudyOptions(**options, max_steps_this_session=budget))
    raise SystemExit("the step budget did not interrupt the run")
except Interrupted:
    pass
run_study(resolved, StudyOptions(**options, resume=True))
