"""Training: the backbone stage, the controller stage, the shared trainer loop and the study runner."""

from specroute.train.study import StudyOptions, StudyResult, run_study
from specroute.train.trainer import Interrupted

__all__ = ["Interrupted", "StudyOptions", "StudyResult", "run_study"]
