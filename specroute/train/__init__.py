"""Training: the backbone stage, the controller stage, the shared trainer loop and the study runner.

The names below load on first use, so that a worker process that imports :mod:`specroute.train.runs`
does not load the study runner and the report with it (start-up time of every worker).
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {"StudyOptions": "specroute.train.study", "StudyResult": "specroute.train.study",
          "run_study": "specroute.train.study", "Interrupted": "specroute.train.trainer"}

__all__ = ["Interrupted", "StudyOptions", "StudyResult", "run_study"]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
