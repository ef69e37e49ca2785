"""The spec language and its loader: strictness, derived values, re-validation, extends/profiles/arms/--set
resolution, every shipped spec. Error reporting through the CLI is in test_cli.py."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError
from helpers import SPECS, TINY, tiny_spec, write

from specroute.spec import SpecError, load_study, rebuild
from specroute.spec.loader import deep_merge, dump_run, parse_set
from specroute.spec.base import Strict
from specroute.spec.models import RunSpec, ceil_budget
from specroute.spec.study import SpecFile, StudySpec

SHIPPED = sorted(SPECS.glob("*.yaml"))


# --------------------------------------------------------------------------------------------------
# the models


def all_spec_models() -> list[type[BaseModel]]:
    seen: list[type[BaseModel]] = []

    def visit(cls: type[Strict]) -> None:
        for sub in cls.__subclasses__():
            if sub not in seen:
                seen.append(sub)
                visit(sub)

    visit(Strict)
    return seen


def test_every_spec_model_is_strict_and_frozen():
    models = all_spec_models()
    assert len(models) >= 15
    for cls in models:
        assert cls.model_config["extra"] == "forbid", cls.__name__
        assert cls.model_config["frozen"] is True, cls.__name__


def test_every_field_of_the_schema_is_documented():
    schema = SpecFile.model_json_schema()
    undocumented = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for name, prop in node.get("properties", {}).items():
                if "description" not in prop:
                    undocumented.append(f"{where}.{name}")
            for key, value in node.items():
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for value in node:
                walk(value, where)

    walk(schema, "")
    assert undocumented == []


def test_defaults_validate_and_are_immutable():
    spec = RunSpec()
    assert spec.gate.kind == "G1"
    assert spec.data.kind == "embedded"
    with pytest.raises(ValidationError):
        spec.model.n_layers = 8  # type: ignore[misc]


def test_derived_values_are_computed():
    spec = tiny_spec({"model": {"d_ff": None}})
    assert spec.model.head_dim == 16
    assert spec.model.ffn_hidden == 4 * 32
    assert spec.n_controlled == 2
    assert spec.train.tokens_per_step == 2 * 16
    assert spec.train.controller_only is True
    assert spec.routing.budget.causal is False
    assert tiny_spec({"routing": {"budget": {"enforcement": "threshold"}}}).routing.budget.causal is True


@pytest.mark.parametrize(
    ("update", "field", "words"),
    [
        ({"model": {"n_heads": 3}}, "n_heads", "does not divide"),
        ({"routing": {"controlled_layers": [1, 1]}}, "controlled_layers", "duplicates"),
        ({"routing": {"controlled_layers": [2, 1]}}, "controlled_layers", "sorted"),
        ({"routing": {"controlled_layers": [-1]}}, "controlled_layers", "negative"),
        ({"routing": {"controlled_layers": [1, 4]}}, "routing.controlled_layers", "beyond model.n_layers=4"),
        ({"routing": {"execution": "gather", "estimator": "straight_through"}}, "estimator", "masked"),
        ({"loss": {"jepa": 1.0}}, "loss.jepa", "G3"),
        ({"train": {"seq_len": 64}}, "train.seq_len", "context_length=32"),
        ({"model": {"vocab_size": 64}}, "model.vocab_size", "bytes"),
        ({"data": {"kind": "fineweb_edu"}}, "model.vocab_size", "gpt2"),
    ],
)
def test_cross_field_rules_name_the_field(update, field, words):
    with pytest.raises(ValidationError) as info:
        tiny_spec(update)
    message = str(info.value)
    assert f"{field}:" in message
    assert words in message


def test_omitted_kind_is_the_default_kind():
    spec = RunSpec.model_validate({"gate": {"hidden": 8}, "data": {"heldout_fraction": 0.2}})
    assert (spec.gate.kind, spec.gate.hidden) == ("G1", 8)
    assert (spec.data.kind, spec.data.heldout_fraction) == ("embedded", 0.2)
    study = StudySpec.model_validate({"gates": {"G3": {"latent_dim": 4}}})
    assert study.gates["G3"].kind == "G3"


def test_rebuild_revalidates():
    spec = tiny_spec()
    variant = rebuild(spec, {"routing": {"budget": {"full_fraction": 0.25}}})
    assert variant.routing.budget.full_fraction == 0.25
    assert dump_run(variant) == deep_merge(dump_run(spec), {"routing": {"budget": {"full_fraction": 0.25}}})
    with pytest.raises(ValidationError):
        rebuild(spec, {"routing": {"budget": {"full_fraction": 1.5}}})
    with pytest.raises(ValidationError):
        rebuild(spec, {"routing": {"controlled_layers": [9]}})
    with pytest.raises(ValidationError):
        rebuild(spec, {"not_a_field": 1})


def test_rebuild_switching_gate_kind_drops_the_old_kind_fields():
    spec = rebuild(tiny_spec(), {"gate": {"kind": "G3"}})
    assert spec.gate.kind == "G3"
    assert not hasattr(spec.gate, "hidden")


@st.composite
def run_specs(draw) -> dict[str, Any]:
    """Valid raw run specs by construction: every field that changes what the model computes varies."""
    n_layers = draw(st.integers(1, 6))
    heads = draw(st.sampled_from([1, 2, 4]))
    controlled = sorted(draw(st.sets(st.integers(0, n_layers - 1), max_size=n_layers)))
    st_gather = draw(st.booleans())
    gate = draw(st.sampled_from([
        {"kind": "G1", "hidden": draw(st.integers(1, 64)), "init_bias": draw(st.floats(-3, 3))},
        {"kind": "G3", "latent_dim": draw(st.integers(1, 32)), "predictor_hidden": draw(st.integers(1, 64))},
    ]))
    seq_len = draw(st.integers(1, 64))
    return {
        "model": {"n_layers": n_layers, "d_model": heads * draw(st.integers(1, 16)), "n_heads": heads,
                  "context_length": draw(st.integers(seq_len, 128)), "vocab_size": draw(st.integers(256, 512)),
                  "tie_embeddings": draw(st.booleans()), "bias": draw(st.booleans())},
        "routing": {
            "controlled_layers": controlled,
            "budget": {"full_fraction": draw(st.floats(0, 1)),
                       "enforcement": draw(st.sampled_from(["topk_sequence", "topk_batch", "threshold"]))},
            "cheap_ffn_hidden": draw(st.integers(0, 64)),
            "execution": "gather" if st_gather else "masked",
            "estimator": "score_scaling" if st_gather else draw(st.sampled_from(["score_scaling", "straight_through"])),
        },
        "gate": gate,
        "loss": {"util": draw(st.floats(0, 2)), "rank": draw(st.floats(0, 2)),
                 "jepa": draw(st.floats(0, 2)) if gate["kind"] == "G3" else 0.0,
                 "oracle": {"labeling": draw(st.sampled_from(["off_policy", "on_policy"])),
                            "layers_per_step": draw(st.none() | st.integers(1, 4))}},
        "train": {"seq_len": seq_len, "batch_size": draw(st.integers(1, 8))},
        "backbone": {"train": {"seq_len": seq_len}},
    }


@settings(deadline=None)
@given(run_specs())
def test_valid_specs_validate_and_round_trip(raw):
    spec = RunSpec.model_validate(raw)
    assert spec.routing.controlled_layers == raw["routing"]["controlled_layers"]
    assert spec.gate.kind == raw["gate"]["kind"]
    again = RunSpec.model_validate(json.loads(json.dumps(dump_run(spec))))
    assert again == spec


@settings(deadline=None)
@given(run_specs(), st.integers(0, 4))
def test_a_controlled_layer_beyond_the_depth_is_refused(raw, beyond):
    n = raw["model"]["n_layers"]
    raw["routing"]["controlled_layers"] = sorted({*raw["routing"]["controlled_layers"], n + beyond})
    with pytest.raises(ValidationError) as info:
        RunSpec.model_validate(raw)
    assert f"layer {n + beyond} is beyond model.n_layers={n}" in str(info.value)


@given(st.floats(0, 1), st.integers(1, 10_000))
def test_ceil_budget(b, n):
    k = ceil_budget(b, n)
    assert 0 <= k <= n
    assert k == min(n, math.ceil(b * n - 1e-9))
    assert (k > 0) == (b * n > 1e-9)


def test_ceil_budget_is_robust_to_float_error():
    assert ceil_budget(0.3, 10) == 3  # 0.3 * 10 = 3.0000000000000004
    assert ceil_budget(0.5, 7) == 4
    assert ceil_budget(0.5, 1) == 1
    assert ceil_budget(0.0, 5) == 0
    assert ceil_budget(1.0, 5) == 5


# --------------------------------------------------------------------------------------------------
# merging and --set


def test_deep_merge_merges_tables_and_replaces_a_switched_variant():
    base = {"gate": {"kind": "G1", "hidden": 8}, "model": {"n_layers": 2, "d_model": 32}}
    assert deep_merge(base, {"model": {"n_layers": 3}}) == {
        "gate": {"kind": "G1", "hidden": 8}, "model": {"n_layers": 3, "d_model": 32}}
    assert deep_merge(base, {"gate": {"kind": "G3"}})["gate"] == {"kind": "G3"}
    assert deep_merge(base, {"gate": {"kind": "G1", "init_bias": 1}})["gate"] == {
        "kind": "G1", "hidden": 8, "init_bias": 1}
    assert base == {"gate": {"kind": "G1", "hidden": 8}, "model": {"n_layers": 2, "d_model": 32}}


def test_parse_set_builds_a_nested_tree_of_yaml_values():
    tree = parse_set(["model.n_layers=3", "routing.controlled_layers=[0, 2]", "gate.kind=G3",
                      "train.grad_clip=null", "name=x=y"])
    assert tree == {"model": {"n_layers": 3}, "routing": {"controlled_layers": [0, 2]},
                    "gate": {"kind": "G3"}, "train": {"grad_clip": None}, "name": "x=y"}


@pytest.mark.parametrize("item", ["model.n_layers", "model..x=1", "x=[1", "x=!!python/name:os.system"])
def test_parse_set_refuses_bad_items(item):
    with pytest.raises(SpecError) as info:
        parse_set([item])
    assert info.value.file == "--set"


# --------------------------------------------------------------------------------------------------
# loading: extends, profiles, arms, --set


def test_override_order_defaults_file_extends_profile_arm_set(tmp_path):
    write(tmp_path, "base.yaml", """
model: {n_layers: 3, d_model: 32, n_heads: 2, context_length: 32}
routing: {controlled_layers: [1], cheap_ffn_hidden: 8}
train: {seq_len: 16}
backbone: {train: {seq_len: 16}}
seeds: [0, 1]
""")
    write(tmp_path, "study.yaml", """
extends: base.yaml
name: study
model: {d_model: 64}
arms:
  a: {overrides: {routing: {cheap_ffn_hidden: 4}}}
  b: {overrides: {gate: {kind: G3}, loss: {jepa: 1.0}}}
gates:
  G3: {latent_dim: 4}
profiles:
  small: {model: {n_layers: 2}, routing: {cheap_ffn_hidden: 2}}
""")
    resolved = load_study(tmp_path / "study.yaml", "small", ["routing.budget.full_fraction=0.25"])
    a, b = resolved.arm_spec("a"), resolved.arm_spec("b")
    assert resolved.study.profile == "small"
    assert (a.model.n_layers, a.model.d_model, a.model.n_heads) == (2, 64, 2)  # profile > file > base
    assert a.routing.cheap_ffn_hidden == 4  # arm > profile
    assert b.routing.cheap_ffn_hidden == 2
    assert a.routing.budget.full_fraction == b.routing.budget.full_fraction == 0.25  # --set
    assert (b.gate.kind, b.gate.latent_dim) == ("G3", 4)  # the study's G3 preset
    assert a.gate.kind == "G1"
    runs = resolved.runs()
    assert [(arm, seed) for arm, seed, _ in runs] == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    assert [spec.seed for _, _, spec in runs] == [0, 1, 0, 1]


def test_set_overrides_an_arm(tmp_path):
    path = write(tmp_path, "s.yaml", "arms:\n  a: {overrides: {routing: {cheap_ffn_hidden: 4}}}\n")
    assert load_study(path, None, ["routing.cheap_ffn_hidden=0"]).arm_spec("a").routing.cheap_ffn_hidden == 0


def test_an_unknown_kind_is_blamed_on_the_kind_that_set_it(tmp_path):
    path = write(tmp_path, "s.yaml", "gate:\n  hidden: 3\n  kind: G9\narms:\n  a: {overrides: {gate: {kind: G1}}}\n")
    with pytest.raises(SpecError) as info:
        load_study(path)
    assert (info.value.file, info.value.field, info.value.line) == (str(path), "gate.kind", 3)
    ok = write(tmp_path, "ok.yaml", "gate: {kind: G1}\ndata: {kind: embedded}\narms:\n  a: {overrides: {gate: {kind: G1}}}\n")
    for item in ["gate.kind=G9", "data.kind=foo", "arms.a.overrides.gate.kind=G9"]:
        with pytest.raises(SpecError) as info:
            load_study(ok, None, [item])
        assert (info.value.file, info.value.field) == ("--set", item.split("=")[0]), item


def test_default_profile_is_used_and_can_be_named(tmp_path):
    path = write(tmp_path, "s.yaml", "default_profile: p\nprofiles:\n  p: {seed: 5}\n  q: {seed: 6}\n")
    assert load_study(path).study.profile == "p"
    assert load_study(path, "q").study.seed == 6


def test_extends_a_list_merges_in_order(tmp_path):
    write(tmp_path, "one.yaml", "model: {n_layers: 5}\nseed: 1\n")
    write(tmp_path, "two.yaml", "seed: 2\n")
    path = write(tmp_path, "s.yaml", "extends: [one.yaml, two.yaml]\nname: s\n")
    study = load_study(path).study
    assert (study.model.n_layers, study.seed, study.name) == (5, 2, "s")


def test_errors_carry_file_field_and_line(tmp_path):
    write(tmp_path, "base.yaml", "model:\n  n_layers: 2\nrouting:\n  budget:\n    full_fraction: 1.5\n")
    path = write(tmp_path, "s.yaml", "extends: base.yaml\nname: s\n")
    with pytest.raises(SpecError) as info:
        load_study(path)
    err = info.value
    assert (Path(err.file).name, err.field, err.line) == ("base.yaml", "routing.budget.full_fraction", 5)


def test_a_bad_value_replaced_by_the_profile_is_still_an_error(tmp_path):
    path = write(tmp_path, "s.yaml", "train:\n  steps: lots\nprofiles:\n  p: {train: {steps: 5}}\n")
    with pytest.raises(SpecError) as info:
        load_study(path, "p")
    (problem,) = info.value.problems
    assert problem[1:3] == ("train.steps", 2)
    assert "replaced by profile 'p'" in problem[3]
    assert "(got 'lots')" in problem[3]  # the bad value is echoed
    with pytest.raises(SpecError) as info:  # the same under --set
        load_study(path, None, ["train.steps=5"])
    assert info.value.problems[0][1:3] == ("train.steps", 2)
    assert "replaced by --set" in info.value.problems[0][3]


def test_set_errors_are_blamed_on_set_and_rules_it_breaks_name_it(tmp_path):
    path = write(tmp_path, "s.yaml", "model: {n_layers: 4}\nrouting: {controlled_layers: [3]}\n")
    with pytest.raises(SpecError) as info:
        load_study(path, None, ["nope.x=1"])
    assert (info.value.file, info.value.field) == ("--set", "nope")
    with pytest.raises(SpecError) as info:
        load_study(path, None, ["model.n_layers=2"])
    assert (info.value.file, info.value.field, info.value.line) == (str(path), "routing.controlled_layers", 2)
    assert info.value.reason.endswith("(given --set model.n_layers=2)")


def test_a_bad_value_in_a_profile_not_chosen_is_an_error(tmp_path):
    path = write(tmp_path, "s.yaml", "profiles:\n  p: {seed: 1}\n  q:\n    train: {steps: -3, stpes: 4}\n")
    with pytest.raises(SpecError) as info:
        load_study(path, "p")
    assert sorted(p[1:3] for p in info.value.problems) == [
        ("profiles.q.train.steps", 4), ("profiles.q.train.stpes", 4)]


def test_cross_field_rules_are_judged_on_the_resolved_spec_only(tmp_path):
    # 4 layers with layer 3 controlled is fine; the profile that shrinks the model also moves the layer,
    # and a profile not chosen is not held to rules that depend on the file's other values
    path = write(tmp_path, "s.yaml", """
model: {n_layers: 4}
routing: {controlled_layers: [3]}
profiles:
  small: {model: {n_layers: 2}, routing: {controlled_layers: [1]}}
  shallow: {model: {n_layers: 2}}
""")
    assert load_study(path, "small").study.model.n_layers == 2
    assert list(load_study(path).study.routing.controlled_layers) == [3]
    with pytest.raises(SpecError) as info:
        load_study(path, "shallow")
    assert info.value.problems[0][1] == "routing.controlled_layers"


def test_a_profile_must_be_a_mapping(tmp_path):
    path = write(tmp_path, "s.yaml", "profiles:\n  p: {seed: 1}\n  q: 3\n")
    with pytest.raises(SpecError) as info:
        load_study(path, "p")
    assert (info.value.field, info.value.line) == ("profiles.q", 3)


def test_every_problem_is_reported(tmp_path):
    path = write(tmp_path, "s.yaml", "model:\n  n_layers: x\n  d_model: -1\nextra: 1\n")
    with pytest.raises(SpecError) as info:
        load_study(path)
    assert sorted((p[1], p[2]) for p in info.value.problems) == [
        ("extra", 4), ("model.d_model", 3), ("model.n_layers", 2)]


def test_an_arm_error_names_the_arm_override(tmp_path):
    path = write(tmp_path, "s.yaml", "arms:\n  ok: {}\n  bad:\n    overrides: {routing: {controlled_layers: [7]}}\n")
    with pytest.raises(SpecError) as info:
        load_study(path)
    (problem,) = info.value.problems
    assert problem[1:3] == ("arms.bad.overrides.routing.controlled_layers", 4)


def test_an_arm_breaking_a_base_value_names_the_arm(tmp_path):
    path = write(tmp_path, "s.yaml", "routing: {controlled_layers: [3]}\narms:\n  a:\n    overrides: {model: {n_layers: 2}}\n")
    with pytest.raises(SpecError) as info:
        load_study(path)
    (problem,) = info.value.problems
    assert problem[1:3] == ("routing.controlled_layers", 1)
    assert "(in arm 'a')" in problem[3]


def test_unknown_arm_names_the_known_arms(tmp_path):
    resolved = load_study(write(tmp_path, "s.yaml", "arms: {x: {}, y: {}}\n"))
    with pytest.raises(SpecError) as info:
        resolved.arm_spec("z")
    assert "unknown arm 'z'" in str(info.value)
    assert "['x', 'y']" in str(info.value)


def test_a_key_given_twice_is_refused(tmp_path):
    with pytest.raises(SpecError) as info:
        load_study(write(tmp_path, "s.yaml", "seed: 1\nmodel: {n_layers: 2}\nseed: 2\n"))
    assert (info.value.field, info.value.line) == ("seed", 3)
    assert "first on line 1" in info.value.reason


def test_an_exponent_without_a_decimal_point_is_a_number(tmp_path):
    """YAML 1.1 (PyYAML) would read 3e-4 as text; the loader reads it as YAML 1.2 does."""
    path = write(tmp_path, "s.yaml", "train:\n  optimizer: {lr_peak: 3e-4, eps: 1E-08}\n")
    optimizer = load_study(path, None, ["backbone.train.optimizer.lr_peak=5e-4"]).arm_spec("default")
    assert optimizer.train.optimizer.lr_peak == 3e-4
    assert optimizer.train.optimizer.eps == 1e-8
    assert optimizer.backbone.train.optimizer.lr_peak == 5e-4


def test_values_are_not_coerced_across_types():
    for update in ({"model": {"n_layers": True}}, {"model": {"n_layers": "4"}}, {"model": {"n_layers": 4.0}},
                   {"model": {"tie_embeddings": "yes"}}, {"name": 3}):
        with pytest.raises(ValidationError):
            tiny_spec(update)
    assert tiny_spec({"routing": {"budget": {"full_fraction": 1}}}).routing.budget.full_fraction == 1.0
    assert tiny_spec({"train": {"optimizer": {"betas": [0.8, 0.9]}}}).train.optimizer.betas == (0.8, 0.9)


def test_a_gate_without_kind_is_g1_and_an_arm_switching_kind_drops_its_fields(tmp_path):
    path = write(tmp_path, "s.yaml", """
gate: {hidden: 8}
gates:
  G3: {predictor_hidden: 8}
arms:
  plain: {}
  g3: {overrides: {gate: {kind: G3, latent_dim: 4}}}
""")
    resolved = load_study(path)
    assert (resolved.arm_spec("plain").gate.kind, resolved.arm_spec("plain").gate.hidden) == ("G1", 8)
    g3 = resolved.arm_spec("g3").gate
    assert (g3.kind, g3.latent_dim, g3.predictor_hidden) == ("G3", 4, 8)


@pytest.mark.parametrize("text", ["", "# only a comment\n", "\n\n"])
def test_an_empty_file_is_refused_and_an_empty_mapping_is_the_defaults(tmp_path, text):
    with pytest.raises(SpecError) as info:
        load_study(write(tmp_path, "s.yaml", text))
    assert Path(info.value.file).name == "s.yaml"
    assert "the file is empty" in info.value.reason
    assert load_study(write(tmp_path, "d.yaml", "{}\n")).arm_spec("default") == RunSpec()


def test_a_study_needs_an_arm(tmp_path):
    with pytest.raises(SpecError) as info:
        load_study(write(tmp_path, "s.yaml", "name: x\narms: {}\n"))
    assert (info.value.field, info.value.line) == ("arms", 2)


def test_extends_naming_a_folder_names_the_spec(tmp_path):
    (tmp_path / "adir").mkdir()
    path = write(tmp_path, "s.yaml", "name: x\nextends: adir\n")
    with pytest.raises(SpecError) as info:
        load_study(path)
    assert (info.value.file, info.value.field, info.value.line) == (str(path), "extends", 2)
    assert "is a folder" in info.value.reason


@pytest.mark.parametrize("text", ["- 1\n- 2\n", "just text\n"])
def test_top_level_must_be_a_mapping(tmp_path, text):
    with pytest.raises(SpecError) as info:
        load_study(write(tmp_path, "s.yaml", text))
    assert "top level must be a mapping" in info.value.reason


# --------------------------------------------------------------------------------------------------
# shipped specs


def shipped_profiles() -> list[tuple[str, str]]:
    out = []
    for path in SHIPPED:
        raw = yaml.safe_load(path.read_text())
        profiles = set(raw.get("profiles", {}))
        for parent in [raw.get("extends")] if isinstance(raw.get("extends"), str) else raw.get("extends") or []:
            profiles |= set(yaml.safe_load((path.parent / parent).read_text()).get("profiles", {}))
        out += [(path.name, p) for p in sorted(profiles)]
    return out


def test_every_shipped_spec_is_covered():
    assert {name for name, _ in shipped_profiles()} == {p.name for p in SHIPPED}
    assert {p for _, p in shipped_profiles()} >= {"smoke", "paper"}


@pytest.mark.parametrize(("name", "profile"), shipped_profiles())
def test_every_shipped_spec_and_profile_loads_and_every_arm_validates(name, profile):
    resolved = load_study(SPECS / name, profile)
    assert resolved.study.profile == profile
    runs = resolved.runs()
    assert len(runs) == len(resolved.study.arms) * len(resolved.study.seeds)
    for _, seed, spec in runs:
        assert spec.seed == seed
        assert RunSpec.model_validate(json.loads(json.dumps(dump_run(spec)))) == spec


def test_shipped_a3_arms_are_the_paper_design():
    resolved = load_study(SPECS / "a3.yaml", "paper")
    arms = {a: resolved.arm_spec(a) for a in resolved.study.arms}
    assert {a: (s.gate.kind, s.loss.util, s.loss.rank) for a, s in arms.items()} == {
        "G1_utilrank": ("G1", 1.0, 1.0), "G3_utilrank": ("G3", 1.0, 1.0),
        "G1_lm": ("G1", 0.0, 0.0), "G3_lm": ("G3", 0.0, 0.0)}
    for spec in arms.values():
        assert spec.routing.budget.full_fraction == 0.5  # [paper: S3]
        assert spec.train.steps == 20_000  # [paper: S6]
        assert spec.train.controller_only  # [paper: S2]
    assert resolved.study.seeds == [0, 1, 2]  # [paper: S4]


def test_tiny_spec_is_valid():
    assert tiny_spec().model.n_layers == TINY["model"]["n_layers"]
