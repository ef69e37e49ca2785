"""The routed decoder: a GPT-style model whose controlled layers route each token's FFN step.

Reads top to bottom: block, decoder. The layers are in :mod:`specroute.model.layers` (attention, FFN),
the routed FFN step — gates, budget decision, full or cheap per token — in :mod:`specroute.model.routing`.

Shape legend: B batch, T tokens, D width (d_model), F FFN hidden, V vocab, L layers.

In a controlled layer (docs/DESIGN.md, "The model") attention runs for every token; then per token the
routed FFN step runs full or cheap (:class:`~specroute.model.routing.RoutedFFN`).

Causal routing: a threshold budget is causal as it is (full iff score > 0); a top-k budget looks ahead,
and runs causally only by a calibrated threshold per controlled layer (full iff score > tau_l,
:mod:`specroute.train.calibration`), passed as ``thresholds``. Generation runs causally, with a KV cache
(:class:`~specroute.model.layers.KVCache`): each new token goes through the blocks alone.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from specroute.model.layers import CausalSelfAttention, KVCache, LayerKV, build_ffn, build_norm
from specroute.model.routing import G3Gate, LayerRouting, RoutedFFN
from specroute.spec.models import RunSpec

#: A forced decision for a controlled layer: a bool tensor (B, T), or True / False for every token.
Force = Mapping[int, "Tensor | bool"]
#: Calibrated score thresholds tau_l by controlled layer (block index): full iff score > tau_l.
Thresholds = Mapping[int, float]


class NonCausalRoutingError(RuntimeError):
    """Raised when a causal path (generation) is asked of a top-k budget, which looks ahead."""


class Block(nn.Module):
    """Pre-norm transformer block; if ``controlled``, its FFN step is routed per token (``routed_ffn``)."""

    def __init__(self, spec: RunSpec, index: int, controlled: bool):
        super().__init__()
        m = spec.model
        self.index = index
        self.ln1 = build_norm(m)
        self.attn = CausalSelfAttention(m)
        self.ln2 = build_norm(m)
        self.ffn = build_ffn(m, m.ffn_hidden)
        self.routed_ffn = RoutedFFN(spec) if controlled else None

    @property
    def controlled(self) -> bool:
        """Whether this block's FFN step is routed."""
        return self.routed_ffn is not None

    def forward(self, h_BTD: Tensor, force: Tensor | bool | None = None, threshold: float | None = None,
                kv: LayerKV | None = None) -> tuple[Tensor, LayerRouting | None]:
        """(B, T, D) -> (B, T, D) and, for a controlled block, its routing record. ``force`` overrides the
        gate's decisions, ``threshold`` replaces the budget's rule by score > threshold (see
        :meth:`RoutedFFN.decide`); ``kv``: this block's attention cache (the T tokens follow the cached ones)."""
        h_BTD = h_BTD + self.attn(self.ln1(h_BTD), kv)
        if self.routed_ffn is None:
            return h_BTD + self.ffn(self.ln2(h_BTD)), None
        full_BT, gate = self.routed_ffn.decide(h_BTD, force, threshold)  # score, decide
        fixed = force is None and threshold is None  # the budget's top-k, not a forced or threshold decision
        n_full = self.routed_ffn.full_count(*h_BTD.shape[:2]) if fixed else None
        h_out = h_BTD + self.routed_ffn.execute(self.ln2(h_BTD), self.ffn, full_BT, gate, n_full)  # run full or cheap
        return h_out, LayerRouting(self.index, full_BT, gate, h_BTD, h_out)


# --------------------------------------------------------------------------------------------------
# decoder


@dataclass
class DecoderOutput:
    """h_BTD: the final hidden state (after the last block, before ``ln_f``); routing: one record per
    controlled layer, in layer order; head: the LM head (``ln_f`` + ``lm_head``), (B, T, D) -> (B, T, V).

    ``logits_BTV`` is computed from ``h_BTD`` on first use (then kept): the losses never ask for it, they
    run the head in chunks of tokens (:func:`specroute.losses.head_token_ce`), so the B x T x V logits are
    not held at once.
    """

    h_BTD: Tensor
    routing: list[LayerRouting]
    head: Callable[[Tensor], Tensor] = field(repr=False)

    @functools.cached_property
    def logits_BTV(self) -> Tensor:
        """Next-token logits (B, T, V)."""
        return self.head(self.h_BTD)


class Decoder(nn.Module):
    """GPT decoder compiled from a :class:`RunSpec`; ``routed=False`` builds the dense backbone only.

    The architecture options of ``spec.model`` decide its parts: no position embedding ``wpe`` under rotary
    positions (``position: rope``, applied in attention), ``ln_f`` of the norm kind, an LM head of its own
    unless ``tie_embeddings``."""

    def __init__(self, spec: RunSpec, routed: bool = True):
        super().__init__()
        m = spec.model
        self.spec = spec
        self.routed = routed
        controlled = set(spec.routing.controlled_layers) if routed else set()
        self.wte = nn.Embedding(m.vocab_size, m.d_model)
        self.wpe = nn.Embedding(m.context_length, m.d_model) if m.position == "learned" else None
        self.blocks = nn.ModuleList(Block(spec, i, i in controlled) for i in range(m.n_layers))
        self.ln_f = build_norm(m)
        self.lm_head = nn.Linear(m.d_model, m.vocab_size, bias=False)
        if m.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self._init_weights()

    # -- initialisation: the one place --------------------------------------------------------------
    def _init_weights(self) -> None:
        """Normal(0, init_std) weights, zero biases, unit norm gains (torch's default); residual projections
        (attention's and the FFNs' ``proj``) scaled by 1/sqrt(2L) (GPT-2); gate output bias = spec ``init_bias``, its weight's std ``score_init_std`` when set; the G3
        target head from its own seed."""
        m = self.spec.model
        for mod in self.modules():
            if isinstance(mod, (nn.Linear, nn.Embedding)):
                nn.init.normal_(mod.weight, 0.0, m.init_std)
                if getattr(mod, "bias", None) is not None:
                    nn.init.zeros_(mod.bias)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, 0.0, m.init_std / math.sqrt(2 * m.n_layers))
        for block in self.controlled_blocks():
            gate = block.routed_ffn.gate
            nn.init.constant_(gate.score_head.bias, gate.init_bias)
            if gate.score_init_std is not None:
                nn.init.normal_(gate.score_head.weight, 0.0, gate.score_init_std)
            if isinstance(gate, G3Gate):
                g = torch.Generator().manual_seed(gate.target_seed + block.index)
                w = torch.randn(gate.target.weight.shape, generator=g) / math.sqrt(m.d_model)
                with torch.no_grad():
                    gate.target.weight.copy_(w)

    # -- structure ---------------------------------------------------------------------------------
    def controlled_blocks(self) -> list[Block]:
        return [b for b in self.blocks if b.controlled]

    def param_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Named parameters by group: ``gate`` (trainable gate parts), ``target_head`` (G3's fixed T),
        ``cheap_ffn``, ``backbone`` (everything else)."""
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {
            "gate": [], "target_head": [], "cheap_ffn": [], "backbone": []
        }
        for name, p in self.named_parameters():
            if ".gate.target." in name:
                groups["target_head"].append((name, p))
            elif ".gate." in name:
                groups["gate"].append((name, p))
            elif ".cheap." in name:
                groups["cheap_ffn"].append((name, p))
            else:
                groups["backbone"].append((name, p))
        return groups

    def set_trainable(self, trainable: list[str]) -> list[nn.Parameter]:
        """Freeze everything except the named groups (the target head is always frozen).

        Returns the trainable parameters (the optimiser's set). Raises ValueError on an unknown group.
        """
        groups = self.param_groups()
        unknown = set(trainable) - {"gate", "cheap_ffn", "backbone"}
        if unknown:
            raise ValueError(f"unknown trainable group(s) {sorted(unknown)}")
        out = []
        for group, params in groups.items():
            on = group in trainable
            for _, p in params:
                p.requires_grad_(on)
                if on:
                    out.append(p)
        return out

    def backbone_state_dict(self) -> dict[str, Tensor]:
        """The dense backbone's weights (shared by every arm and seed of a study)."""
        names = {n for n, _ in self.param_groups()["backbone"]}
        return {k: v for k, v in self.state_dict().items() if k in names}

    def load_backbone(self, state: Mapping[str, Tensor]) -> None:
        """Load a backbone state dict; every backbone key must be present and nothing else given.

        Raises RuntimeError naming missing or unexpected keys (strict loading of the backbone part).
        """
        expected = set(self.backbone_state_dict())
        given = set(state)
        if expected != given:
            raise RuntimeError(
                f"backbone keys differ: missing {sorted(expected - given)[:5]}, "
                f"unexpected {sorted(given - expected)[:5]}"
            )
        self.load_state_dict(dict(state), strict=False)

    # -- forward -----------------------------------------------------------------------------------
    def embed(self, idx_BT: Tensor, offset: int = 0) -> Tensor:
        """Token plus position embeddings of tokens at positions ``offset..offset+T-1``, (B, T) -> (B, T, D)
        (the token embeddings alone under rotary positions).

        Raises ValueError if the last position is beyond the context length."""
        T = idx_BT.shape[1]
        if offset + T > self.spec.model.context_length:
            raise ValueError(f"sequence of {offset + T} tokens exceeds "
                             f"context_length={self.spec.model.context_length}")
        if self.wpe is None:  # rotary positions: applied in attention (from the cache's offset)
            return self.wte(idx_BT)
        pos = torch.arange(offset, offset + T, device=idx_BT.device)
        return self.wte(idx_BT) + self.wpe(pos)

    def run_blocks(
        self, h_BTD: Tensor, start: int = 0, force: Force | None = None, all_full: bool = False,
        thresholds: Thresholds | None = None, cache: KVCache | None = None, stop: int | None = None,
    ) -> tuple[Tensor, list[LayerRouting]]:
        """Run blocks ``start..L-1`` (``stop``: up to ``stop - 1`` only). ``force`` fixes decisions per
        controlled layer; ``all_full`` forces every controlled layer from ``start`` on to full (the
        off-policy continuation); ``thresholds`` decides the layers it names by score > tau_l (the
        calibrated causal rule); ``cache``: the attention cache, one :class:`LayerKV` per block (extended,
        not advanced)."""
        routing = []
        for block in self.blocks[start:stop]:
            f = True if (all_full and block.controlled) else (force or {}).get(block.index)
            kv = cache.layers[block.index] if cache is not None else None
            h_BTD, rec = block(h_BTD, f, (thresholds or {}).get(block.index), kv)
            if rec is not None:
                routing.append(rec)
        return h_BTD, routing

    def head(self, h_BTD: Tensor) -> Tensor:
        """The LM head: ``ln_f`` then ``lm_head``, (..., D) -> (..., V) logits."""
        return self.lm_head(self.ln_f(h_BTD))

    def forward(self, idx_BT: Tensor, force: Force | None = None, all_full: bool = False,
                thresholds: Thresholds | None = None, cache: KVCache | None = None) -> DecoderOutput:
        """idx_BT: token ids (B, T) -> DecoderOutput(final hidden state (B, T, D), routing per controlled
        layer; logits (B, T, V) on demand).

        ``thresholds``: calibrated tau_l per controlled layer, full iff score > tau_l (the causal rule of a
        top-k gate; the layers it does not name keep the budget's rule). ``cache``: the tokens follow the
        ``cache.offset`` tokens it holds (their positions start there); their keys and values are appended
        and the offset advanced by T. Raises ValueError if the positions exceed the context length.
        """
        offset = cache.offset if cache is not None else 0
        h, routing = self.run_blocks(self.embed(idx_BT, offset), 0, force, all_full, thresholds, cache)
        if cache is not None:
            cache.offset += idx_BT.shape[1]
        return DecoderOutput(h, routing, self.head)

    def causal_thresholds(self, thresholds: Thresholds | None = None) -> Thresholds | None:
        """The thresholds that make this model's routing causal: None for a dense model or a threshold
        budget (its own rule, score > 0, is causal); for a top-k budget ``thresholds``, which must name
        every controlled layer.

        Raises NonCausalRoutingError for a top-k budget without calibrated thresholds: its decision for
        token t depends on tokens after t, so it cannot run causally without changing its decisions.
        """
        if not self.routed or self.spec.routing.budget.causal:
            return None
        missing = [b.index for b in self.controlled_blocks() if b.index not in (thresholds or {})]
        if missing:
            raise NonCausalRoutingError(
                f"routing.budget.enforcement={self.spec.routing.budget.enforcement} looks at future "
                "tokens (top-k is not causal); generation needs enforcement=threshold or a threshold "
                f"calibrated per controlled layer (missing for layer(s) {missing})"
            )
        return thresholds

    @torch.no_grad()
    def generate(self, idx_BT: Tensor, max_new_tokens: int, temperature: float = 1.0,
                 thresholds: Thresholds | None = None, use_cache: bool = True,
                 generator: torch.Generator | None = None) -> Tensor:
        """Sample ``max_new_tokens`` tokens autoregressively, (B, T) -> (B, T + max_new_tokens).

        Routing is causal: a threshold budget's own rule, or for a top-k budget the calibrated
        ``thresholds`` (tau_l per controlled layer). ``temperature`` 0 takes the most likely token (greedy);
        > 0 samples from softmax(logits / temperature) with ``generator``. ``use_cache``: keep each layer's
        attention keys and values (:class:`KVCache`), so that each new token runs through the blocks alone;
        once the sequence outgrows the context length, the last ``context_length`` tokens are recomputed
        each step (their positions shift), which is what ``use_cache=False`` does at every step.

        Raises NonCausalRoutingError for a top-k budget without ``thresholds``
        (:meth:`causal_thresholds`); ValueError for a temperature that is negative or not finite.
        """
        if not (math.isfinite(temperature) and temperature >= 0):
            raise ValueError(f"temperature={temperature}: must be a finite number >= 0 (0: greedy)")
        thresholds = self.causal_thresholds(thresholds)
        ctx = self.spec.model.context_length
        cache = KVCache.empty(len(self.blocks)) if use_cache else None
        step_idx = idx_BT[:, -ctx:]  # what the next call runs: the whole prompt first
        for _ in range(max_new_tokens):
            if cache is not None and cache.offset + step_idx.shape[1] > ctx:
                cache = None  # outgrown: recompute the window from now on
            if cache is None:
                step_idx = idx_BT[:, -ctx:]
            logits_BV = self(step_idx, thresholds=thresholds, cache=cache).logits_BTV[:, -1].float()
            if temperature == 0:
                nxt = logits_BV.argmax(-1, keepdim=True)
            else:
                # shifted to <= 0 and T kept a normal float32: a tiny T is greedy in the limit, never inf or nan
                shifted = logits_BV - logits_BV.amax(-1, keepdim=True)
                scaled = shifted / max(temperature, torch.finfo(torch.float32).tiny)
                nxt = torch.multinomial(torch.softmax(scaled, -1), 1, generator=generator)
            idx_BT = torch.cat([idx_BT, nxt], dim=1)
            step_idx = nxt
        return idx_BT


def build_model(spec: RunSpec, routed: bool = True) -> Decoder:
    """Compile a spec into a model: the routed decoder, with the spec's trainable set applied."""
    model = Decoder(spec, routed=routed)
    if routed:
        model.set_trainable(list(spec.train.trainable))
    return model
