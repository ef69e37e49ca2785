"""Generation with a KV cache: greedy output equals the no-cache recompute (dense, threshold-routed, top-k with
calibrated thresholds), each new token's routing decisions equal the full-sequence causal forward's, the
cache's positions, and the refusals (top-k without thresholds, a negative temperature)."""

from __future__ import annotations

import pytest
import torch
from helpers import G3, tiny_spec, tokens
from torch.testing import assert_close

from specroute.model.decoder import NonCausalRoutingError, build_model
from specroute.model.layers import KVCache
from specroute.spec.loader import deep_merge
from specroute.train.calibration import calibrate

#: Weights large enough that the next-token logits are far from ties (greedy decoding is then well defined).
PEAKED = {"model": {"init_std": 0.2}}
THRESHOLD = {"routing": {"budget": {"enforcement": "threshold"}}}


def model_of(update, routed=True, seed=0):
    """A model of the tiny spec with ``update``; a routed one's gate biases are set, layer by layer, to minus
    the median score on some text, so that about half of the tokens run full under score > 0."""
    torch.manual_seed(seed)
    spec = tiny_spec(deep_merge(PEAKED, update))
    model = build_model(spec, routed=routed).eval()
    idx = tokens(2, 24, seed=99)
    with torch.no_grad():
        for block in model.controlled_blocks():
            score = next(r for r in model(idx).routing if r.layer == block.index).gate.score_BT
            block.routed_ffn.gate.score_head.bias -= score.median()
    return model


def stepwise(model, idx_BT, thresholds=None, first=3):
    """Run ``idx_BT`` through the cache: its first ``first`` tokens at once, then one token per call;
    returns the logits (B, T, V) and the decisions per controlled layer (B, T), concatenated over calls."""
    cache = KVCache.empty(len(model.blocks))
    logits, decisions = [], {}
    with torch.no_grad():
        for a, b in [(0, first), *((t, t + 1) for t in range(first, idx_BT.shape[1]))]:
            out = model(idx_BT[:, a:b], thresholds=thresholds, cache=cache)
            logits.append(out.logits_BTV)
            for rec in out.routing:
                decisions.setdefault(rec.layer, []).append(rec.full_BT)
    assert cache.offset == idx_BT.shape[1]
    return torch.cat(logits, 1), {layer: torch.cat(d, 1) for layer, d in decisions.items()}


def test_dense_cache_matches_the_full_forward_and_greedy_recompute():
    model = model_of({}, routed=False)
    idx = tokens(2, 20, seed=1)
    logits, _ = stepwise(model, idx)
    with torch.no_grad():
        assert_close(logits, model(idx).logits_BTV, atol=1e-5, rtol=1e-5)
    prompt = tokens(2, 5, seed=2)
    cached = model.generate(prompt, 12, temperature=0)
    recomputed = model.generate(prompt, 12, temperature=0, use_cache=False)
    assert torch.equal(cached, recomputed)
    assert torch.equal(cached[:, :5], prompt)


@pytest.mark.parametrize("update", [
    {"routing": {"execution": "masked"}},
    {"routing": {"execution": "gather"}},
    G3,
], ids=["G1-masked", "G1-gather", "G3"])
def test_threshold_routing_with_the_cache_decides_as_the_full_causal_forward(update):
    model = model_of(deep_merge(THRESHOLD, update))
    idx = tokens(2, 24, seed=3)
    logits, decisions = stepwise(model, idx)
    with torch.no_grad():
        full = model(idx)
    assert_close(logits, full.logits_BTV, atol=1e-5, rtol=1e-5)
    for rec in full.routing:
        assert torch.equal(decisions[rec.layer], rec.full_BT)
        assert 0.0 < rec.full_fraction < 1.0  # a mixed routing: the comparison is not of constants
    prompt = tokens(1, 4, seed=4)
    assert torch.equal(model.generate(prompt, 10, temperature=0),
                       model.generate(prompt, 10, temperature=0, use_cache=False))


def test_topk_runs_causally_only_with_calibrated_thresholds():
    model = model_of({})
    with pytest.raises(NonCausalRoutingError, match="not causal"):
        model.generate(tokens(1, 4), 2, temperature=0)
    with pytest.raises(NonCausalRoutingError, match=r"missing for layer\(s\) \[2\]"):
        model.generate(tokens(1, 4), 2, thresholds={1: 0.0})
    thresholds = calibrate(model, [tokens(2, 24, seed=50)], 0.5).thresholds
    idx = tokens(2, 20, seed=5)
    logits, decisions = stepwise(model, idx, thresholds)
    with torch.no_grad():
        full = model(idx, thresholds=thresholds)
    assert_close(logits, full.logits_BTV, atol=1e-5, rtol=1e-5)
    for rec in full.routing:
        assert torch.equal(decisions[rec.layer], rec.full_BT)
        assert torch.equal(rec.full_BT, rec.gate.score_BT > thresholds[rec.layer])
    prompt = tokens(1, 4, seed=6)
    assert torch.equal(model.generate(prompt, 8, temperature=0, thresholds=thresholds),
                       model.generate(prompt, 8, temperature=0, thresholds=thresholds, use_cache=False))


def test_generation_beyond_the_context_recomputes_the_window():
    model = model_of(THRESHOLD)
    ctx = model.spec.model.context_length
    prompt = tokens(1, ctx - 3, seed=7)
    cached = model.generate(prompt, 8, temperature=0)
    assert cached.shape == (1, ctx + 5)
    assert torch.equal(cached, model.generate(prompt, 8, temperature=0, use_cache=False))


def test_cache_positions_and_sampling_and_bad_temperature():
    model = model_of(THRESHOLD)
    cache = KVCache.empty(len(model.blocks))
    with torch.no_grad():
        model(tokens(1, 30), cache=cache)
        with pytest.raises(ValueError, match="exceeds context_length=32"):
            model(tokens(1, 3), cache=cache)
    assert [kv.k_BHPE.shape[2] for kv in cache.layers] == [30] * 4
    for bad in (-1, float("inf"), float("nan"), float("-inf")):
        with pytest.raises(ValueError, match=f"temperature={bad}: must be a finite number >= 0"):
            model.generate(tokens(1, 4), 2, temperature=bad)
    assert model.generate(tokens(1, 4), 2, temperature=1e308).shape == (1, 6)  # finite: kept (near uniform)
    prompt = tokens(1, 4)  # a tiny temperature is greedy in the limit, not an overflow
    assert torch.equal(model.generate(prompt, 5, temperature=1e-320), model.generate(prompt, 5, temperature=0))
    draw = [model.generate(tokens(1, 4), 6, generator=torch.Generator().manual_seed(9)) for _ in range(2)]
    assert torch.equal(draw[0], draw[1])
