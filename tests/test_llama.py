"""The Llama-architecture model options (model.norm, position, ffn, n_kv_heads, qkv_bias): the spec's rules, the
layers they build, rotary positions' relative-position property, and the cost model against the built model
and both FLOP counters. Parity with transformers is in test_llama_parity.py."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from specroute.flops.analytic import count_params, dense_step_macs, step_macs
from specroute.flops.counters import forward_macs_mode, fvcore_forward_macs
from specroute.model.decoder import Decoder
from specroute.model.layers import FFN, Rotary, SwiGLU
from specroute.spec import load_study
from specroute.spec.models import ModelSpec
from specroute.train.stages import seeded_model
from specroute.verify.common import Context, Target
from specroute.verify.flops import measure_step, training_step

from helpers import SPECS, check_bad_spec, tiny_spec, tokens

LLAMA = {"norm": "rmsnorm", "position": "rope", "ffn": "swiglu", "n_kv_heads": 1, "bias": False,
         "tie_embeddings": False}


def test_defaults_are_gpt2_and_every_shipped_spec_but_the_llama_one_keeps_them():
    assert ModelSpec().architecture_changes == []
    for path in sorted(SPECS.glob("*.yaml")):
        for profile in ("smoke", "paper"):
            m = load_study(path, profile).runs()[0][2].model
            assert (m.architecture_changes != []) == (path.name == "llama_smoke.yaml"), (path.name, profile)
    m = load_study(SPECS / "llama_smoke.yaml").runs()[0][2].model
    assert m.architecture_changes == ["norm=rmsnorm", "position=rope", "ffn=swiglu", "n_kv_heads=2"]


def test_the_options_build_their_layers():
    gpt2 = Decoder(tiny_spec())
    assert isinstance(gpt2.wpe, nn.Embedding) and isinstance(gpt2.ln_f, nn.LayerNorm)
    assert isinstance(gpt2.blocks[1].ffn, FFN) and gpt2.blocks[1].attn.rotary is None
    llama = Decoder(tiny_spec({"model": LLAMA}))
    assert llama.wpe is None and isinstance(llama.ln_f, nn.RMSNorm)
    block = llama.blocks[1]
    assert isinstance(block.ln1, nn.RMSNorm) and isinstance(block.ffn, SwiGLU)
    assert isinstance(block.routed_ffn.cheap, SwiGLU)  # the cheap FFN follows the model's FFN kind
    assert block.routed_ffn.cheap.fc.out_features == 16
    assert block.attn.qkv.weight.shape == (32 + 2 * 16, 32)  # q: 2 heads x 16; k, v: 1 head x 16 each
    assert block.attn.qkv.bias is None and block.attn.proj.bias is None
    assert llama.lm_head.weight.data_ptr() != llama.wte.weight.data_ptr()
    assert not any("rotary" in k or "inv_freq" in k for k in llama.state_dict())  # no saved position state
    qwen = Decoder(tiny_spec({"model": {**LLAMA, "qkv_bias": True}}))
    assert qwen.blocks[0].attn.qkv.bias is not None and qwen.blocks[0].attn.proj.bias is None


@pytest.mark.parametrize(("text", "field", "words"), [
    ("model: {n_heads: 4, n_kv_heads: 3}\n", "model.n_kv_heads", "n_kv_heads=3 does not divide n_heads=4"),
    ("model: {d_model: 36, n_heads: 4, position: rope}\n", "model.position", "needs an even head width"),
    ("model: {ffn: geglu}\n", "model.ffn", "'mlp' or 'swiglu'"),
    ("model: {norm: batchnorm}\n", "model.norm", "'layernorm' or 'rmsnorm'"),
    ("model: {rope_theta: 0.5}\n", "model.rope_theta", "greater than 1"),
], ids=["kv-heads-divide", "rope-odd-head", "ffn-kind", "norm-kind", "rope-theta"])
def test_bad_architecture_options_exit_2(tmp_path, monkeypatch, text, field, words):
    monkeypatch.chdir(tmp_path)
    check_bad_spec(tmp_path, text, ":1:", field, words)


def test_rotary_scores_depend_only_on_relative_position():
    """q_i . k_j after rotation is a function of j - i: shifting every position leaves the scores unchanged,
    and position 0 is not rotated."""
    rot = Rotary(16, 10000.0)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 4, 9, 16, generator=g), torch.randn(2, 2, 9, 16, generator=g)
    scores = {}
    for offset in (0, 7, 40):
        rq, rk = rot(q, k.repeat_interleave(2, dim=1), offset)
        scores[offset] = rq @ rk.transpose(-1, -2)
    assert_close(scores[7], scores[0], rtol=1e-4, atol=1e-4)
    assert_close(scores[40], scores[0], rtol=1e-4, atol=1e-4)
    rq, rk = rot(q, k, 0)
    assert torch.equal(rq[:, :, 0], q[:, :, 0]) and torch.equal(rk[:, :, 0], k[:, :, 0])
    assert (rq[:, :, 1:] - q[:, :, 1:]).abs().max().item() > 0.1
    assert_close(rq.norm(dim=-1), q.norm(dim=-1))  # a rotation


def test_rotary_model_is_causal_and_sees_order():
    """Under rope the logits at t do not depend on tokens after t, and swapping two earlier tokens changes
    them (there is no position embedding: order comes from the rotation alone)."""
    model = Decoder(tiny_spec({"model": LLAMA}), routed=False).eval()
    x = tokens(2, 12, seed=3)
    y = x.clone()
    y[:, 8:] = (y[:, 8:] + 1) % 256
    with torch.no_grad():
        lx, ly = model(x).logits_BTV, model(y).logits_BTV
        assert_close(lx[:, :8], ly[:, :8])
        z = x.clone()
        z[:, [2, 5]] = x[:, [5, 2]]
        lz = model(z).logits_BTV
    assert (lz[:, 7] - lx[:, 7]).abs().max().item() > 1e-4


OPTIONS = [dict(zip(("norm", "position", "ffn", "n_kv_heads", "bias", "qkv_bias", "tie_embeddings"), v))
           for v in itertools.product(("layernorm", "rmsnorm"), ("learned", "rope"), ("mlp", "swiglu"),
                                      (None, 1), (True, False), (None, True), (True, False))]


def test_parameter_count_equals_the_built_model_for_every_combination():
    for options, gate in itertools.product(OPTIONS, ({"kind": "G1", "hidden": 16},
                                                     {"kind": "G3", "latent_dim": 8, "predictor_hidden": 16})):
        spec = tiny_spec({"model": options, "gate": gate})
        built = {g: sum(p.numel() for _, p in ps) for g, ps in Decoder(spec).param_groups().items()}
        pc = count_params(spec)
        assert built == {"backbone": pc.backbone, "cheap_ffn": pc.cheap_ffn, "gate": pc.gate,
                         "target_head": pc.target_head}, options


@pytest.mark.parametrize("options", [LLAMA, {**LLAMA, "n_kv_heads": None, "qkv_bias": True},
                                     {"position": "rope", "n_kv_heads": 1}, {"ffn": "swiglu", "norm": "rmsnorm"}],
                         ids=["llama-mqa", "qwen2-like", "gpt2-rope-mqa", "gpt2-swiglu-rmsnorm"])
def test_both_counters_match_the_cost_model(options):
    """fvcore and FlopCounterMode count the analytic MACs of the dense and routed forwards and of a real
    training step with the oracle (no op uncounted outside the allow-list)."""
    spec = tiny_spec({"model": options, "loss": {"util": 1.0, "rank": 1.0, "oracle": {"layers_per_step": None}}})
    x = tokens(2, 16, seed=0)
    dense = seeded_model(spec, 0, routed=False)
    want = dense_step_macs(spec, "forward_only")
    for count in (fvcore_forward_macs(dense, x), forward_macs_mode(dense, x)):
        assert count.uncounted == {}
        assert count.total == pytest.approx(want, rel=1e-9)
    measured = measure_step(spec)
    assert measured["uncounted"] == {}
    parts = step_macs(spec, full_fraction=measured["full_fraction"])
    assert measured["step"] == pytest.approx(parts["total"], rel=1e-9)
    assert measured["dense"]["controller_only"] == pytest.approx(dense_step_macs(spec, "controller_only"), rel=1e-9)


def test_the_cost_model_prices_gqa_and_swiglu():
    """Grouped-query attention shrinks only the k and v projections; SwiGLU has three FFN matrices."""
    gpt2 = tiny_spec()
    gqa, swiglu = tiny_spec({"model": {"n_kv_heads": 1}}), tiny_spec({"model": {"ffn": "swiglu"}})
    D, E, F, N = 32, 16, 64, 2 * 16
    L = 4
    base = dense_step_macs(gpt2, "forward_only")
    assert base - dense_step_macs(gqa, "forward_only") == L * 2 * D * (D - E) * N
    assert dense_step_macs(swiglu, "forward_only") - base == L * D * F * N


def test_verify_training_step_passes_on_a_llama_spec():
    spec = tiny_spec({"model": LLAMA, "loss": {"util": 1.0, "rank": 1.0}})
    r = training_step(Target("llama", spec), Context(examples=2))
    assert r.status == "pass", r.detail
    assert r.values["rel_err"] <= 1e-9


@pytest.mark.parametrize("routing", [None, {"budget": {"enforcement": "threshold"}}], ids=["dense", "threshold"])
def test_kv_cache_under_rotary_and_grouped_query_attention(routing):
    """Tokens run through the cache one at a time (rotary positions from the cached length, keys cached
    rotated, 2 query heads on 1 key/value head) give the full forward's logits; greedy generation with the
    cache equals the recompute without it."""
    from specroute.model.layers import KVCache

    torch.manual_seed(0)
    spec = tiny_spec({"model": {**LLAMA, "init_std": 0.2}, "routing": routing or {}})
    model = Decoder(spec, routed=routing is not None).eval()
    idx = tokens(2, 20, seed=1)
    cache = KVCache.empty(len(model.blocks))
    with torch.no_grad():
        steps = [model(idx[:, :3], cache=cache).logits_BTV]
        steps += [model(idx[:, t:t + 1], cache=cache).logits_BTV for t in range(3, 20)]
        assert_close(torch.cat(steps, 1), model(idx).logits_BTV, atol=1e-5, rtol=1e-5)
    assert cache.layers[0].k_BHPE.shape == (2, 1, 20, 16)  # one key/value head cached
    prompt = tokens(2, 5, seed=2)
    cached = model.generate(prompt, 30, temperature=0)  # past the context of 32: the window is recomputed
    assert torch.equal(cached, model.generate(prompt, 30, temperature=0, use_cache=False))


def test_backbone_cache_key_leaves_out_the_options_at_their_defaults():
    """A GPT-2 spec keeps the cache key it had before the options existed (its cached backbone still
    holds); setting an option to a non-default value gives another key."""
    import types

    from specroute.spec.models import ARCHITECTURE_DEFAULTS
    from specroute.train.backbone import backbone_key

    data = types.SimpleNamespace(meta={"corpus_sha256": "c", "tokenizer_sha256": "t"})
    spec = tiny_spec()
    explicit = tiny_spec({"model": ARCHITECTURE_DEFAULTS})
    assert backbone_key(explicit, data) == backbone_key(spec, data)
    keys = {backbone_key(tiny_spec({"model": {k: v}}), data)
            for k, v in [("norm", "rmsnorm"), ("position", "rope"), ("ffn", "swiglu"), ("n_kv_heads", 1),
                         ("qkv_bias", False), ("norm_eps", 1e-6)]}
    assert len(keys) == 6 and backbone_key(spec, data) not in keys
