"""The base of every spec model, and the upper bounds on the sizes a spec may ask for."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

# Upper bounds on sizes (model, routing, gates, training stages, data, study): far above any study this toolkit
# runs on one machine (the paper profile is 16 x 768, vocabulary 50257, context 1024, batch 32), low enough that
# a typo (d_model: 1000000000000) is a spec error with its line rather than an allocator crash. Whether a model
# within them fits the machine is judged from its memory estimate (specroute.train.memory).

#: Largest d_model, latent size and head count.
MAX_WIDTH = 1 << 16
#: Largest hidden width of an FFN, a gate or a predictor.
MAX_HIDDEN = 1 << 20
#: Most transformer blocks.
MAX_LAYERS = 1024
#: Largest vocabulary.
MAX_VOCAB = 1 << 21
#: Longest context and sequence, in tokens.
MAX_POSITIONS = 1 << 20
#: Largest integer seed of the target head (torch's generators take 64-bit seeds; the block index is added).
MAX_SEED = (1 << 63) - 1
#: Most tokens a data source may cache.
MAX_DATA_TOKENS = 1 << 40

#: Most optimiser steps of a stage (and the largest step count of any cadence).
MAX_STEPS = 10**9
#: Most sequences in a batch, and most held-out batches per evaluation.
MAX_BATCH = 1 << 20
#: Most LM levels in ``lm_thresholds`` (each is a column of the report).
MAX_THRESHOLDS = 64
#: Most arms of a study and most seeds (every arm x seed is a run).
MAX_ARMS = 64
MAX_SEEDS = 1000

#: A study's name and its arms' names each name a folder (``reports/<name>/``, ``<out>/runs/<arm>/``):
#: letters, digits, ``_``, ``.`` and ``-``, starting with a letter, digit or ``_``, at most 200 characters
#: (so never empty, ``..``, a path or hidden).
FOLDER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,199}")


def folder_name(name: str, what: str) -> str:
    """``name`` if it matches :data:`FOLDER_NAME`. Raises ValueError naming ``what`` (e.g. "arm name")."""
    if not FOLDER_NAME.fullmatch(name):
        raise ValueError(folder_name_reason(name, what))
    return name


def folder_name_reason(name: str, what: str) -> str:
    """Why ``name`` (``what``: "arm name", ...) is not a :data:`FOLDER_NAME`."""
    return (f"{what} {name!r} is used as a folder name: use letters, digits, _, . and - (starting with a letter, "
            "digit or _; at most 200 characters)")


class Strict(BaseModel):
    """Base for every spec model: unknown keys are errors, instances are immutable, values are not
    coerced across types (``true`` is not the integer 1, ``"4"`` is not a number; an integer is a valid
    float), and every float is finite (``.inf`` and ``.nan`` are refused: "Input should be a finite
    number").

    Cross-field validators raise ``ValueError("field.path: reason")``; the loader turns the leading
    path (relative to the model) into the error's field path.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, strict=True, allow_inf_nan=False)
