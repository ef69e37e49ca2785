"""Joint training (``train.trainable: [gate, cheap_ffn, backbone]``): the backbone trains only in joint arms,
is saved with the run, weight decay falls on matrices only, the memory estimate counts the backbone's
gradients and AdamW state, and a joint run resumes bit-exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import MICRO, SPECS, lone_and_resumed, strip_wall, tiny_spec
from specroute.flops.analytic import count_params
from specroute.spec.loader import load_study
from specroute.spec.training import OptimizerSpec
from specroute.train import StudyOptions, run_study
from specroute.train.memory import stage_memory
from specroute.train.stages import seeded_model, trainable_params
from specroute.train.step import make_optimizer

JOINT = ["gate", "cheap_ffn", "backbone"]


def a8(*extra: str):
    return load_study(SPECS / "a8_joint.yaml", "smoke", [*MICRO, *extra])


def cached_backbone(cache: Path) -> dict[str, torch.Tensor]:
    (path,) = cache.glob("backbones/*/backbone.safetensors")
    return load_file(str(path))


def test_backbone_trains_and_is_saved_only_in_joint_arms(tmp_path):
    resolved = a8()
    arms = ["G1_lm", "G1_lm_joint"]
    run_study(resolved, StudyOptions(out=tmp_path / "out", arms=arms, seeds=[0], device="cpu",
                                     cache=tmp_path / "cache", workers=1))
    backbone = cached_backbone(tmp_path / "cache")
    runs = tmp_path / "out" / "runs"
    frozen = load_file(str(runs / "G1_lm" / "seed0" / "controller.safetensors"))
    joint = load_file(str(runs / "G1_lm_joint" / "seed0" / "controller.safetensors"))
    assert set(frozen) & set(backbone) == set()
    assert set(backbone) <= set(joint)
    changed = {k for k in backbone if not torch.equal(joint[k], backbone[k])}
    assert changed == set(backbone)  # every backbone tensor took AdamW steps (no zero-gradient leftovers)
    # loading the run (backbone, then the run's file over it, strictly) gives the model that was evaluated
    spec = resolved.arm_spec("G1_lm_joint")
    model = seeded_model(spec, 0)
    model.load_backbone(backbone)
    missing, unexpected = model.load_state_dict(joint, strict=False)
    tied = {"lm_head.weight"} if spec.model.tie_embeddings else set()  # the same tensor as wte.weight
    assert unexpected == [] and set(missing) == {n for n, _ in model.param_groups()["target_head"]} | tied
    assert all(torch.equal(model.state_dict()[k], v) for k, v in joint.items())


def test_weight_decay_on_matrices_only_in_a_joint_run():
    model = seeded_model(tiny_spec({"train": {"trainable": JOINT}}), 0)
    params = trainable_params(model)
    assert set(params) == {n for n, _ in model.named_parameters() if ".gate.target." not in n}
    opt = make_optimizer(params, OptimizerSpec(weight_decay=0.1))
    names = {id(p): n for n, p in params.items()}
    by_decay = {g["weight_decay"]: {names[id(p)] for p in g["params"]} for g in opt.param_groups}
    assert set(by_decay) == {0.1, 0.0}
    decayed, not_decayed = by_decay[0.1], by_decay[0.0]
    assert {"wte.weight", "wpe.weight", "blocks.0.attn.qkv.weight", "blocks.0.ffn.fc.weight"} <= decayed
    assert all(n.endswith(".weight") and ".ln" not in n for n in decayed)
    assert {"blocks.0.ln1.weight", "blocks.0.ln1.bias", "blocks.0.ffn.fc.bias", "ln_f.weight"} <= not_decayed
    assert all(params[n].dim() == 1 for n in not_decayed)
    assert decayed | not_decayed == set(params) and decayed & not_decayed == set()


def test_defaults_train_no_backbone_parameter():
    spec = tiny_spec()
    assert list(spec.train.trainable) == ["gate", "cheap_ffn"]
    model = seeded_model(spec, 0)
    backbone = {n for n, _ in model.param_groups()["backbone"]}
    assert set(trainable_params(model)) & backbone == set()
    assert set(trainable_params(model)) == {n for g in ("gate", "cheap_ffn") for n, _ in model.param_groups()[g]}


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_memory_counts_backbone_gradients_and_adamw_state(device):
    frozen, joint = tiny_spec(), tiny_spec({"train": {"trainable": JOINT}})
    pc = count_params(frozen)
    run_frozen, run_joint = stage_memory(frozen, device)[1], stage_memory(joint, device)[1]
    assert run_joint.exact - run_frozen.exact == pc.backbone * 12  # fp32 gradient + AdamW's two moments
    assert run_joint.activations > run_frozen.activations  # autograd keeps every layer below the controller
    assert stage_memory(joint, device)[0] == stage_memory(frozen, device)[0]  # stage 1 as it was


def test_joint_run_resumes_to_identical_metrics(tmp_path):
    resolved = a8()
    # backbone 30 steps, controller checkpoint at 5, died at 8
    ref, got, latest = lone_and_resumed(resolved, "G3_lm_joint", tmp_path, (38,))
    assert latest == "step_000005"
    a = ref.summary["arms"]["G3_lm_joint"]["seeds"]["0"]
    b = got.summary["arms"]["G3_lm_joint"]["seeds"]["0"]
    assert strip_wall(a) == strip_wall(b) and a["loss_grad_norm"]["backbone"]["lm"] > 0
    run = Path("runs") / "G3_lm_joint" / "seed0" / "controller.safetensors"
    want, have = load_file(str(ref.out / run)), load_file(str(got.out / run))
    assert want.keys() == have.keys() and all(torch.equal(want[k], have[k]) for k in want)


def joint_target(update: dict | None = None):
    from specroute.spec.loader import deep_merge
    from specroute.spec.models import RunSpec
    from specroute.verify.common import Target

    base = {"model": {"n_layers": 4, "d_model": 32, "n_heads": 2, "context_length": 32},
            "routing": {"controlled_layers": [1], "cheap_ffn_hidden": 16}, "loss": {"util": 1.0, "rank": 1.0},
            "train": {"seq_len": 16, "batch_size": 4, "trainable": JOINT}, "backbone": {"train": {"seq_len": 16}}}
    return Target("joint", RunSpec.model_validate(deep_merge(base, update or {})))


def test_gradient_verifier_knows_the_backbone_path_of_a_joint_run_and_bites(monkeypatch):
    import specroute.model.layers as layers
    from specroute.verify import gradients
    from specroute.verify.common import Context

    ctx = Context(examples=3, train_steps=5)
    t = joint_target()  # controlled layer 1 of 4: util's gradient must stop below blocks 2 and 3
    assert [gradients.alone(term)(t, ctx).status for term in ("lm", "util", "rank", "budget")] == ["pass"] * 4
    real = layers.CausalSelfAttention.forward
    monkeypatch.setattr(layers.CausalSelfAttention, "forward", lambda self, x, kv=None: real(self, x, kv).detach())
    r = gradients.alone("lm")(t, ctx)
    assert r.status == "fail" and "blocks.0.ln1.weight got no gradient" in r.detail  # ln1 feeds only attention
