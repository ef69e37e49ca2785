"""torch.compile of a model's forward (``train.compile``): the one place a model is compiled.

:func:`compile_model` compiles the module in place (``nn.Module.compile``: its ``__call__`` runs the
compiled forward, its state dict keeps its names, so checkpoints load into an eager model), with static
shapes. Under top-k budgets every shape is static: the gathered token count is B x ceil(b T)
(``topk_sequence``) or ceil(b B T) (``topk_batch``), and the gather step picks the full tokens with a
stable sort rather than ``nonzero`` (:meth:`specroute.model.routing.RoutedFFN.execute`). Under threshold
routing that count depends on the scores: the gather step is left out of the graph
(``torch.compiler.disable``, one graph break on each side) and runs eager, so nothing recompiles per
count; masked execution has no data-dependent shape and compiles whole.

Only the forward is compiled; the oracle's counterfactual continuations (``Decoder.run_blocks``) and
the optimiser stay eager. Evaluation (no grad) compiles its own graph on first use. Compiling needs a C++
compiler on CPU (inductor) and takes seconds to minutes on the first step: :meth:`Trainer.speed
<specroute.train.trainer.Trainer.speed>` reports that step apart (``compile_s``).
"""

from __future__ import annotations

import torch
from torch import nn


def compile_model(model: nn.Module) -> nn.Module:
    """Compile ``model``'s forward in place (static shapes) and return it. The compiler's deterministic
    setting follows ``torch.are_deterministic_algorithms_enabled()`` (see
    :func:`specroute.train.device.set_deterministic`)."""
    import torch._inductor.config as inductor_config

    from specroute.model import routing

    inductor_config.deterministic = torch.are_deterministic_algorithms_enabled()
    if routing.eager_gather is routing._eager_gather:
        routing.eager_gather = torch.compiler.disable(routing._eager_gather)
    model.compile(dynamic=False)
    return model


def is_compiled(model: nn.Module) -> bool:
    """Whether :func:`compile_model` compiled ``model``."""
    return getattr(model, "_compiled_call_impl", None) is not None
