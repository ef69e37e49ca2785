"""The analytic cost model against FlopCounterMode on the recipes' corners: every branch of
``step_macs`` (labeling, layers per step, top-k batch, skip cheap FFN, trainable set, no LM term)."""

from __future__ import annotations

import pytest

from specroute.flops.analytic import DENOMINATORS, dense_step_macs, step_macs
from specroute.spec.models import RunSpec
from specroute.verify.common import shrink
from specroute.verify.flops import measure_step

BASE = RunSpec.model_validate({"loss": {"util": 1.0, "rank": 1.0}})


@pytest.mark.parametrize("update", [
    {"loss": {"oracle": {"labeling": "on_policy", "layers_per_step": None}}},
    {"loss": {"oracle": {"labeling": "on_policy", "layers_per_step": None}}, "routing": {"execution": "gather"}},
    {"routing": {"budget": {"enforcement": "topk_batch"}}, "loss": {"oracle": {"layers_per_step": None}}},
    {"routing": {"cheap_ffn_hidden": 0}, "loss": {"oracle": {"layers_per_step": None}}},
    {"routing": {"controlled_layers": [0, 2]}, "loss": {"util": 0.0, "rank": 0.0}},
    {"train": {"trainable": ["gate"]}, "loss": {"util": 0.0, "rank": 0.0}},
    {"train": {"trainable": ["gate", "cheap_ffn", "backbone"]}, "loss": {"util": 0.0, "rank": 0.0}},
    {"loss": {"lm": 0.0, "util": 1.0, "rank": 0.0, "oracle": {"layers_per_step": None}}},
    {"gate": {"kind": "G3"}, "loss": {"lm": 0.0, "util": 0.0, "rank": 0.0, "jepa": 1.0}},
    {"gate": {"kind": "G3"}, "routing": {"execution": "gather"},
     "loss": {"jepa": 1.0, "oracle": {"layers_per_step": None}}},
    {"loss": {"oracle": {"counterfactual": "per_token", "tokens_per_sequence": 3, "layers_per_step": None}}},
    {"loss": {"oracle": {"counterfactual": "per_token", "tokens_per_sequence": 3, "labeling": "on_policy",
                         "layers_per_step": None}}, "routing": {"execution": "gather"}},
    {"loss": {"oracle": {"counterfactual": "per_token", "tokens_per_sequence": 99, "labeling": "on_policy",
                         "layers_per_step": None}}, "routing": {"budget": {"enforcement": "threshold"}}},
], ids=["on_policy", "on_policy_gather", "topk_batch", "skip_cheap", "layer0", "gate_only", "backbone",
        "no_lm_util", "no_lm_jepa", "g3_gather", "per_token", "per_token_on_policy_gather",
        "per_token_every_token_threshold"])
def test_analytic_step_equals_flopcountermode(update):
    spec = shrink(BASE, update, seq_len=12, batch_size=2)
    m = measure_step(spec)
    parts = step_macs(spec, full_fraction=m["full_fraction"])
    assert m["uncounted"] == {}
    assert parts["total"] == pytest.approx(m["step"], rel=1e-9)
    for d in DENOMINATORS:
        assert dense_step_macs(spec, d) == pytest.approx(m["dense"][d], rel=1e-9)


def test_unknown_denominator_is_refused():
    with pytest.raises(ValueError, match="denominator"):
        dense_step_macs(BASE, "per_token")
