"""Small metrics shared by the trainer, the report and the verifiers."""

from __future__ import annotations

import torch
from torch import Tensor


def latent_variance(z_NK: Tensor) -> float:
    """Mean per-dimension variance of latents (N, K) across tokens; ~0 means a collapsed predictor."""
    return z_NK.float().var(dim=0, unbiased=False).mean().item()


def effective_rank(z_NK: Tensor) -> float:
    """Effective rank (Roy & Vetterli, 2007) of centred latents (N, K): exp of the entropy of the
    normalised singular values. 1 = all tokens on one line; K = isotropic. Returns 0.0 for all-equal rows."""
    z = z_NK.float() - z_NK.float().mean(dim=0, keepdim=True)
    s = torch.linalg.svdvals(z)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return torch.exp(-(p * p.log()).sum()).item()


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors (average ranks for ties)."""
    def ranks(x: Tensor) -> Tensor:
        x = x.double().flatten()
        order = x.argsort()
        r = torch.empty_like(x)
        r[order] = torch.arange(len(x), dtype=torch.double)
        # average ranks of ties
        uniq, inv = torch.unique(x, return_inverse=True)
        sums = torch.zeros(len(uniq), dtype=torch.double).index_add_(0, inv, r)
        counts = torch.zeros(len(uniq), dtype=torch.double).index_add_(0, inv, torch.ones_like(r))
        return (sums / counts)[inv]
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = (ra.norm() * rb.norm()).item()
    return float((ra @ rb).item() / denom) if denom > 0 else 0.0
