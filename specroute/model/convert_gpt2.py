"""GPT-2's Hugging Face checkpoints (gpt2, gpt2-medium, gpt2-large, gpt2-xl, distilgpt2) as specroute's
dense backbone: the config's fields as ModelSpec fields, the tensors as the decoder's backbone keys.

GPT-2 is the decoder specroute builds (pre-LayerNorm blocks, fused QKV, tanh GELU, learned positions, tied
LM head), so the mapping is one-to-one except that GPT-2's ``Conv1D`` layers store their weight as
(in, out): each is transposed into ``nn.Linear``'s (out, in). Keys may carry the ``transformer.`` prefix
(``GPT2LMHeadModel.save_pretrained``) or not (the original ``openai-community/gpt2`` files); the attention
mask buffers of old files (``attn.bias``, ``attn.masked_bias``) are not weights and are dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from specroute.model.pretrained import Converter

#: GPT-2's activation names for the tanh-approximated GELU, which the decoder's FFN computes.
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
#: Config keys whose value must be GPT-2's default for the decoder to compute the same function.
FIXED = {"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
         "add_cross_attention": False}
#: LayerNorm epsilon of the decoder (torch's default), which the checkpoint must share.
LAYER_NORM_EPS = 1e-5
#: (checkpoint name, decoder name, Conv1D weight to transpose) per block.
BLOCK_KEYS = (("ln_1", "ln1", False), ("attn.c_attn", "attn.qkv", True), ("attn.c_proj", "attn.proj", True),
              ("ln_2", "ln2", False), ("mlp.c_fc", "ffn.fc", True), ("mlp.c_proj", "ffn.proj", True))


def model_fields(config: Mapping[str, Any]) -> dict[str, Any]:
    """ModelSpec fields of a GPT-2 config.json. Raises ValueError naming the key when the decoder cannot
    compute that architecture (another activation, epsilon or attention scaling)."""
    act = config.get("activation_function", "gelu_new")
    if act not in TANH_GELU:
        raise ValueError(f"config.json: activation_function {act!r}: the decoder's FFN is the tanh GELU "
                         f"({' / '.join(TANH_GELU)})")
    eps = config.get("layer_norm_epsilon", LAYER_NORM_EPS)
    if abs(eps - LAYER_NORM_EPS) > 1e-12:
        raise ValueError(f"config.json: layer_norm_epsilon {eps}: the decoder's LayerNorms use {LAYER_NORM_EPS}")
    for key, value in FIXED.items():
        if config.get(key, value) != value:
            raise ValueError(f"config.json: {key} {config[key]!r}: the decoder supports {value!r} only")
    n_embd = config["n_embd"]
    return {
        "n_layers": config["n_layer"], "d_model": n_embd, "n_heads": config["n_head"],
        "context_length": config["n_positions"], "vocab_size": config["vocab_size"],
        "d_ff": config.get("n_inner") or 4 * n_embd, "tie_embeddings": config.get("tie_word_embeddings", True),
        "bias": True,
    }


def state_dict(hf: Mapping[str, Tensor], model: Any) -> dict[str, Tensor]:
    """The decoder's backbone state dict from a GPT-2 checkpoint's tensors, for ModelSpec ``model``.

    Raises ValueError naming the first missing tensor or one whose shape does not fit ``model``.
    """
    tensors = {k.removeprefix("transformer."): v for k, v in hf.items()}
    out: dict[str, Tensor] = {}

    def take(src: str, dst: str, transpose: bool, shape: tuple[int, ...]) -> None:
        if src not in tensors:
            raise ValueError(f"the checkpoint has no tensor {src!r}")
        t = tensors[src].t() if transpose else tensors[src]
        if tuple(t.shape) != shape:
            raise ValueError(f"tensor {src!r} has shape {tuple(tensors[src].shape)}; the model needs {shape}"
                             + (" (transposed from Conv1D)" if transpose else ""))
        out[dst] = t.float().contiguous()

    D, F, V = model.d_model, model.ffn_hidden, model.vocab_size
    shapes = {"ln1": (D,), "attn.qkv": (3 * D, D), "attn.proj": (D, D), "ln2": (D,), "ffn.fc": (F, D),
              "ffn.proj": (D, F)}
    bias_shapes = {"attn.qkv": (3 * D,), "ffn.fc": (F,)}
    take("wte.weight", "wte.weight", False, (V, D))
    take("wpe.weight", "wpe.weight", False, (model.context_length, D))
    for i in range(model.n_layers):
        for src, dst, transpose in BLOCK_KEYS:
            take(f"h.{i}.{src}.weight", f"blocks.{i}.{dst}.weight", transpose, shapes[dst])
            take(f"h.{i}.{src}.bias", f"blocks.{i}.{dst}.bias", False, bias_shapes.get(dst, (D,)))
    take("ln_f.weight", "ln_f.weight", False, (D,))
    take("ln_f.bias", "ln_f.bias", False, (D,))
    if not model.tie_embeddings:  # tied: the LM head is wte (one parameter, under wte's name)
        take("lm_head.weight", "lm_head.weight", False, (V, D))
    return out


CONVERTER = Converter("gpt2", model_fields, state_dict)
