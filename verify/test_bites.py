"""Every verifier bites: break the model on purpose and watch the matching verifier fail.

Each test first runs the verifier on the healthy model (it passes), then on a deliberately broken one
(monkeypatched for the test only) and asserts it fails, with the failure named in its detail.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

import specroute.losses as losses
import specroute.model.layers as layers
import specroute.model.routing as routing
import specroute.verify.oracle as oracle_mod
from specroute.model.decoder import Decoder
from specroute.model.routing import G1Gate, G3Gate, GateOut
from specroute.spec.models import RunSpec
from specroute.verify import budget, causality, flops, gradients, jepa, oracle
from specroute.verify.common import Context, Target

CTX = Context(examples=4, train_steps=20)


def target(update: dict | None = None) -> Target:
    """A small study arm: G1 (or as updated), topk_sequence at b = 0.5, util/rank on."""
    base = {"model": {"n_layers": 4, "d_model": 32, "n_heads": 2, "context_length": 32},
            "routing": {"controlled_layers": [1, 3], "cheap_ffn_hidden": 16},
            "loss": {"util": 1.0, "rank": 1.0},
            "train": {"seq_len": 16, "batch_size": 4}, "backbone": {"train": {"seq_len": 16}}}
    from specroute.spec.loader import deep_merge

    return Target("bite", RunSpec.model_validate(deep_merge(base, update or {})))


G3 = {"gate": {"kind": "G3", "latent_dim": 8, "predictor_hidden": 16}, "loss": {"jepa": 1.0}}


def test_budget_off_by_one_token_is_caught(monkeypatch):
    t = target()
    assert budget.topk_exact(t, CTX).status == "pass"
    real = routing.ceil_budget
    monkeypatch.setattr(routing, "ceil_budget", lambda b, n: max(0, real(b, n) - 1))
    r = budget.topk_exact(t, CTX)
    assert r.status == "fail"
    assert "full tokens, expected" in r.detail


def test_detached_gate_is_caught(monkeypatch):
    t = target()
    assert gradients.alone("lm")(t, CTX).status == "pass"
    real = G1Gate.forward

    def detached(self, h_BTD):
        out = real(self, h_BTD)
        return GateOut(out.score_BT.detach())

    monkeypatch.setattr(G1Gate, "forward", detached)
    r = gradients.alone("lm")(t, CTX)
    assert r.status == "fail"
    assert "gate" in r.detail and "no gradient" in r.detail


def test_detached_g3_score_is_caught(monkeypatch):
    t = target(G3)
    assert gradients.alone("lm")(t, CTX).status == "pass"
    real = G3Gate.forward

    def detached(self, h_BTD):
        out = real(self, h_BTD)
        return GateOut(out.score_BT.detach(), out.pred_full_BTK, out.pred_cheap_BTK)

    monkeypatch.setattr(G3Gate, "forward", detached)
    assert gradients.alone("lm")(t, CTX).status == "fail"


def test_trainable_target_head_is_caught(monkeypatch):
    t = target(G3)
    assert jepa.target_frozen(t, CTX).status == "pass"
    real = Decoder.set_trainable

    def leaky(self, trainable):
        params = real(self, trainable)
        for _, p in self.param_groups()["target_head"]:
            p.requires_grad_(True)  # the bug: the fixed head left trainable
        return params

    monkeypatch.setattr(Decoder, "set_trainable", leaky)
    r = jepa.target_frozen(t, CTX)
    assert r.status == "fail"
    assert "target head" in r.detail


def test_target_head_changed_by_the_optimiser_is_caught(monkeypatch):
    """Even if it claims to be frozen, a target head whose weights move during training is caught."""
    t = target(G3)
    real = G3Gate.target_latent

    def drifting(self, h_in_BTD, h_after_BTD):
        with torch.no_grad():
            self.target.weight.add_(1e-3)
        return real(self, h_in_BTD, h_after_BTD)

    monkeypatch.setattr(G3Gate, "target_latent", drifting)
    r = jepa.target_frozen(t, CTX)
    assert r.status == "fail"
    assert "changed" in r.detail


def test_jepa_target_of_the_wrong_kind_is_caught(monkeypatch):
    """A gate that reads T(h_after) whatever its ``target`` says fails the target's equation."""
    t = target({"gate": {**G3["gate"], "target": "ffn_effect"}, "loss": {"jepa": 1.0}})
    assert jepa.target_equation(t, CTX).status == "pass"
    monkeypatch.setattr(G3Gate, "target_latent", lambda self, h_in_BTD, h_after_BTD: self.target(h_after_BTD.detach()))
    r = jepa.target_equation(t, CTX)
    assert r.status == "fail"
    assert "target differs" in r.detail


def test_jepa_target_without_stop_gradient_is_caught(monkeypatch):
    t = target({"gate": {**G3["gate"], "target": "ffn_effect"}, "loss": {"jepa": 1.0}})
    no_stop_gradient = lambda self, h_in_BTD, h_after_BTD: self.target(h_after_BTD - h_in_BTD)  # noqa: E731
    monkeypatch.setattr(G3Gate, "target_latent", no_stop_gradient)
    r = jepa.target_equation(t, CTX)
    assert r.status == "fail"
    assert "not stop-gradient" in r.detail


def test_future_peeking_threshold_is_caught(monkeypatch):
    t = target({"routing": {"budget": {"enforcement": "threshold"}}, "loss": {"budget": 1.0}})
    assert causality.threshold_causal(t, CTX).status == "pass"
    real = routing.decide

    def peeking(score_BT, budget_spec):
        if budget_spec.enforcement != "threshold":
            return real(score_BT, budget_spec)
        ahead = torch.cat([score_BT[:, 1:], score_BT[:, -1:]], dim=1)  # the score of token t + 1
        return (score_BT + ahead) > 0

    monkeypatch.setattr(routing, "decide", peeking)
    r = causality.threshold_causal(t, CTX)
    assert r.status == "fail"
    assert "changed" in r.detail


def test_topk_generation_that_runs_is_caught(monkeypatch):
    t = target()
    assert causality.topk_reported(t, CTX).status == "pass"
    monkeypatch.setattr(Decoder, "generate", lambda self, idx, n, temperature=1.0: idx)
    assert causality.topk_reported(t, CTX).status == "fail"


def test_wrong_batched_oracle_labels_are_caught(monkeypatch):
    t = target()
    assert oracle.brute_force(t, CTX).status == "pass"
    real = losses.oracle_labels

    def always_off_policy(model, out, targets, layers, labeling):
        return real(model, out, targets, layers, "off_policy")  # the bug: ignores the labeling

    monkeypatch.setattr(oracle_mod, "oracle_labels", always_off_policy)
    r = oracle.brute_force(t, CTX)
    assert r.status == "fail"
    assert "on_policy" in r.detail


def test_per_token_labels_that_flip_every_token_are_caught(monkeypatch):
    """One-token labels computed by flipping every token of the layer at once (all-flip labels read at the
    sampled positions) fail the brute force, which flips one token at a time."""
    t = target()
    assert oracle.brute_force(t, CTX).status == "pass"
    real = losses.per_token_labels

    def all_at_once(model, out, targets, layers, labeling, S, generator=None, positions=None):
        exact = real(model, out, targets, layers, labeling, S, generator, positions)
        flipped = losses.oracle_labels(model, out, targets, layers, labeling)  # the bug: every token flips
        return {l: losses.TokenLabels(e.pos_BS, flipped[l].gather(1, e.pos_BS), e.own_BS) for l, e in exact.items()}

    monkeypatch.setattr(oracle_mod, "per_token_labels", all_at_once)
    r = oracle.brute_force(t, CTX)
    assert r.status == "fail"
    assert "per_token" in r.detail and "batched != brute force" in r.detail


def test_per_token_labels_of_the_own_loss_only_fail_the_trained_model_parity(monkeypatch):
    """``oracle.per_token_agreement`` is a measurement, but its parity part bites: one-token labels that
    drop the later tokens' losses differ from the brute force on the trained model."""
    t = target()
    quick = functools.partial(oracle_mod.measure_per_token_agreement, backbone_steps=10, controller_steps=4)
    monkeypatch.setattr(oracle_mod, "measure_per_token_agreement", quick)  # a briefly trained model is enough
    oracle_mod._agreement.cache_clear()
    try:
        healthy = oracle.per_token_agreement(t, CTX)
        assert healthy.status == "pass" and healthy.values["parity_err"] <= oracle.AGREEMENT_PARITY_TOLERANCE
        real = losses.per_token_labels

        def own_loss_only(*args, **kwargs):
            return {l: losses.TokenLabels(e.pos_BS, e.own_BS, e.own_BS) for l, e in real(*args, **kwargs).items()}

        monkeypatch.setattr(oracle_mod, "per_token_labels", own_loss_only)
        oracle_mod._agreement.cache_clear()
        r = oracle.per_token_agreement(t, CTX)
        assert r.status == "fail"
        assert r.values["parity_err"] > oracle.AGREEMENT_PARITY_TOLERANCE
    finally:
        oracle_mod._agreement.cache_clear()  # no broken figure stays cached for other tests


@pytest.mark.filterwarnings("ignore:.*torch.jit.script.*:DeprecationWarning")  # fvcore traces the patched FFN
def test_routed_matmul_counted_as_zero_is_caught(monkeypatch):
    """A full FFN computed by an op no counter knows (broadcast multiply + sum) counts as zero."""
    t = target()
    assert flops.routed_forward(t, CTX).status == "pass"

    def uncounted(self, x):
        h = (x.unsqueeze(-1) * self.fc.weight.t()).sum(-2) + self.fc.bias
        h = torch.nn.functional.gelu(h, approximate="tanh")
        return (h.unsqueeze(-1) * self.proj.weight.t()).sum(-2) + self.proj.bias

    monkeypatch.setattr(layers.FFN, "forward", uncounted)
    r = flops.routed_forward(t, CTX)
    assert r.status == "fail"
    assert "as 0" in r.detail


def test_a_wrong_cost_model_is_caught(monkeypatch):
    """The training-step check compares the analytic model with FlopCounterMode: an analytic model that
    forgets the cheap branch of masked layers forced full in the oracle continuations (the first draft's
    omission) fails it."""
    t = target({"routing": {"execution": "masked"}})
    assert flops.training_step(t, CTX).status == "pass"
    real = flops.step_macs

    def draft(spec, **kw):
        parts = dict(real(spec, **kw))
        if spec.routing.execution == "masked" and spec.loss.uses_oracle:
            parts["oracle"] *= 0.97
            parts["total"] = sum(v for k, v in parts.items() if k != "total")
        return parts

    monkeypatch.setattr(flops, "step_macs", draft)
    assert flops.training_step(t, CTX).status == "fail"


def test_collapse_that_is_not_measurable_is_caught(monkeypatch):
    """If the latent statistics could not tell a collapsed predictor from a working one, A1 could not be
    judged: a variance that ignores its input makes the check fail."""
    t = target(G3)
    assert jepa.collapse_measurable(t, CTX).status == "pass"
    monkeypatch.setattr(jepa, "latent_variance", lambda z: 1.0)
    monkeypatch.setattr(jepa, "effective_rank", lambda z: 2.0)
    assert jepa.collapse_measurable(t, CTX).status == "fail"


def test_nan_under_extreme_hidden_states_is_caught(monkeypatch):
    t = target()
    assert gradients.extreme(t, CTX).status == "pass"

    def fragile(self, x):  # a norm without its epsilon guard: 0/0 for constant rows
        mu = x.mean(-1, keepdim=True)
        return (x - mu) / (x - mu).pow(2).mean(-1, keepdim=True).sqrt() * self.weight + (
            self.bias if self.bias is not None else 0)

    monkeypatch.setattr(nn.LayerNorm, "forward", fragile)
    monkeypatch.setattr(routing.G1Gate, "forward", lambda self, h: GateOut(
        self.score_head(torch.exp(self.fc(h))).squeeze(-1)))  # an unbounded gate: overflows at large h
    assert gradients.extreme(t, CTX).status == "fail"


def test_threshold_budget_verifier_passes_with_the_budget_loss_and_bites_without_it(monkeypatch):
    t = target({"routing": {"budget": {"enforcement": "threshold", "full_fraction": 0.3}},
                "loss": {"budget": 1.0, "util": 0.0, "rank": 0.0}})
    ctx = Context(examples=1, train_steps=50)
    ok = budget.threshold_trained(t, ctx)
    assert ok.status == "pass", ok.detail
    # the first draft of the budget loss: the mean of sigmoid(score), not the realised share
    monkeypatch.setattr(losses, "budget_loss", lambda routing, b: torch.stack(
        [(torch.sigmoid(r.gate.score_BT).mean() - b) ** 2 for r in routing]).mean())
    bad = budget.threshold_trained(t, ctx)
    assert bad.status == "fail"
    assert "realised full shares" in bad.detail


LLAMA = {"model": {"norm": "rmsnorm", "position": "rope", "ffn": "swiglu", "n_kv_heads": 1, "bias": False,
                   "tie_embeddings": False}}


def test_a_cost_model_blind_to_the_llama_options_is_caught(monkeypatch):
    """On a Llama-architecture spec the counters see SwiGLU's third matrix and grouped-query attention's
    smaller key/value projections: a cost model that prices the FFN as two matrices, or k and v as D x D,
    fails the dense-forward check."""
    import specroute.flops.analytic as analytic
    from specroute.spec.models import ModelSpec

    t = target(LLAMA)
    assert flops.fvcore_dense(t, CTX).status == "pass"
    with monkeypatch.context() as m:
        m.setattr(ModelSpec, "ffn_matrices", property(lambda self: 2))
        assert flops.fvcore_dense(t, CTX).status == "fail"
    monkeypatch.setattr(analytic, "attn_proj_macs_per_token", lambda m: 4 * m.d_model * m.d_model)
    assert flops.fvcore_dense(t, CTX).status == "fail"
