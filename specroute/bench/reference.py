"""The benchmark's reference: Hugging Face transformers' GPT-2 at the dense model's configuration.

Optional (``pip install 'specroute[reference]'``); without it the reference cases say why they did not run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from specroute.spec.models import RunSpec
from specroute.train.device import Device

#: GPT-2's activation is the tanh GELU. transformers' "gelu_new" computes it as a chain of Python-level
#: elementwise ops; "gelu_pytorch_tanh" is the same function through PyTorch's fused kernel (as ours),
#: the faster of the two, so the reference is not slowed down by its activation.
HF_ACTIVATION = "gelu_pytorch_tanh"
#: What "not installed" says, and how to fix it.
HF_MISSING = "not installed (pip install 'specroute[reference]')"


def hf_lm_loss(model: nn.Module, idx_BT: Tensor, targets_BT: Tensor) -> Tensor:
    """GPT-2's own LM loss (from ``labels``: it shifts them itself, so the targets are not used)."""
    return model(input_ids=idx_BT, labels=idx_BT).loss


def hf_reference(spec: RunSpec, device: Device) -> nn.Module | str:
    """transformers' GPT-2 at the dense configuration of ``spec``, or the reason it cannot be built."""
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        return HF_MISSING
    m = spec.model
    if not m.bias:
        return "not comparable: GPT-2 always has biases and this spec has model.bias=false"
    if m.architecture_changes:
        return f"not comparable: GPT-2's architecture, and this spec has {', '.join(m.architecture_changes)}"
    with quiet_transformers():
        cfg = GPT2Config(
            n_layer=m.n_layers, n_embd=m.d_model, n_head=m.n_heads, n_positions=m.context_length,
            vocab_size=m.vocab_size, n_inner=m.ffn_hidden, activation_function=HF_ACTIVATION,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5,
            initializer_range=m.init_std, tie_word_embeddings=m.tie_embeddings, use_cache=False,
            bos_token_id=None, eos_token_id=None, attn_implementation="sdpa",
        )
        torch.manual_seed(0)
        model = GPT2LMHeadModel(cfg)
    return model.to(device.torch).train()


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' logging at error level for the block (its config warnings are not ours to show)."""
    try:
        import transformers
    except ImportError:
        yield
        return
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)


def hf_version() -> str | None:
    """transformers' version, None when it is not installed."""
    try:
        import transformers
    except ImportError:
        return None
    return transformers.__version__
