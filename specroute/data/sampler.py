"""Batches of token windows: random windows for training, fixed windows for evaluation.

A window is ``seq_len + 1`` consecutive tokens inside one shard; the model reads the first ``seq_len``
(idx) and predicts the last ``seq_len`` (targets). Training windows start at positions drawn uniformly
with a ``torch.Generator`` (seeded from the run's seed; its state is part of the trainer's state, so a
resumed run draws the same windows). Evaluation windows are evenly spaced over the held-out split and the
same for every run of a study.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from specroute.store import UserError


class WindowSampler:
    """Windows of ``seq_len + 1`` tokens from a list of shards (1-D uint16 arrays)."""

    def __init__(self, shards: list[np.ndarray], seq_len: int, split: str = "train"):
        self.shards = shards
        self.window = seq_len + 1
        starts = np.array([max(0, len(s) - self.window + 1) for s in shards], dtype=np.int64)
        self.cum = np.concatenate([[0], np.cumsum(starts)])
        self.n_starts = int(self.cum[-1])
        if self.n_starts <= 0:
            longest = max((len(s) for s in shards), default=0)
            raise UserError(f"the {split} split is too short for windows of {self.window} tokens "
                            f"(longest shard: {longest} tokens); lower seq_len or use more data")

    def _gather(self, starts: np.ndarray) -> tuple[Tensor, Tensor]:
        shard = np.searchsorted(self.cum, starts, side="right") - 1
        rows = [np.asarray(self.shards[k][s - self.cum[k]: s - self.cum[k] + self.window], dtype=np.int64)
                for k, s in zip(shard, starts)]
        w = torch.from_numpy(np.stack(rows))
        return w[:, :-1], w[:, 1:]

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """A random batch (idx, targets), each (B, T) int64 on the CPU."""
        starts = torch.randint(0, self.n_starts, (batch_size,), generator=generator).numpy()
        return self._gather(starts)

    def fixed(self, n_batches: int, batch_size: int) -> list[tuple[Tensor, Tensor]]:
        """``n_batches`` evaluation batches of evenly spaced windows (the same on every call)."""
        n = n_batches * batch_size
        starts = np.linspace(0, self.n_starts - 1, n).round().astype(np.int64)
        return [self._gather(starts[i * batch_size:(i + 1) * batch_size]) for i in range(n_batches)]
