"""Gradient accumulation (``train.grad_accum_steps``): a step over k micro-batches equals the step on the
whole batch within float tolerance, for the LM loss and each auxiliary loss (whose batch-level statistics
stay the whole batch's), and for the dense stage; the spec refuses what cannot be equal."""

from __future__ import annotations

import pytest
import torch

from helpers import G3, tiny_spec, tokens
from specroute.spec.models import RunSpec
from specroute.store import UserError
from specroute.train.device import Device
from specroute.train.distributed import BatchSplit
from specroute.train.stages import ControllerStage, DenseStage, seeded_model
from specroute.train.trainer import FixedBatch, Trainer

CPU = Device("cpu", None)
B, T = 8, 16

#: One recipe per loss term (the LM weight kept, as a study does, except for the one that isolates a term),
#: with the options that make a term batch-dependent: standardised util targets, sampled and all rank
#: pairs, per-token labels with their sampled positions, G3's JEPA, the threshold budget.
RECIPES = {
    "lm": {},
    "util_standardized": {"loss": {"lm": 0.0, "util": 1.0, "oracle": {"layers_per_step": 1}}},
    "util_huber_per_token": {"loss": {"util": 1.0, "oracle": {"util_loss": "huber", "huber_delta": 0.3,
                                                               "counterfactual": "per_token",
                                                               "tokens_per_sequence": 5}}},
    "rank_sampled": {"loss": {"lm": 0.0, "rank": 1.0, "oracle": {"rank_pairs_per_token": 3}}},
    "rank_all_pairs_on_policy": {"loss": {"rank": 1.0, "oracle": {"rank_pairs_per_token": None,
                                                                  "labeling": "on_policy",
                                                                  "rank_margin": 0.01}}},
    "jepa_G3": {**G3, "loss": {"lm": 0.0, "jepa": 1.0}},
    "budget_threshold": {"routing": {"budget": {"enforcement": "threshold"}}, "loss": {"lm": 0.0, "budget": 1.0}},
    "all_G3": {**G3, "routing": {"budget": {"enforcement": "threshold"}},
               "loss": {"util": 0.5, "rank": 0.7, "jepa": 0.3, "budget": 2.0}},
}


def _spec(recipe: str, k: int, every: int | None = None) -> RunSpec:
    return tiny_spec({**RECIPES[recipe], "train": {"seq_len": T, "batch_size": B, "grad_accum_steps": k,
                                                    "grad_clip": None, "loss_grad_norm_every": every}})


def _step(spec: RunSpec, steps: int = 1) -> tuple[list[dict], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``steps`` controller steps on fixed data; the records, each parameter's last gradient and value."""
    stage = ControllerStage(spec, seeded_model(spec, 0), CPU)
    idx = tokens(B, T, seed=3)
    trainer = Trainer(stage, FixedBatch(idx, idx.roll(-1, 1)), torch.Generator().manual_seed(5), CPU)
    records = [trainer.advance() for _ in range(steps)]
    return (records, {n: p.grad.clone() for n, p in trainer.params.items()},
            {n: p.detach().clone() for n, p in trainer.params.items()})


def _close_records(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for key, va in a.items():
        if isinstance(va, dict):
            _close_records(va, b[key])
        elif isinstance(va, float):
            assert b[key] == pytest.approx(va, rel=1e-4, abs=1e-6), key
        else:
            assert b[key] == va, key


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_accumulated_step_equals_the_whole_batch_step(recipe):
    (whole,), grads, _ = _step(_spec(recipe, 1))
    terms = [t for t in ("util", "rank", "jepa", "budget") if getattr(_spec(recipe, 1).loss, t) > 0]
    assert all(whole[t] > 0 for t in terms)  # the term is there and not trivially 0
    for k in (2, 4):
        (acc,), acc_grads, _ = _step(_spec(recipe, k))
        _close_records(whole, acc)
        for name, g in grads.items():
            torch.testing.assert_close(acc_grads[name], g, rtol=1e-4, atol=1e-7, msg=f"k={k} {name}")


def test_three_accumulated_steps_follow_the_whole_batch_training():
    """Parameters and metrics over several steps (the generators advance alike: the same draws each step)."""
    whole, _, params = _step(_spec("all_G3", 1), steps=3)
    acc, _, acc_params = _step(_spec("all_G3", 4), steps=3)
    for a, b in zip(whole, acc):
        _close_records(a, b)
    assert whole[0]["loss"] != pytest.approx(whole[2]["loss"], rel=1e-6)  # it trained
    for name, p in params.items():
        torch.testing.assert_close(acc_params[name], p, rtol=1e-4, atol=1e-6)


def test_term_gradient_norms_under_accumulation():
    (whole,), _, _ = _step(_spec("all_G3", 1, every=1))
    (acc,), _, _ = _step(_spec("all_G3", 2, every=1))
    assert set(whole["loss_grad_norm"]) == {"gate", "cheap_ffn"}
    _close_records(whole["loss_grad_norm"], acc["loss_grad_norm"])


def test_dense_stage_accumulates_the_lm_loss():
    results = []
    for k in (1, 4):
        spec = tiny_spec({"backbone": {"train": {"seq_len": T, "batch_size": B, "grad_accum_steps": k}}})
        stage = DenseStage(seeded_model(spec, 0, routed=False), spec.backbone.train, CPU)
        idx = tokens(B, T, seed=4)
        trainer = Trainer(stage, FixedBatch(idx, idx.roll(-1, 1)), torch.Generator().manual_seed(0), CPU)
        results.append((trainer.advance(), {n: p.grad.clone() for n, p in trainer.params.items()}))
    (r1, g1), (r4, g4) = results
    _close_records(r1, r4)
    for name in g1:
        torch.testing.assert_close(g4[name], g1[name], rtol=1e-4, atol=1e-7)


def test_spec_refuses_what_accumulation_cannot_match():
    with pytest.raises(ValueError, match="grad_accum_steps: 3 does not divide batch_size=8"):
        tiny_spec({"train": {"batch_size": 8, "grad_accum_steps": 3}})
    with pytest.raises(ValueError, match="topk_batch"):
        tiny_spec({"routing": {"budget": {"enforcement": "topk_batch"}}, "train": {"batch_size": 8,
                                                                                    "grad_accum_steps": 2}})
    assert tiny_spec().train.grad_accum_steps == 1
    with pytest.raises(UserError, match="multiple of 4"):
        BatchSplit(6, 2, type(BatchSplit(2).world)(0, 2, 0))


def test_a_callers_own_batch_is_cut_into_what_divides_it():
    """The throughput probe steps a smaller batch than the spec's: 6 rows under grad_accum_steps=4 run as
    2 micro-batches of 3, and equal the whole 6-row step."""
    records = []
    for k in (1, 4):
        spec = _spec("all_G3", k)
        trainer = Trainer(ControllerStage(spec, seeded_model(spec, 0), CPU), FixedBatch(*[tokens(1, T)] * 2),
                          torch.Generator().manual_seed(5), CPU)
        idx = tokens(6, T, seed=8)
        records.append(trainer.train_step(idx, idx.roll(-1, 1)))
    _close_records(*records)


def test_the_memory_estimate_counts_one_micro_batch_of_activations():
    from specroute.train.memory import stage_memory

    whole = stage_memory(tiny_spec({"train": {"batch_size": 8}}), "cpu")
    micro = stage_memory(tiny_spec({"train": {"batch_size": 8, "grad_accum_steps": 4}}), "cpu")
    two = stage_memory(tiny_spec({"train": {"batch_size": 2}}), "cpu")
    assert micro[1].activations == two[1].activations == whole[1].activations // 4
    assert micro[1].exact == whole[1].exact and micro[0] == whole[0]  # the backbone stage as it was
