"""Parity with transformers: a tiny Llama (and Qwen2) with random weights, saved by ``save_pretrained``, read
back through specroute's converter (specroute/model/convert_llama.py) into the dense decoder gives
transformers' logits; the routed decoder with that backbone, forced all-full, gives the dense logits; masked
and gather execution agree. No network: the checkpoints are written here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.testing import assert_close

from specroute.model.convert_llama import model_fields, state_dict
from specroute.model.decoder import Decoder
from specroute.spec.models import RunSpec
from specroute.train.stages import seeded_model

transformers = pytest.importorskip("transformers")

#: The tiny checkpoints' shape: 2 blocks x 64 wide, 4 query heads sharing 2 key/value heads, SwiGLU 96 wide; an
#: RMSNorm epsilon near the embeddings' mean square (0.0064) and a rotary base of 500, so that a wrong epsilon or
#: base shows in the logits.
TINY = {"vocab_size": 256, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64, "rms_norm_eps": 1e-2,
        "rope_theta": 500.0, "tie_word_embeddings": False}
#: (B, T) of the compared forwards: one token, odd lengths, the whole context.
SHAPES = [(1, 1), (2, 7), (3, 33), (2, 64)]


def _write_checkpoint(folder: Path, model_type: str, **overrides) -> torch.nn.Module:
    """A tiny random checkpoint of ``model_type`` in ``folder``; every weight random (norm gains around 1,
    biases non-zero), so that a misplaced tensor shows."""
    config_cls = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config}[model_type]
    model_cls = {"llama": transformers.LlamaForCausalLM, "qwen2": transformers.Qwen2ForCausalLM}[model_type]
    config = config_cls(**{**TINY, **overrides}, attn_implementation="eager")
    torch.manual_seed(0)
    hf = model_cls(config).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.copy_(1 + 0.2 * torch.randn_like(p) if "norm" in name else 0.08 * torch.randn_like(p))
    hf.save_pretrained(folder)
    return hf


def _spec(folder: Path, routing: dict | None = None) -> RunSpec:
    fields = model_fields(json.loads((folder / "config.json").read_text()))
    return RunSpec.model_validate({
        "model": fields, "routing": {"controlled_layers": [0, 1], "cheap_ffn_hidden": 16, **(routing or {})},
        "train": {"seq_len": 16}, "backbone": {"train": {"seq_len": 16}},
    })


def _backbone(folder: Path, spec: RunSpec) -> dict[str, torch.Tensor]:
    return state_dict(load_file(folder / "model.safetensors"), spec.model)


@pytest.mark.parametrize(("model_type", "overrides"), [
    ("llama", {}),
    ("llama", {"tie_word_embeddings": True, "num_key_value_heads": 1}),  # tied head, multi-query attention
    ("llama", {"num_key_value_heads": 4, "attention_bias": True, "mlp_bias": True}),  # multi-head, biases
    ("qwen2", {}),  # q/k/v biases
], ids=["llama-gqa", "llama-tied-mqa", "llama-mha-bias", "qwen2"])
def test_dense_logits_equal_transformers(tmp_path, model_type, overrides):
    hf = _write_checkpoint(tmp_path, model_type, **overrides)
    spec = _spec(tmp_path)
    dense = Decoder(spec, routed=False).eval()
    dense.load_backbone(_backbone(tmp_path, spec))
    g = torch.Generator().manual_seed(1)
    worst = 0.0
    for B, T in SHAPES:
        idx = torch.randint(0, TINY["vocab_size"], (B, T), generator=g)
        with torch.no_grad():
            want = hf(input_ids=idx).logits
            got = dense(idx).logits_BTV
        assert got.shape == want.shape == (B, T, TINY["vocab_size"])
        worst = max(worst, (got - want).abs().max().item())
        assert_close(got, want, rtol=0, atol=1e-5, msg=f"B={B} T={T}")
    assert want.abs().max().item() > 1.0  # logits of a scale where a wrong weight would show
    assert worst <= 1e-5


def test_converted_fields(tmp_path):
    _write_checkpoint(tmp_path, "qwen2")
    m = _spec(tmp_path).model
    assert (m.norm, m.position, m.ffn, m.n_kv_heads, m.bias, m.attn_bias, m.tie_embeddings) == (
        "rmsnorm", "rope", "swiglu", 2, False, True, False)
    assert (m.rope_theta, m.norm_eps, m.d_ff, m.context_length) == (500.0, 1e-2, 96, 64)


def test_routed_all_full_equals_dense_and_gather_equals_masked(tmp_path):
    _write_checkpoint(tmp_path, "llama")
    masked_spec = _spec(tmp_path, {"execution": "masked"})
    gather_spec = _spec(tmp_path, {"execution": "gather"})
    state = _backbone(tmp_path, masked_spec)
    dense = Decoder(masked_spec, routed=False).eval()
    dense.load_backbone(state)
    masked, gathered = seeded_model(masked_spec, 3), seeded_model(gather_spec, 3)
    for model in (masked, gathered):
        model.load_backbone(state)
    idx = torch.randint(0, TINY["vocab_size"], (3, 21), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = dense(idx).logits_BTV
        assert_close(masked(idx, all_full=True).logits_BTV, want, rtol=0, atol=1e-5)
        om, og = masked(idx), gathered(idx)
    for a, b in zip(om.routing, og.routing):
        assert torch.equal(a.full_BT, b.full_BT)
        assert a.full_BT.float().mean().item() == pytest.approx(11 / 21)  # ceil(0.5 * 21) per sequence
    assert_close(og.logits_BTV, om.logits_BTV, rtol=1e-5, atol=1e-5)
    assert (om.logits_BTV - want).abs().max().item() > 1e-3  # routing changed the logits: not a no-op


@pytest.mark.parametrize(("model_type", "overrides", "words"), [
    ("llama", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope type 'linear'"),
    ("llama", {"hidden_act": "gelu"}, "hidden_act 'gelu'"),
    ("llama", {"head_dim": 32}, "head_dim 32"),
    ("llama", {"attention_bias": True}, "mlp_bias"),
    ("qwen2", {"use_sliding_window": True, "sliding_window": 16}, "use_sliding_window"),
], ids=["rope-scaling", "activation", "head-dim", "partial-bias", "sliding-window"])
def test_unsupported_configs_are_refused_by_name(tmp_path, model_type, overrides, words):
    config_cls = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config}[model_type]
    config_cls(**{**TINY, **overrides}).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="config.json: ") as err:
        model_fields(json.loads((tmp_path / "config.json").read_text()))
    assert words in str(err.value)


def test_a_missing_or_misshapen_tensor_is_named(tmp_path):
    _write_checkpoint(tmp_path, "llama")
    spec = _spec(tmp_path)
    hf = load_file(tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="no tensor .layers.1.mlp.up_proj.weight."):
        state_dict({k: v for k, v in hf.items() if "layers.1.mlp.up_proj" not in k}, spec.model)
    hf["model.norm.weight"] = hf["model.norm.weight"][:10]
    with pytest.raises(ValueError, match=r"'norm.weight' has shape \(10,\); the model needs \(64,\)"):
        state_dict(hf, spec.model)
