"""Measured multiply-adds: fvcore (forward) and ``FlopCounterMode`` (forward and backward), aligned.

Conventions (docs/STYLE.md, "FLOPs"), made equal before anything is compared:

- **Unit.** fvcore counts one per multiply-add (MACs); FlopCounterMode counts two (FLOPs). Everything
  returned here is in MACs (FlopCounterMode's figure halved).
- **Attention.** fvcore has no handle for ``aten::scaled_dot_product_attention``; we register one that
  counts the two batched matmuls (QK^T and PV) over the full T x T square, as dense kernels compute them
  and as :mod:`specroute.flops.analytic` counts them. FlopCounterMode knows the CUDA kernels but not the CPU
  one (``_scaled_dot_product_flash_attention_for_cpu`` and its backward): we map those to torch's own
  formulas (forward: 2 matmuls; backward: 5, the scores being recomputed as flash kernels do).
- **Norms.** fvcore counts LayerNorm, FlopCounterMode does not, the analytic model leaves it out: its
  fvcore handle is removed. RMSNorm (``model.norm: rmsnorm``) neither counts (elementwise work and a mean).
- **Rotary positions** (``model.position: rope``) are elementwise (cos, sin, multiplies): no MACs.
- **Grouped-query attention** runs one SDPA call with ``enable_gqa``: both counters count every query head
  against its group's keys and values (the same T x T work as multi-head attention).
- **Uncounted ops.** Anything neither counter has a formula for is an *uncounted op*. Elementwise ops,
  indexing, reductions and the like do no matmul work and are on an explicit allow-list; any other
  uncounted op is reported so that a verifier can fail (a routed matmul silently counted as zero).

Shape legend: B batch, T tokens, H heads, E head width.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import (
    FlopCounterMode,
    flop_registry,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

#: Ops that do no multiply-add work of a matmul: not counted by design, by either counter.
#: Names are bare aten op names (no ``aten::`` prefix, no overload).
ALLOWED_UNCOUNTED: frozenset[str] = frozenset({
    # elementwise arithmetic and activations
    "add", "add_", "sub", "sub_", "rsub", "mul", "mul_", "div", "div_", "neg", "pow", "sqrt", "rsqrt",
    "exp", "log", "tanh", "tanh_backward", "sigmoid", "sigmoid_backward", "gelu", "gelu_backward",
    "softplus", "softplus_backward", "abs", "sign", "clamp", "clamp_min", "maximum", "minimum",
    "where", "masked_fill", "masked_fill_", "lerp", "addcmul", "addcdiv", "fill_", "zero_",
    "threshold_backward", "relu", "square", "silu", "silu_backward",  # SiLU: SwiGLU's activation
    # rotary positions: the angles' cos and sin (elementwise), then multiplies and adds
    "cos", "sin",
    # normalisation (left out of every count, see the module docstring) and softmax / losses
    "layer_norm", "native_layer_norm", "native_layer_norm_backward", "rms_norm", "_fused_rms_norm",
    "_fused_rms_norm_backward", "_softmax", "softmax",
    "_log_softmax", "log_softmax", "_log_softmax_backward_data", "_softmax_backward_data",
    "nll_loss_forward", "nll_loss_backward", "nll_loss", "nll_loss_nd", "cross_entropy_loss",
    "mse_loss", "mse_loss_backward", "huber_loss", "huber_loss_backward",
    # reductions and comparisons
    "sum", "mean", "var", "std", "std_mean", "var_mean", "norm", "linalg_vector_norm", "max", "min",
    "amax", "amin", "gt", "lt", "ge", "le", "eq", "ne", "any", "all", "logical_not", "logical_and",
    "bitwise_not", "bitwise_and", "topk", "sort", "argsort", "argmax", "cumsum",
    # indexing, shapes, copies, creation
    "embedding", "embedding_dense_backward", "index", "index_fill", "index_fill_", "index_select",
    "index_copy", "index_copy_",
    "index_add", "index_add_", "index_put", "index_put_", "scatter", "scatter_", "scatter_add",
    "scatter_add_", "gather", "nonzero", "masked_select", "select", "slice", "unsqueeze", "squeeze",
    "view", "_unsafe_view", "reshape", "expand", "permute", "transpose", "t", "contiguous", "clone",
    "copy_", "detach", "alias", "split", "split_with_sizes", "chunk", "unbind", "cat", "stack",
    "repeat", "flatten", "narrow", "as_strided", "_to_copy", "to", "type_as", "lift_fresh",
    "zeros", "zeros_like", "ones", "ones_like", "empty", "empty_like", "empty_strided", "new_zeros",
    "new_ones", "new_empty", "new_empty_strided", "new_full", "full", "full_like", "arange", "randint",
    "randperm", "rand", "scalar_tensor", "_local_scalar_dense", "item", "Int", "ScalarImplicit", "dropout",
    "one_hot", "select_backward", "slice_backward", "index_select_backward", "_reshape_alias",
    "unsafe_split", "constant_pad_nd", "randn", "normal_", "uniform_", "resolve_conj", "resolve_neg",
    "_has_compatible_shallow_copy_type", "set_", "result_type", "size", "numel", "floor_divide",
    "scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu",  # counted, see docstring
    "_scaled_dot_product_flash_attention_for_cpu_backward",
})


# --------------------------------------------------------------------------------------------------
# fvcore (forward, MACs)


def _shape(v: Any) -> list[int]:
    return list(v.type().sizes())


def _sdpa_macs_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handle for ``aten::scaled_dot_product_attention``: QK^T and PV, full square, in MACs."""
    q, k, v = (_shape(x) for x in inputs[:3])
    *batch, t, e = q
    s, ev = k[-2], v[-1]
    n = 1
    for d in batch:
        n *= d
    return n * t * s * e + n * t * s * ev


def _left_out(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handle for ops the accounting leaves out on purpose (norms): zero MACs."""
    return 0


class _Logits(nn.Module):
    """Wraps a decoder so that tracing sees a plain tensor output."""

    def __init__(self, model: nn.Module, force: dict | None = None):
        super().__init__()
        self.model = model
        self.force = force

    def forward(self, idx_BT: Tensor) -> Tensor:
        return self.model(idx_BT, force=self.force).logits_BTV


@dataclass
class FvcoreCount:
    """fvcore's forward count in MACs: total, per module (dotted names relative to the decoder) and per
    op; ``uncounted``: ops fvcore skipped that are not on :data:`ALLOWED_UNCOUNTED` (op -> calls)."""

    total: int
    by_module: dict[str, int]
    by_operator: dict[str, int]
    uncounted: dict[str, int] = field(default_factory=dict)
    skipped_allowed: dict[str, int] = field(default_factory=dict)


def fvcore_forward_macs(model: nn.Module, idx_BT: Tensor, force: dict | None = None) -> FvcoreCount:
    """Count one forward of ``model`` on ``idx_BT`` with fvcore, conventions aligned (module docstring)."""
    with warnings.catch_warnings():
        # fvcore calls the deprecated torch.jit.script when first imported
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=DeprecationWarning)
        from fvcore.nn import FlopCountAnalysis

    wrapper = _Logits(model, force).eval()
    analysis = FlopCountAnalysis(wrapper, (idx_BT,))
    analysis.set_op_handle("aten::scaled_dot_product_attention", _sdpa_macs_jit)
    # set_op_handle(name, None) does not remove a default handle (fvcore 0.1.5): count it as zero instead
    analysis.set_op_handle("aten::layer_norm", _left_out)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fvcore traces with torch.jit
        total = int(analysis.total())
    by_module = {k.removeprefix("model.").removeprefix("model"): int(v)
                 for k, v in analysis.by_module().items()}
    unsupported = Counter(analysis.unsupported_ops())
    uncounted, allowed = {}, {}
    for op, n in unsupported.items():
        name = op.removeprefix("aten::").removeprefix("prim::")
        (allowed if name in ALLOWED_UNCOUNTED or op.startswith("prim::") else uncounted)[op] = n
    return FvcoreCount(total, by_module, {k: int(v) for k, v in analysis.by_operator().items()},
                       uncounted, allowed)


# --------------------------------------------------------------------------------------------------
# FlopCounterMode (forward and backward, reported in MACs)


def _sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_cpu_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                            **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _custom_mapping() -> dict[Any, Callable]:
    aten = torch.ops.aten
    return {
        aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flop,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward_flop,
    }


class _OpLog(TorchDispatchMode):
    """Records every aten op that runs (to find ops that no counter has a formula for)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[Any] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket] += 1
        return func(*args, **(kwargs or {}))


@dataclass
class ModeCount:
    """FlopCounterMode's count of a piece of code, in MACs: total, per module (dotted names below the
    root module, "" for the root) and the uncounted ops outside the allow-list (op -> calls)."""

    total: int
    by_module: dict[str, int]
    uncounted: dict[str, int] = field(default_factory=dict)


class CountMACs:
    """Context manager: count the MACs of everything run inside (forward and backward).

    Example::

        with CountMACs() as c:
            loss = model(x).logits_BTV.sum(); loss.backward()
        c.result.total
    """

    def __init__(self, root: str = "Decoder") -> None:
        mapping = _custom_mapping()
        self._counter = FlopCounterMode(display=False, custom_mapping=mapping)
        self._known = set(flop_registry) | set(mapping)
        self._log = _OpLog()
        self._root = root
        self.result: ModeCount | None = None

    def __enter__(self) -> CountMACs:
        self._counter.__enter__()
        self._log.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._log.__exit__(*exc)
        self._counter.__exit__(*exc)
        counts = self._counter.get_flop_counts()
        by_module = {}
        for name, ops in counts.items():
            if name == "Global":
                continue
            key = re.sub(rf"^{self._root}\.?", "", name)
            by_module[key] = sum(ops.values()) // 2
        uncounted = {}
        for op, n in self._log.ops.items():
            if op in self._known:
                continue
            name = op._qualified_op_name.split("::")[-1]
            if name not in ALLOWED_UNCOUNTED:
                uncounted[name] = n
        self.result = ModeCount(self._counter.get_total_flops() // 2, by_module, uncounted)


def forward_macs_mode(model: nn.Module, idx_BT: Tensor, force: dict | None = None) -> ModeCount:
    """FlopCounterMode's count of one no-grad forward (in MACs)."""
    with torch.no_grad(), CountMACs() as c:
        model(idx_BT, force=force)
    assert c.result is not None
    return c.result
