"""The spec language (models) and its loader (YAML, extends, profiles, overrides, errors)."""

from specroute.spec.loader import Resolved, SpecError, load_study, rebuild
from specroute.spec.models import RunSpec
from specroute.spec.study import StudySpec

__all__ = ["Resolved", "RunSpec", "SpecError", "StudySpec", "load_study", "rebuild"]
