"""The backbone's layers, shared by every block: the norm, rotary positions, causal self-attention and the
FFNs, and the KV cache that lets generation run each new token through the blocks alone. The spec's
architecture options pick the layers (docs/DESIGN.md, "The model"): GPT-2's LayerNorm, learned positions (in
the decoder) and tanh-GELU MLP by default; Llama's RMSNorm, rotary positions, SwiGLU and grouped-query
attention as options.

Shape legend: B batch, T tokens (new this call), P tokens cached before them, D width (d_model), H query
heads, G key/value heads (each serves H / G query heads), E head width (D / H), L layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from specroute.spec.models import ModelSpec


@dataclass
class LayerKV:
    """One layer's cached attention keys and values, (B, G, P, E) each (None before the first token): G
    key/value heads (the field names say H; they are the query heads' count without grouped-query
    attention); under rotary positions the keys are cached rotated."""

    k_BHPE: Tensor | None = None
    v_BHPE: Tensor | None = None

    def extend(self, k_BHTE: Tensor, v_BHTE: Tensor) -> tuple[Tensor, Tensor]:
        """Append the new tokens' keys and values; returns all of them, (B, G, P + T, E) each."""
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


def build_norm(m: ModelSpec) -> nn.LayerNorm | nn.RMSNorm:
    """A backbone norm over D of the spec's kind: LayerNorm (with a bias when ``bias``) or RMSNorm (a gain
    only: x / sqrt(mean(x^2) + eps) * gain); epsilon ``norm_eps``."""
    if m.norm == "rmsnorm":
        return nn.RMSNorm(m.d_model, eps=m.norm_eps)
    return nn.LayerNorm(m.d_model, eps=m.norm_eps, bias=m.bias)


class Rotary(nn.Module):
    """Rotary position embedding of queries and keys (RoPE, Su et al. 2021, arXiv 2104.09864), in the
    rotate-half layout of Llama's Hugging Face implementation: dimensions i and i + E/2 of a head form a
    pair, turned by the angle position * theta^(-2i / E), i = 0 .. E/2 - 1. No parameters: the
    frequencies are a buffer that is not saved."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, q_BHTE: Tensor, k_BGTE: Tensor, offset: int = 0) -> tuple[Tensor, Tensor]:
        """Rotate queries (B, H, T, E) and keys (B, G, T, E) of the tokens at positions
        ``offset .. offset + T - 1``; same shapes and dtype out."""
        T = q_BHTE.shape[2]
        pos_T = torch.arange(offset, offset + T, device=q_BHTE.device, dtype=torch.float32)
        half_TE = pos_T[:, None] * self.inv_freq.float()[None, :]  # (T, E / 2) angles
        angle_TE = torch.cat([half_TE, half_TE], dim=-1)
        cos, sin = angle_TE.cos().to(q_BHTE.dtype), angle_TE.sin().to(q_BHTE.dtype)
        return q_BHTE * cos + _rotate_half(q_BHTE) * sin, k_BGTE * cos + _rotate_half(k_BGTE) * sin


def _rotate_half(x: Tensor) -> Tensor:
    """(x1, x2) -> (-x2, x1) over the last dimension's halves: the pair partner of each dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


class CausalSelfAttention(nn.Module):
    """Causal self-attention with H query heads and G key/value heads (G = H: multi-head; G < H:
    grouped-query), rotary positions when the spec says so. One fused projection gives q (D), k and v
    (G * E each); ``proj`` maps the concatenated heads back to D."""

    def __init__(self, m: ModelSpec):
        super().__init__()
        self.n_heads, self.kv_heads = m.n_heads, m.kv_heads
        self.qkv = nn.Linear(m.d_model, m.d_model + 2 * m.kv_dim, bias=m.attn_bias)
        self.proj = nn.Linear(m.d_model, m.d_model, bias=m.bias)
        self.rotary = Rotary(m.head_dim, m.rope_theta) if m.position == "rope" else None

    def forward(self, x_BTD: Tensor, kv: LayerKV | None = None) -> Tensor:
        """Causal self-attention, (B, T, D) -> (B, T, D); H heads of width E = D / H, each reading the keys
        and values of its group.

        ``kv``: this layer's cache; the T tokens are then the ones after its P cached tokens (positions P ..
        P + T - 1, which is where rotary positions start): they attend to the cached keys and to each other
        causally, and their keys and values are appended to it.
        """
        B, T, D = x_BTD.shape
        H, G = self.n_heads, self.kv_heads
        E = D // H
        q, k, v = self.qkv(x_BTD).split([D, G * E, G * E], dim=2)
        q_BHTE = q.view(B, T, H, E).transpose(1, 2)
        k_BGTE, v_BGTE = (t.view(B, T, G, E).transpose(1, 2) for t in (k, v))
        P = 0 if kv is None or kv.k_BHPE is None else kv.k_BHPE.shape[2]
        if self.rotary is not None:
            q_BHTE, k_BGTE = self.rotary(q_BHTE, k_BGTE, offset=P)
        if P == 0:
            if kv is not None:
                kv.extend(k_BGTE, v_BGTE)
            y_BHTE = F.scaled_dot_product_attention(q_BHTE, k_BGTE, v_BGTE, is_causal=True, enable_gqa=G != H)
        else:
            k_BGSE, v_BGSE = kv.extend(k_BGTE, v_BGTE)  # S = P + T keys
            # new token i (position P + i) sees keys 0..P + i
            mask_TS = torch.ones(T, P + T, dtype=torch.bool, device=x_BTD.device).tril(diagonal=P)
            y_BHTE = F.scaled_dot_product_attention(q_BHTE, k_BGSE, v_BGSE, attn_mask=mask_TS, enable_gqa=G != H)
        return self.proj(y_BHTE.transpose(1, 2).reshape(B, T, D))  # heads concatenated: (B, T, D)


class FFN(nn.Module):
    """GPT-2's MLP (``ffn: mlp``): proj(GELU_tanh(fc(x))), D -> hidden -> D."""

    def __init__(self, d_model: int, hidden: int, bias: bool):
        super().__init__()
        self.fc = nn.Linear(d_model, hidden, bias=bias)
        self.proj = nn.Linear(hidden, d_model, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


class SwiGLU(nn.Module):
    """Llama's FFN (``ffn: swiglu``; Shazeer 2020, arXiv 2002.05202): proj(SiLU(fc(x)) * fc_up(x)),
    D -> hidden -> D. Hugging Face's names: ``fc`` is gate_proj, ``fc_up`` up_proj, ``proj`` down_proj."""

    def __init__(self, d_model: int, hidden: int, bias: bool):
        super().__init__()
        self.fc = nn.Linear(d_model, hidden, bias=bias)
        self.fc_up = nn.Linear(d_model, hidden, bias=bias)
        self.proj = nn.Linear(hidden, d_model, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(F.silu(self.fc(x)) * self.fc_up(x))


def build_ffn(m: ModelSpec, hidden: int) -> FFN | SwiGLU:
    """An FFN of the spec's kind (``ffn``) and hidden width: the block's full FFN (``ffn_hidden``) or a
    controlled layer's cheap FFN (``routing.cheap_ffn_hidden``)."""
    return (SwiGLU if m.ffn == "swiglu" else FFN)(m.d_model, hidden, m.bias)
