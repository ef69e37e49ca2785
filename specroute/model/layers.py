"""The backbone's layers: causal self-attention and the GELU FFN (GPT-2's), shared by every block, and the
KV cache that lets generation run each new token through the blocks alone.

Shape legend: B batch, T tokens (new this call), P tokens cached before them, D width (d_model), H heads,
E head width (D / H), L layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from specroute.spec.models import ModelSpec


@dataclass
class LayerKV:
    """One layer's cached attention keys and values, (B, H, P, E) each (None before the first token)."""

    k_BHPE: Tensor | None = None
    v_BHPE: Tensor | None = None

    def extend(self, k_BHTE: Tensor, v_BHTE: Tensor) -> tuple[Tensor, Tensor]:
        """Append the new tokens' keys and values; returns all of them, (B, H, P + T, E) each."""
        if self.k_BHPE is not None:
            k_BHTE = torch.cat([self.k_BHPE, k_BHTE], dim=2)
            v_BHTE = torch.cat([self.v_BHPE, v_BHTE], dim=2)
        self.k_BHPE, self.v_BHPE = k_BHTE, v_BHTE
        return k_BHTE, v_BHTE


@dataclass
class KVCache:
    """The attention keys and values of the tokens a sequence has seen so far, one :class:`LayerKV` per
    block, and ``offset``: how many tokens are cached, i.e. the position of the next token (positions are
    0-based; the decoder advances it after each call). Attention is never routed, so a routed model's cache
    is the dense model's. Build one with :meth:`empty`."""

    layers: list[LayerKV] = field(default_factory=list)
    offset: int = 0

    @classmethod
    def empty(cls, n_layers: int) -> KVCache:
        return cls([LayerKV() for _ in range(n_layers)], 0)


class CausalSelfAttention(nn.Module):
    def __init__(self, m: ModelSpec):
        super().__init__()
        self.n_heads = m.n_heads
        self.qkv = nn.Linear(m.d_model, 3 * m.d_model, bias=m.bias)
        self.proj = nn.Linear(m.d_model, m.d_model, bias=m.bias)

    def forward(self, x_BTD: Tensor, kv: LayerKV | None = None) -> Tensor:
        """Causal multi-head self-attention, (B, T, D) -> (B, T, D); H heads of width E = D / H.

        ``kv``: this layer's cache; the T tokens are then the ones after its P cached tokens: they attend to
        the cached keys and to each other causally, and their keys and values are appended to it.
        """
        B, T, D = x_BTD.shape
        q, k, v = self.qkv(x_BTD).split(D, dim=2)  # 3 x (B, T, D)
        q, k, v = (t.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2) for t in (q, k, v))  # (B, H, T, E)
        if kv is None or kv.k_BHPE is None:
            if kv is not None:
                kv.extend(k, v)
            y_BHTE = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            P = kv.k_BHPE.shape[2]
            k, v = kv.extend(k, v)  # (B, H, P + T, E)
            # new token i (position P + i) sees keys 0..P + i
            mask_TS = torch.ones(T, P + T, dtype=torch.bool, device=x_BTD.device).tril(diagonal=P)
            y_BHTE = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_TS)
        return self.proj(y_BHTE.transpose(1, 2).reshape(B, T, D))  # heads concatenated: (B, T, D)


class FFN(nn.Module):
    """Two-layer GELU MLP, D -> hidden -> D (GPT-2's tanh GELU)."""

    def __init__(self, d_model: int, hidden: int, bias: bool):
        super().__init__()
        self.fc = nn.Linear(d_model, hidden, bias=bias)
        self.proj = nn.Linear(hidden, d_model, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))
