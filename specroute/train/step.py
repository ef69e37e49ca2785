"""The optimiser and the one training step every training in specroute takes.

The studies' two stages (:class:`specroute.train.trainer.Trainer`), the throughput probe
(:mod:`specroute.train.estimate`), the verifiers' tiny trainings (:mod:`specroute.verify.common`) and
``specroute bench`` all step through :func:`optimizer_step` with an optimiser from :func:`make_optimizer`,
so what the benchmark times and the probe measures is the step a study runs.

:func:`term_grad_norms` measures, at the steps a spec asks for (``train.loss_grad_norm_every``), which loss
term drives which parameter group: extra ``torch.autograd.grad`` passes on the step's graph that leave
``.grad``, and so the step itself, as they were.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from specroute.spec.training import OptimizerSpec


def lr_at(step: int, steps: int, opt: OptimizerSpec) -> float:
    """Learning rate of optimiser step ``step`` (0-based): linear warmup to ``lr_peak`` over
    ``warmup_steps`` (step 0 gets lr_peak / warmup_steps), then cosine / linear decay to
    ``lr_peak * min_lr_ratio`` at the last step, or constant."""
    peak, floor = opt.lr_peak, opt.lr_peak * opt.min_lr_ratio
    if step < opt.warmup_steps:
        return peak * (step + 1) / opt.warmup_steps
    if opt.schedule == "constant":
        return peak
    progress = min(1.0, (step - opt.warmup_steps) / max(1, steps - 1 - opt.warmup_steps))
    if opt.schedule == "linear":
        return peak - (peak - floor) * progress
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(params: Mapping[str, nn.Parameter], opt: OptimizerSpec) -> torch.optim.AdamW:
    """AdamW with ``opt``'s settings; weight decay on matrices (dim >= 2) only, none on biases, norms and
    gains (GPT-2 / nanoGPT habit: the token and position embeddings are matrices and are decayed; a tied LM
    head is the embedding, counted once). ``params``: the trained parameters by name, any of the
    ``train.trainable`` groups (the backbone's too in a joint run), an empty decay group left out. Returns
    the optimiser with the decayed group first."""
    decay = [p for p in params.values() if p.dim() >= 2]
    no_decay = [p for p in params.values() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": opt.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=opt.lr_peak, betas=opt.betas,
                             eps=opt.eps)


def optimizer_step(optimizer: torch.optim.Optimizer, params: list[nn.Parameter],
                   loss_fn: Callable[[], tuple[Tensor | None, dict[str, Any]]], lr: float,
                   grad_clip: float | None,
                   reduce_grads: Callable[[list[nn.Parameter]], None] | None = None) -> dict[str, Any]:
    """One step: set the learning rate, ``zero_grad(set_to_none=True)``, ``loss, metrics = loss_fn()``,
    backward (none when ``loss`` is None: ``loss_fn`` ran its micro-batches' backward passes itself,
    :mod:`specroute.train.accumulate`), ``reduce_grads(params)`` if given (the sum over data-parallel
    processes, :meth:`specroute.train.distributed.World.sum_grads`), global-norm clip of ``params`` to
    ``grad_clip`` (None: no clip, the norm is still measured), optimiser step.

    Returns ``metrics`` plus ``grad_norm`` (the global L2 norm of the gradient before clipping) and ``lr``.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss, record = loss_fn()
    if loss is not None:
        loss.backward()
    if reduce_grads is not None:
        reduce_grads(params)
    clip = grad_clip if grad_clip is not None else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()
    return {**record, "grad_norm": float(grad_norm), "lr": lr}


def term_grad(term: Tensor, params: Sequence[nn.Parameter]) -> list[Tensor]:
    """d term / d p for each of ``params`` (one ``torch.autograd.grad``, the graph kept for the step's own
    backward; ``.grad`` untouched); zeros for a parameter the term does not reach, or for every one when
    the term has no graph."""
    if not term.requires_grad:
        return [torch.zeros_like(p) for p in params]
    grads = torch.autograd.grad(term, list(params), retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def term_grad_norms(terms: Mapping[str, Tensor], groups: Mapping[str, Sequence[nn.Parameter]]
                    ) -> dict[str, dict[str, float]]:
    """The L2 norm of each loss term's gradient on each parameter group.

    Args:
        terms: {term: scalar tensor with its graph}, each as it enters the step's total loss (weight x
            term: :attr:`specroute.losses.LossTerms.weighted`), so their gradients sum to the total's.
        groups: {group: its parameters} (``gate``, ``cheap_ffn``, ...; an empty group is left out).
    Returns:
        {group: {term: ||d term / d theta_group||_2, ..., "total": ||sum over terms||_2}}, floats (the
        "total" is the norm of the summed gradient, the group's share of the step's ``grad_norm``; it is
        below the terms' sum of norms when they pull apart). One backward pass per term.
    """
    groups = {g: list(ps) for g, ps in groups.items() if ps}
    params = [p for ps in groups.values() for p in ps]
    return group_norms({name: term_grad(term, params) for name, term in terms.items()}, groups)


def group_norms(grads: Mapping[str, list[Tensor]], groups: Mapping[str, Sequence[nn.Parameter]]
                ) -> dict[str, dict[str, float]]:
    """{group: {term: L2 norm, ..., "total": norm of the terms' sum}} of each term's gradients ``grads[term]``
    (one tensor per parameter of ``groups``, group by group in order; an empty group is left out)."""
    groups = {g: list(ps) for g, ps in groups.items() if ps}
    norms: dict[str, dict[str, Tensor]] = {g: {} for g in groups}

    def add_norms(name: str, term_grads: list[Tensor]) -> None:
        left = iter(term_grads)  # in the order of the parameters: group by group
        for g, ps in groups.items():
            norms[g][name] = torch.nn.utils.get_total_norm([next(left) for _ in ps])

    total: list[Tensor] | None = None
    for name, term_grads in grads.items():
        total = [g.clone() for g in term_grads] if total is None else [a.add_(g) for a, g in zip(total, term_grads)]
        add_norms(name, term_grads)
    add_norms("total", total if total is not None else [torch.zeros_like(p) for ps in groups.values() for p in ps])
    values = iter(torch.stack([v for n in norms.values() for v in n.values()]).tolist())  # one device sync
    return {g: {name: next(values) for name in n} for g, n in norms.items()}
