"""Llama-family Hugging Face checkpoints (``model_type`` llama: Llama 2, TinyLlama, SmolLM, Llama 3 without
rope scaling; qwen2: Qwen2, Qwen2.5) as specroute's dense backbone: the config's fields as ModelSpec
fields, the tensors as the decoder's backbone keys.

The decoder computes these models with its architecture options (docs/DESIGN.md, "The model"): RMSNorm,
rotary positions in the rotate-half layout, SwiGLU, grouped-query attention, an untied head unless the
config ties it. Qwen2 is Llama with biases on the query, key and value projections (``qkv_bias``). The
mapping is one-to-one except that the three attention projections are concatenated into the decoder's
fused ``attn.qkv`` (rows: q, then k, then v). What the decoder cannot compute is refused by name: scaled
rotary positions (``rope_scaling`` / ``rope_parameters`` of a type other than default), partial rotary
embeddings, sliding-window attention, a head width other than hidden_size / num_attention_heads, biases
on some linear layers and not the others, an activation other than SiLU.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

#: model_type values read here.
MODEL_TYPES = ("llama", "qwen2")
#: Hugging Face's defaults where a config.json leaves a key out (LlamaConfig / Qwen2Config).
ROPE_THETA = 10000.0
RMS_NORM_EPS = 1e-6
#: (checkpoint name, decoder name) of the per-block tensors other than the fused q/k/v projection.
BLOCK_KEYS = (("input_layernorm", "ln1"), ("self_attn.o_proj", "attn.proj"), ("post_attention_layernorm", "ln2"),
              ("mlp.gate_proj", "ffn.fc"), ("mlp.up_proj", "ffn.fc_up"), ("mlp.down_proj", "ffn.proj"))


def _rope(config: Mapping[str, Any]) -> float:
    """rope_theta of a config (transformers 5's ``rope_parameters`` or 4's ``rope_theta`` + ``rope_scaling``).
    Raises ValueError for scaled or partial rotary positions."""
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if not isinstance(params, Mapping) or any(isinstance(v, Mapping) for v in params.values()):
        raise ValueError("config.json: rope_parameters per attention type: the decoder has one kind of attention "
                         "layer (no sliding windows)")
    kind = params.get("rope_type", params.get("type", "default"))
    if kind != "default":
        raise ValueError(f"config.json: rope type {kind!r} (rope_scaling / rope_parameters): the decoder's rotary "
                         "positions are unscaled (rope_type default, or no rope_scaling)")
    factor = params.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))
    if factor != 1.0:
        raise ValueError(f"config.json: partial_rotary_factor {factor}: the decoder rotates every dimension of a head")
    return float(params.get("rope_theta", config.get("rope_theta", ROPE_THETA)))


def model_fields(config: Mapping[str, Any]) -> dict[str, Any]:
    """ModelSpec fields of a Llama or Qwen2 config.json.

    Raises ValueError naming the config key when the decoder cannot compute that architecture (module
    docstring).
    """
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"config.json: model_type {model_type!r}: this converter reads {' / '.join(MODEL_TYPES)}")
    act = config.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"config.json: hidden_act {act!r}: the decoder's SwiGLU FFN uses SiLU")
    D, H = config["hidden_size"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or D // H
    if head_dim * H != D:
        raise ValueError(f"config.json: head_dim {head_dim}: the decoder's heads are hidden_size / "
                         f"num_attention_heads = {D} / {H} wide")
    theta = _rope(config)
    if model_type == "qwen2":
        if config.get("use_sliding_window", False):
            raise ValueError("config.json: use_sliding_window true: the decoder's attention sees the whole context")
        bias, qkv_bias = False, True  # Qwen2: biases on q, k and v only
    else:
        bias = bool(config.get("attention_bias", False))
        if bool(config.get("mlp_bias", False)) != bias:
            raise ValueError(f"config.json: mlp_bias {config.get('mlp_bias')} with attention_bias "
                             f"{config.get('attention_bias')}: the decoder has biases on every linear layer or none")
        qkv_bias = None
    layer_types = set(config.get("layer_types") or ["full_attention"])
    if layer_types != {"full_attention"}:
        raise ValueError(f"config.json: layer_types {sorted(layer_types)}: the decoder has full attention only")
    kv = config.get("num_key_value_heads") or H
    return {
        "n_layers": config["num_hidden_layers"], "d_model": D, "n_heads": H, "n_kv_heads": kv if kv != H else None,
        "context_length": config["max_position_embeddings"], "vocab_size": config["vocab_size"],
        "d_ff": config["intermediate_size"], "ffn": "swiglu", "norm": "rmsnorm",
        "norm_eps": float(config.get("rms_norm_eps", RMS_NORM_EPS)), "position": "rope", "rope_theta": theta,
        "tie_embeddings": bool(config.get("tie_word_embeddings", False)), "bias": bias, "qkv_bias": qkv_bias,
    }


def state_dict(hf: Mapping[str, Tensor], model: Any) -> dict[str, Tensor]:
    """The decoder's backbone state dict (:meth:`Decoder.load_backbone` form) from a LlamaForCausalLM or
    Qwen2ForCausalLM checkpoint's tensors, for ModelSpec ``model`` (from :func:`model_fields`).

    Keys may carry the ``model.`` prefix (``save_pretrained``) or not; tensors the decoder has no place for
    (old files' ``rotary_emb.inv_freq``) are ignored, and so is ``lm_head.weight`` of a tied model. Raises
    ValueError naming the first missing tensor or one whose shape does not fit ``model``.
    """
    tensors = {k.removeprefix("model."): v for k, v in hf.items()}
    D, F, V, KV = model.d_model, model.ffn_hidden, model.vocab_size, model.kv_dim

    def take(src: str, shape: tuple[int, ...]) -> Tensor:
        if src not in tensors:
            raise ValueError(f"the checkpoint has no tensor {src!r}")
        t = tensors[src]
        if tuple(t.shape) != shape:
            raise ValueError(f"tensor {src!r} has shape {tuple(t.shape)}; the model needs {shape}")
        return t.float().contiguous()

    shapes = {"ln1": (D,), "attn.proj": (D, D), "ln2": (D,), "ffn.fc": (F, D), "ffn.fc_up": (F, D),
              "ffn.proj": (D, F)}
    bias_shapes = {"attn.proj": (D,), "ffn.fc": (F,), "ffn.fc_up": (F,), "ffn.proj": (D,)}
    out = {"wte.weight": take("embed_tokens.weight", (V, D))}
    for i in range(model.n_layers):
        p = f"layers.{i}."
        q_k_v = [(f"{p}self_attn.{n}_proj", rows) for n, rows in (("q", D), ("k", KV), ("v", KV))]
        out[f"blocks.{i}.attn.qkv.weight"] = torch.cat([take(f"{n}.weight", (rows, D)) for n, rows in q_k_v])
        if model.attn_bias:
            out[f"blocks.{i}.attn.qkv.bias"] = torch.cat([take(f"{n}.bias", (rows,)) for n, rows in q_k_v])
        for src, dst in BLOCK_KEYS:
            out[f"blocks.{i}.{dst}.weight"] = take(f"{p}{src}.weight", shapes[dst])
            if model.bias and dst in bias_shapes:
                out[f"blocks.{i}.{dst}.bias"] = take(f"{p}{src}.bias", bias_shapes[dst])
    out["ln_f.weight"] = take("norm.weight", (D,))
    if not model.tie_embeddings:
        out["lm_head.weight"] = take("lm_head.weight", (V, D))
    return out
