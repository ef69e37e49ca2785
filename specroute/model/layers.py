"""The backbone's layers: causal self-attention and the GELU FFN (GPT-2's), shared by every block.

Shape legend: B batch, T tokens, D width (d_model), H heads, E head width (D / H).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from specroute.spec.models import ModelSpec


class CausalSelfAttention(nn.Module):
    def __init__(self, m: ModelSpec):
        super().__init__()
        self.n_heads = m.n_heads
        self.qkv = nn.Linear(m.d_model, 3 * m.d_model, bias=m.bias)
        self.proj = nn.Linear(m.d_model, m.d_model, bias=m.bias)

    def forward(self, x_BTD: Tensor) -> Tensor:
        """Causal multi-head self-attention, (B, T, D) -> (B, T, D); H heads of width E = D / H."""
        B, T, D = x_BTD.shape
        q, k, v = self.qkv(x_BTD).split(D, dim=2)  # 3 x (B, T, D)
        q, k, v = (t.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2) for t in (q, k, v))  # (B, H, T, E)
        y_BHTE = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y_BHTE.transpose(1, 2).reshape(B, T, D))  # heads concatenated: (B, T, D)


class FFN(nn.Module):
    """Two-layer GELU MLP, D -> hidden -> D (GPT-2's tanh GELU)."""

    def __init__(self, d_model: int, hidden: int, bias: bool):
        super().__init__()
        self.fc = nn.Linear(d_model, hidden, bias=bias)
        self.proj = nn.Linear(hidden, d_model, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))
