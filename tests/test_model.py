"""The compiler (spec -> nn.Module) on tiny specs: budget exactness, masked == gather, routed all-full ==
dense, gradient paths into the gate, controller-only freezing, the closed-form parameter count."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from helpers import G3, SPECS, tiny_spec, tokens
from torch.testing import assert_close

from specroute.losses import lm_loss
from specroute.flops.analytic import count_params
from specroute.model.decoder import Decoder, NonCausalRoutingError, build_model
from specroute.model.routing import decide
from specroute.spec.loader import rebuild
from specroute.spec.models import BudgetSpec, ceil_budget


ENFORCEMENTS = ["topk_sequence", "topk_batch", "threshold"]
budgets = st.sampled_from([0.0, 1e-3, 0.5, 1.0]) | st.floats(0.0, 1.0)


def models_with_same_weights(spec, *variants, seed=0):
    """The model of ``spec`` and one per variant update, all holding the first one's weights."""
    torch.manual_seed(seed)
    first = build_model(spec)
    out = [first]
    for update in variants:
        other = build_model(rebuild(spec, update))
        other.load_state_dict(first.state_dict())
        out.append(other)
    return out


def gate_params(model):
    return model.param_groups()["gate"]


# --------------------------------------------------------------------------------------------------
# budget


@settings(deadline=None)
@given(st.integers(1, 5), st.integers(1, 33), budgets, st.booleans(), st.integers(0, 2**16))
def test_topk_full_share_is_exactly_the_budget(B, T, b, tied, seed):
    score = torch.zeros(B, T) if tied else torch.randn(B, T, generator=torch.Generator().manual_seed(seed))
    per_row = decide(score, BudgetSpec(full_fraction=b, enforcement="topk_sequence"))
    assert per_row.dtype == torch.bool and per_row.shape == (B, T)
    assert per_row.sum(dim=1).tolist() == [ceil_budget(b, T)] * B
    batch = decide(score, BudgetSpec(full_fraction=b, enforcement="topk_batch"))
    assert batch.sum().item() == ceil_budget(b, B * T)


@settings(deadline=None)
@given(st.integers(1, 4), st.integers(1, 33), st.integers(0, 2**16))
def test_topk_picks_the_highest_scores(B, T, seed):
    score = torch.randn(B, T, generator=torch.Generator().manual_seed(seed))
    full = decide(score, BudgetSpec(full_fraction=0.5, enforcement="topk_sequence"))
    for row, chosen in zip(score, full):
        if chosen.any() and (~chosen).any():
            assert row[chosen].min() >= row[~chosen].max()
    full = decide(score, BudgetSpec(full_fraction=0.5, enforcement="topk_batch"))
    if full.any() and (~full).any():
        assert score[full].min() >= score[~full].max()


def test_threshold_is_score_above_zero():
    score = torch.tensor([[-1.0, 0.0, 2.0, 1e-6]])
    assert decide(score, BudgetSpec(full_fraction=0.5, enforcement="threshold")).tolist() == [
        [False, False, True, True]]


@settings(deadline=None, max_examples=15)
@given(st.integers(1, 3), st.sampled_from([1, 2, 7, 16]), budgets, st.sampled_from(["topk_sequence", "topk_batch"]))
def test_the_model_realises_the_budget(B, T, b, enforcement):
    spec = tiny_spec({"routing": {"budget": {"full_fraction": b, "enforcement": enforcement}}})
    torch.manual_seed(0)
    with torch.no_grad():
        out = build_model(spec)(tokens(B, T))
    for rec in out.routing:
        if enforcement == "topk_sequence":
            assert rec.full_BT.sum(dim=1).tolist() == [ceil_budget(b, T)] * B
        else:
            assert rec.full_BT.sum().item() == ceil_budget(b, B * T)


def test_threshold_decisions_are_causal_and_topk_ones_are_not():
    idx = tokens(2, 16, seed=1)
    changed = idx.clone()
    changed[:, 8:] = tokens(2, 8, seed=2)

    def decisions(enforcement):
        spec = tiny_spec({"routing": {"budget": {"enforcement": enforcement}}})
        torch.manual_seed(0)
        model = build_model(spec)
        with torch.no_grad():
            return [(a.full_BT, b.full_BT) for a, b in zip(model(idx).routing, model(changed).routing)]

    for before, after in decisions("threshold"):
        assert torch.equal(before[:, :8], after[:, :8])
    assert any(not torch.equal(before[:, :8], after[:, :8]) for before, after in decisions("topk_sequence"))


def test_generation_refuses_a_topk_budget_and_runs_with_threshold():
    torch.manual_seed(0)
    with pytest.raises(NonCausalRoutingError, match="not causal"):
        build_model(tiny_spec()).generate(tokens(1, 4), 2)
    spec = tiny_spec({"routing": {"budget": {"enforcement": "threshold"}}})
    out = build_model(spec).generate(tokens(1, 4), 3)
    assert out.shape == (1, 7)
    assert torch.equal(out[:, :4], tokens(1, 4))


# --------------------------------------------------------------------------------------------------
# masked == gather; routed all-full == dense


@settings(deadline=None)
@given(
    B=st.integers(1, 3),
    T=st.sampled_from([1, 2, 5, 9, 16]),
    b=budgets,
    enforcement=st.sampled_from(ENFORCEMENTS),
    cheap=st.sampled_from([0, 16]),
    g3=st.booleans(),
    forced=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_masked_and_gather_give_the_same_outputs_and_gate_gradients(B, T, b, enforcement, cheap, g3, forced, seed):
    update = {"routing": {"budget": {"full_fraction": b, "enforcement": enforcement}, "cheap_ffn_hidden": cheap}}
    spec = tiny_spec({**update, **(G3 if g3 else {})})
    masked, gather = models_with_same_weights(spec, {"routing": {"execution": "gather"}}, seed=seed)
    idx = tokens(B, T, seed=seed)
    force = None
    if forced:
        g = torch.Generator().manual_seed(seed)
        force = {layer: torch.rand(B, T, generator=g) < 0.5 for layer in spec.routing.controlled_layers}
    outs = []
    for model in (masked, gather):
        out = model(idx, force=force)
        lm_loss(out.logits_BTV, idx).backward()
        outs.append(out)
    for a, b_ in zip(outs[0].routing, outs[1].routing):
        assert torch.equal(a.full_BT, b_.full_BT)
    assert_close(outs[0].logits_BTV, outs[1].logits_BTV)
    for (name, p), (_, q) in zip(gate_params(masked), gate_params(gather)):
        assert_close(p.grad, q.grad, msg=name, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("g3", [False, True])
def test_straight_through_has_the_same_forward_values(g3):
    spec = tiny_spec(G3 if g3 else {})
    score_scaling, straight_through = models_with_same_weights(spec, {"routing": {"estimator": "straight_through"}})
    idx = tokens(2, 9)
    with torch.no_grad():
        assert torch.equal(score_scaling(idx).logits_BTV, straight_through(idx).logits_BTV)


@pytest.mark.parametrize("execution", ["masked", "gather"])
@pytest.mark.parametrize("g3", [False, True])
def test_routed_all_full_is_the_dense_model(execution, g3):
    spec = tiny_spec({"routing": {"execution": execution, "budget": {"full_fraction": 1.0}}, **(G3 if g3 else {})})
    torch.manual_seed(0)
    routed = build_model(spec)
    dense = build_model(spec, routed=False)
    dense.load_backbone(routed.backbone_state_dict())
    idx = tokens(3, 11)
    with torch.no_grad():
        reference = dense(idx)
        assert reference.routing == []
        assert torch.equal(routed(idx, all_full=True).logits_BTV, reference.logits_BTV)
        # gate-chosen, every token full: the score scaling's value is exactly 1 (was 1 +- 1 ulp)
        chosen = routed(idx)
        assert all(rec.full_BT.all() for rec in chosen.routing)
        assert torch.equal(chosen.logits_BTV, reference.logits_BTV)


def test_cheap_width_zero_is_a_skip():
    spec = tiny_spec({"routing": {"cheap_ffn_hidden": 0}})
    torch.manual_seed(0)
    model = build_model(spec)
    idx = tokens(2, 5)
    with torch.no_grad():
        out = model(idx, force={layer: False for layer in spec.routing.controlled_layers})
    for rec in out.routing:
        assert torch.equal(rec.h_out_BTD, rec.h_in_BTD)
    assert model.param_groups()["cheap_ffn"] == []


def test_gather_under_bf16_autocast_keeps_the_branch_dtype():
    """Regression: the gather buffer was allocated in the input's dtype (float32 LayerNorm output), so
    under autocast it disagreed with the bf16 FFN outputs (an error wherever index_copy does not promote)."""
    spec = tiny_spec()
    masked, gather = models_with_same_weights(spec, {"routing": {"execution": "gather"}})
    h = torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(0))
    full = torch.rand(2, 7, generator=torch.Generator().manual_seed(1)) < 0.5
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs = []
        for model in (masked, gather):
            block = model.blocks[1]
            x = block.ln2(h)
            routed = block.routed_ffn
            p = torch.sigmoid(routed.gate(h).score_BT)
            run = routed._masked if model is masked else routed._gather
            outs.append(run(x, block.ffn, full, p))
        # the gate's score (float32 under autocast: fp32_gate) scales the bf16 branch outputs, so both
        # executions give its float32; what matters here is that they agree
        assert outs[0].dtype == outs[1].dtype
        assert_close(outs[0].float(), outs[1].float(), rtol=2e-2, atol=2e-2)
        assert_close(masked(tokens(2, 7)).logits_BTV.float(), gather(tokens(2, 7)).logits_BTV.float(),
                     rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize("kind", ["G1", "G3"])
def test_gate_scores_are_float32_under_bf16_autocast(kind):
    """Under bf16 autocast the gate runs in float32 (fp32_gate): its scores are the float32 scores exactly,
    so top-k is decided as in float32, not by bf16 ties."""
    spec = tiny_spec(G3 if kind == "G3" else None)
    torch.manual_seed(0)
    model = build_model(spec)
    gate = model.blocks[1].routed_ffn.gate
    h = torch.randn(4, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = gate(h)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = gate(h)
            outside = (gate.fc if kind == "G1" else gate.encoder)(h)  # the same layer outside the gate's forward
    assert got.score_BT.dtype == torch.float32
    assert_close(got.score_BT, ref.score_BT, rtol=0, atol=0)
    if kind == "G3":
        assert got.pred_full_BTK.dtype == torch.float32
        assert_close(got.pred_full_BTK - got.pred_cheap_BTK, ref.pred_full_BTK - ref.pred_cheap_BTK, rtol=0, atol=0)
    assert outside.dtype == torch.bfloat16  # autocast is on: only the gate's forward turns it off
    budget = spec.routing.budget
    assert torch.equal(decide(got.score_BT, budget), decide(ref.score_BT, budget))


def test_context_length_is_enforced():
    with pytest.raises(ValueError, match="context_length=32"):
        build_model(tiny_spec())(tokens(1, 33))


# --------------------------------------------------------------------------------------------------
# gradient paths and freezing


@pytest.mark.parametrize("g3", [False, True, "layernorm"], ids=["G1", "G3", "G3-score-layernorm"])
@pytest.mark.parametrize(
    "routing",
    [
        {"execution": "masked", "estimator": "score_scaling"},
        {"execution": "gather", "estimator": "score_scaling"},
        {"execution": "masked", "estimator": "straight_through"},
        {"execution": "gather", "budget": {"enforcement": "threshold"}},
        {"execution": "gather", "budget": {"enforcement": "topk_batch"}, "cheap_ffn_hidden": 0},
    ],
    ids=["masked-scaling", "gather-scaling", "straight-through", "threshold", "topk-batch-skip"],
)
def test_lm_loss_alone_reaches_every_gate_parameter_and_no_backbone_parameter(g3, routing):
    gate = {"gate": {**G3["gate"], "score_norm": "layernorm"}} if g3 == "layernorm" else G3 if g3 else {}
    spec = tiny_spec({"routing": routing, **gate})
    torch.manual_seed(0)
    model = build_model(spec)
    idx = tokens(2, 16)
    out = model(idx)
    lm_loss(out.logits_BTV, idx).backward()
    groups = model.param_groups()
    names = [n for n, _ in groups["gate"]]
    if g3:
        assert any(".encoder." in n for n in names) and any(".predictor." in n for n in names)
        assert any(".score_head." in n for n in names)
    for name, p in groups["gate"]:
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    for name, p in groups["backbone"] + groups["target_head"]:
        assert not p.requires_grad, name
        assert p.grad is None, name
    took_cheap = {rec.layer: bool((~rec.full_BT).any()) for rec in out.routing}
    for name, p in groups["cheap_ffn"]:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert (p.grad.abs().sum() > 0) == took_cheap[int(name.split(".")[1])], name


def test_param_groups_partition_the_parameters():
    torch.manual_seed(0)
    model = build_model(tiny_spec(G3))
    groups = model.param_groups()
    named = [n for params in groups.values() for n, _ in params]
    assert sorted(named) == sorted(n for n, _ in model.named_parameters())
    assert len(groups["target_head"]) == 2  # one per controlled layer


@pytest.mark.parametrize(
    ("trainable", "expected"),
    [
        (["gate", "cheap_ffn"], {"gate", "cheap_ffn"}),
        (["gate"], {"gate"}),
        (["gate", "cheap_ffn", "backbone"], {"gate", "cheap_ffn", "backbone"}),
    ],
)
def test_the_trainable_set_is_the_spec_s(trainable, expected):
    spec = tiny_spec({"train": {"trainable": trainable}, **G3})
    model = build_model(spec)
    groups = model.param_groups()
    for group, params in groups.items():
        for name, p in params:
            assert p.requires_grad == (group in expected), name
    assert spec.train.controller_only == ("backbone" not in expected)


def test_set_trainable_returns_the_optimiser_set_and_refuses_unknown_groups():
    model = build_model(tiny_spec(G3))
    params = model.set_trainable(["gate"])
    assert {id(p) for p in params} == {id(p) for _, p in model.param_groups()["gate"]}
    with pytest.raises(ValueError, match="unknown trainable"):
        model.set_trainable(["gate", "target_head"])


def test_the_target_head_is_fixed_by_its_seed():
    spec = tiny_spec(G3)
    torch.manual_seed(0)
    a = build_model(spec)
    torch.manual_seed(1)
    b = build_model(spec)
    ta, tb = a.param_groups()["target_head"], b.param_groups()["target_head"]
    for (_, p), (_, q) in zip(ta, tb):
        assert torch.equal(p, q)
    assert not torch.equal(ta[0][1], ta[1][1])  # seeded per layer
    assert not torch.equal(a.param_groups()["gate"][2][1], b.param_groups()["gate"][2][1])


def test_gate_init_bias_comes_from_the_spec():
    model = build_model(tiny_spec({"gate": {"init_bias": 1.5}}))
    for block in model.controlled_blocks():
        assert block.routed_ffn.gate.score_head.bias.item() == 1.5


@pytest.mark.parametrize("gate", [{}, G3], ids=["G1", "G3"])
def test_score_head_init_std_comes_from_the_spec(gate):
    """score_init_std redraws only the score head's weight; null (the default) leaves the model as before."""
    spec = tiny_spec(gate)
    torch.manual_seed(0)
    default = build_model(spec)
    torch.manual_seed(0)
    scaled = build_model(tiny_spec({"gate": {**spec.gate.model_dump(), "score_init_std": 5.0}}))
    for (name, p), (_, q) in zip(default.named_parameters(), scaled.named_parameters()):
        if ".score_head.weight" in name:
            assert 3.0 < q.std().item() < 8.0 and p.std().item() < 0.1, name
        else:
            assert torch.equal(p, q), name


def test_load_backbone_is_strict():
    torch.manual_seed(0)
    a, b = build_model(tiny_spec()), build_model(tiny_spec())
    state = a.backbone_state_dict()
    b.load_backbone(state)
    for key, value in b.backbone_state_dict().items():
        assert torch.equal(value, state[key])
    with pytest.raises(RuntimeError, match="missing"):
        b.load_backbone({k: v for k, v in state.items() if k != "ln_f.weight"})
    with pytest.raises(RuntimeError, match="unexpected"):
        b.load_backbone({**state, "blocks.1.routed_ffn.gate.score_head.bias": torch.zeros(1)})


# --------------------------------------------------------------------------------------------------
# parameter count


@pytest.mark.parametrize("g3", [False, True], ids=["G1", "G3"])
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("cheap", [0, 16])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_count_params_matches_the_built_model(g3, tied, cheap, bias):
    spec = tiny_spec({"model": {"tie_embeddings": tied, "bias": bias}, "routing": {"cheap_ffn_hidden": cheap},
                      **(G3 if g3 else {})})
    model = build_model(spec)
    count = count_params(spec)
    assert count.total == sum(p.numel() for p in model.parameters())
    for group, params in model.param_groups().items():
        assert getattr(count, group) == sum(p.numel() for _, p in params), group
    dense = build_model(spec, routed=False)
    assert count.backbone == sum(p.numel() for p in dense.parameters())


def test_count_params_of_the_paper_model_built_on_the_meta_device():
    from specroute.spec import load_study

    resolved = load_study(SPECS / "a3.yaml", "paper")
    for arm in ("G3_lm",):  # G3: gate, predictor and target head (G1's count is checked on tiny specs)
        spec = resolved.arm_spec(arm)
        with torch.device("meta"):
            model = Decoder(spec)
        count = count_params(spec)
        assert count.total == sum(p.numel() for p in model.parameters())
        assert count.routed_model == 157_519_104
        assert abs(count.routed_model - 157.5e6) <= 0.005 * 157.5e6
