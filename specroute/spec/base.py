"""The base of every spec model."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """Base for every spec model: unknown keys are errors, instances are immutable, and values are not
    coerced across types (``true`` is not the integer 1, ``"4"`` is not a number; an integer is a valid
    float).

    Cross-field validators raise ``ValueError("field.path: reason")``; the loader turns the leading
    path (relative to the model) into the error's field path.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, strict=True)
