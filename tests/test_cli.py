"""`specroute validate` and `specroute schema` through typer's CliRunner (docs/DESIGN.md, "CLI contract").

Bad specs exit 2 with one message on stderr naming the file, the dotted field path and, where YAML can tell,
the line; never a traceback. (With click >= 8.2 the runner keeps stderr apart in ``result.stderr``;
``result.output`` interleaves both streams.)
"""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from helpers import SPECS, assert_exit_2, check_bad_spec, write
from specroute.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def assert_user_error(result, *fragments: str) -> None:
    """Exit 2 with one "invalid spec" message holding every fragment (:func:`helpers.assert_exit_2`)."""
    assert_exit_2(result, *fragments)


# --------------------------------------------------------------------------------------------------
# the done-when checks


def routed_params(output: str) -> list[int]:
    return [int(n.replace(",", "")) for n in re.findall(r"([\d,]{9,}) \(\d+\.\d\dM\)", output)]


def test_validate_paper_profile_prints_the_resolved_spec_and_157_5m():
    result = invoke("validate", SPECS / "a3.yaml", "--profile", "paper")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "(profile: paper)" in out
    assert "model: 16 layers x d_model 768, 12 heads, context 1024, vocab 50257" in out
    assert "controlled layers [1, 3, 5, 7, 9, 11, 13, 15], full_fraction 0.5" in out
    for arm in ("G1_utilrank", "G3_utilrank", "G1_lm", "G3_lm"):
        assert arm in out
    assert "= 157.52M" in out
    counts = routed_params(out)
    assert len(counts) == 4
    for n in counts:
        assert abs(n - 157.5e6) <= 0.005 * 157.5e6
    assert out.rstrip().endswith("valid")


def test_validate_smoke_profile_prints_the_small_model():
    result = invoke("validate", SPECS / "a3.yaml", "--profile", "smoke")
    assert result.exit_code == 0, result.output
    assert "(profile: smoke)" in result.stdout
    assert "model: 4 layers x d_model 128" in result.stdout
    assert "data: embedded" in result.stdout
    assert all(n < 2_000_000 for n in routed_params(result.stdout))


def test_validate_without_profile_uses_the_default_profile():
    result = invoke("validate", SPECS / "baseline.yaml")
    assert result.exit_code == 0, result.output
    assert "(profile: smoke)" in result.stdout


def test_validate_json_is_the_resolved_spec_of_every_arm():
    result = invoke("validate", SPECS / "a1.yaml", "--profile", "paper", "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["profile"] == "paper"
    assert set(payload["arms"]) == {"G3_utilrank", "G3_nojepa"}
    arm = payload["arms"]["G3_nojepa"]
    assert arm["spec"]["loss"]["jepa"] == 0.0
    assert arm["spec"]["gate"] == {"kind": "G3", "latent_dim": 64, "predictor_hidden": 256, "init_bias": 0.0,
                                   "target_seed": 1234, "score_init_std": None, "score_norm": "none",
                                   "target": "h_after"}
    assert arm["params"]["total"] == sum(arm["params"][k] for k in ("backbone", "cheap_ffn", "gate", "target_head"))


def test_validate_json_of_a_bad_spec_lists_its_problems_on_stdout(tmp_path):
    write(tmp_path, "bad.yaml", "name: t\nmodle: {}\nseed: x\n")
    result = invoke("validate", tmp_path / "bad.yaml", "--json")
    assert result.exit_code == 2
    payload = json.loads(result.stdout)
    assert payload["valid"] is False and payload["problems_total"] == 2
    assert {(p["field"], p["line"]) for p in payload["problems"]} == {("modle", 2), ("seed", 3)}
    assert "unknown field 'modle'" in result.stderr  # the message as without --json
    assert json.loads(invoke("validate", SPECS / "a3.yaml", "--json").stdout)["valid"] is True


def test_validate_one_arm():
    result = invoke("validate", SPECS / "a3.yaml", "--arm", "G3_lm", "--json")
    assert result.exit_code == 0, result.output
    assert list(json.loads(result.stdout)["arms"]) == ["G3_lm"]
    result = invoke("validate", SPECS / "a3.yaml", "--arm", "G1_lm", "--arm", "G3_lm")
    assert result.exit_code == 0, result.output
    assert "G1_lm" in result.stdout and "G3_lm" in result.stdout and "G1_utilrank" not in result.stdout


def test_validate_set_override():
    result = invoke("validate", SPECS / "a3.yaml", "--set", "routing.budget.full_fraction=0.25", "--json")
    assert result.exit_code == 0, result.output
    arms = json.loads(result.stdout)["arms"]
    assert {a["spec"]["routing"]["budget"]["full_fraction"] for a in arms.values()} == {0.25}


def test_schema_is_a_json_schema_of_the_spec_file():
    result = invoke("schema")
    assert result.exit_code == 0, result.output
    schema = json.loads(result.stdout)
    assert schema["title"] == "SpecFile"
    assert schema["additionalProperties"] is False
    assert {"model", "routing", "gate", "loss", "data", "backbone", "train", "arms", "seeds", "extends",
            "profiles", "default_profile"} <= set(schema["properties"])
    defs = schema["$defs"]
    assert {"G1Spec", "G3Spec", "BudgetSpec", "RoutingSpec", "LossSpec", "OracleSpec"} <= set(defs)
    assert all(d.get("additionalProperties") is False for d in defs.values() if d.get("type") == "object")
    assert set(schema["properties"]["gate"]["discriminator"]["mapping"]) == {"G1", "G3"}


# --------------------------------------------------------------------------------------------------
# bad specs: one test per kind of mistake (issue item 3)


@pytest.mark.parametrize(
    ("text", "where", "field", "words"),
    [
        ("name: t\nmodle: {}\n", ":2:", "modle", "unknown field 'modle'"),
        ("name: t\nrouting:\n  budgte: {}\n", ":3:", "routing.budgte", "unknown field 'budgte'"),
        ("model:\n  n_layers: \"four\"\n", ":2:", "model.n_layers", "valid integer"),
        ("routing:\n  budget:\n    full_fraction: 1.5\n", ":3:", "routing.budget.full_fraction",
         "less than or equal to 1"),
        ("routing:\n  budget: {full_fraction: -0.1}\n", ":2:", "routing.budget.full_fraction",
         "greater than or equal to 0"),
        ("model: {n_layers: 2}\nrouting:\n  controlled_layers: [0, 5]\n", ":3:", "routing.controlled_layers",
         "layer 5 is beyond model.n_layers=2"),
        ("gate:\n  kind: G1\n  latent_dim: 8\n", ":3:", "gate.latent_dim",
         "unknown field 'latent_dim' for gate kind G1"),
        ("gate:\n  kind: G2\n", ":2:", "gate.kind", "'G1', 'G3'"),
        ("routing:\n  budget: {enforcement: topk}\n", ":2:", "routing.budget.enforcement",
         "'topk_sequence', 'topk_batch' or 'threshold'"),
        ("name: t\nmodel: !!python/object/apply:os.system [\"echo hi\"]\n", ":2:", "model",
         "tags that build Python objects are refused"),
        ("name: !!python/name:os.system\n", ":1:", "name", "tags that build Python objects are refused"),
        ("routing:\n  budget: {full_fraction: !!python/object/new:float [0.5]}\n", ":2:",
         "routing.budget.full_fraction", "could not determine a constructor"),
        ("model: {n_layers: 2\n", "bad.yaml", "", "expected ',' or '}'"),
        ("seed: 1\nseed: 2\n", ":2:", "seed", "given twice"),
        ("arms:\n  a:\n    overrides: {loss: {jepa: 1.0}}\n", ":3:", "arms.a.overrides.loss.jepa", "gate.kind=G3"),
        ("arms:\n  a:\n    overrides: {modle: 1}\n", ":3:", "arms.a.overrides.modle", "unknown field 'modle'"),
        ("comparisons:\n  - {id: c, better: x, worse: default}\n", ":1:", "comparisons", "names arm 'x'"),
        ("model:\n  n_layers: true\n", ":2:", "model.n_layers", "valid integer"),
        ("model:\n  n_layers: \"4\"\n", ":2:", "model.n_layers", "got the text '4': write the number without quotes"),
        ("model:\n  tie_embeddings: \"yes\"\n", ":2:", "model.tie_embeddings", "valid boolean"),
        ("gates:\n  G1: 3\n", ":2:", "gates.G1", "valid dictionary"),
        ("arms:\n  a: {overrides: {gate: 3}}\n", ":2:", "arms.a.overrides.gate", "valid dictionary"),
        ("arms:\n  ../../../victim: {}\n", ":1:", "arms", "arm name '../../../victim' is used as a folder name"),
        ("arms:\n  a/b: {}\n", ":1:", "arms", "arm name 'a/b' is used as a folder name"),
        ("arms:\n  '': {}\n", ":1:", "arms", "arm name '' is used as a folder name"),
        ("arms:\n  G1a: {}\n  g1A: {}\n", ":1:", "arms", "arms 'G1a' and 'g1A' differ only in case"),
        ("name: ../../trav\n", ":1:", "name", "name '../../trav' is used as a folder name"),
        ("name: /tmp/abs\n", ":1:", "name", "name '/tmp/abs' is used as a folder name"),
        ("profiles:\n  ../up: {}\n", ":2:", "profiles.../up", "profile name '../up' is used as a folder name"),
    ],
    ids=["unknown-key", "unknown-nested-key", "wrong-type", "budget-above-1", "budget-below-0",
         "layer-beyond-depth", "g3-field-under-g1", "unknown-gate-kind", "unknown-enforcement",
         "tag-object-apply", "tag-python-name", "tag-object-new", "yaml-syntax", "duplicate-key",
         "arm-jepa-under-g1", "arm-unknown-key", "comparison-unknown-arm", "bool-for-int", "quoted-number",
         "text-for-bool", "gate-preset-not-a-table", "arm-gate-not-a-table", "arm-name-climbs-out",
         "arm-name-path", "arm-name-empty", "arm-names-differ-in-case", "study-name-climbs-out",
         "study-name-absolute", "profile-name-climbs-out"],
)
def test_bad_spec_exits_2_naming_file_field_and_line(tmp_path, monkeypatch, text, where, field, words):
    monkeypatch.chdir(tmp_path)
    check_bad_spec(tmp_path, text, where, field, words)


def test_yaml_tag_is_never_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "touched"
    write(tmp_path, "bad.yaml", f'model: !!python/object/apply:os.system ["touch {marker}"]\n')
    assert_user_error(invoke("validate", "bad.yaml"), "bad.yaml:1: model: ")
    assert not marker.exists()


def test_extends_cycle(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "a.yaml", "name: a\nextends: b.yaml\n")
    write(tmp_path, "b.yaml", "extends: a.yaml\n")
    assert_user_error(invoke("validate", "a.yaml"), "b.yaml:1: extends: ", "extends cycle: a.yaml -> b.yaml -> a.yaml")


def test_extends_itself(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "a.yaml", "extends: a.yaml\n")
    assert_user_error(invoke("validate", "a.yaml"), "a.yaml:1: extends: ", "cycle")


def test_extends_missing_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "a.yaml", "name: a\nextends: nope.yaml\n")
    assert_user_error(invoke("validate", "a.yaml"), "a.yaml:2: extends: ", "'nope.yaml' not found")


def test_error_in_an_extended_file_names_that_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "base.yaml", "name: b\nmodel:\n  d_model: wide\n")
    write(tmp_path, "a.yaml", "extends: base.yaml\n")
    assert_user_error(invoke("validate", "a.yaml"), "base.yaml:3: model.d_model: ")


def test_missing_spec_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_user_error(invoke("validate", "nothing.yaml"), "nothing.yaml: file not found")


def test_brackets_in_a_message_are_printed_not_taken_as_markup(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs[red]").mkdir()
    assert_user_error(invoke("validate", "runs[red]/s.yaml"), "runs[red]/s.yaml: file not found")
    write(tmp_path, "ok.yaml", "name: ok\n")
    assert_user_error(invoke("validate", "ok.yaml", "--set", "name=[bold]x"), "[bold]x")


def test_file_outside_the_working_directory_is_shown_absolute(tmp_path, monkeypatch):
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    path = write(tmp_path, "bad.yaml", "seed: x\n")
    assert_user_error(invoke("validate", path), f"{path}:1: seed: ")


def test_unknown_profile(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "a.yaml", "profiles:\n  small: {seed: 1}\n")
    assert_user_error(invoke("validate", "a.yaml", "--profile", "big"),
                      "a.yaml: profile: ", "unknown profile 'big' (known: small)")


def test_unknown_profile_of_a_shipped_spec():
    assert_user_error(invoke("validate", SPECS / "a3.yaml", "--profile", "huge"),
                      "a3.yaml: profile: ", "unknown profile 'huge' (known: ", "paper", "smoke")


def test_profile_error_names_the_profile_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "a.yaml", "profiles:\n  small:\n    routing: {budget: {full_fraction: 2}}\n")
    assert_user_error(invoke("validate", "a.yaml", "--profile", "small"),
                      "a.yaml:3: routing.budget.full_fraction: ")


def test_unknown_arm():
    assert_user_error(invoke("validate", SPECS / "a3.yaml", "--arm", "G2_lm"),
                      "arms: unknown arm 'G2_lm'", "['G1_lm', 'G1_utilrank', 'G3_lm', 'G3_utilrank']")


@pytest.mark.parametrize(
    ("item", "fragments"),
    [
        ("model.nlayers=3", ["--set: model.nlayers: ", "unknown field 'nlayers'"]),
        ("model.n_layers=abc", ["--set: model.n_layers: ", "valid integer"]),
        ("routing.budget.full_fraction=2", ["--set: routing.budget.full_fraction: ", "less than or equal to 1"]),
        ("routing.controlled_layers=[0, 9]", ["--set: routing.controlled_layers: ", "layer 9 is beyond"]),
        ("gate.latent_dim=4", ["--set: gate.latent_dim: ", "for gate kind G1"]),
        ("model.n_layers", ["--set: model.n_layers: expected key.path=value"]),
        ("model..n_layers=2", ["--set: model..n_layers: empty component"]),
        ("model.n_layers=[1", ["--set: model.n_layers: value is not valid YAML"]),
        ("name=!!python/name:os.system", ["--set: name: value is not valid YAML"]),
    ],
    ids=["bad-path", "bad-value", "budget", "layer-beyond-depth", "g3-field", "no-equals", "empty-part",
         "bad-yaml", "python-tag"],
)
def test_bad_set_override(item, fragments):
    assert_user_error(invoke("validate", SPECS / "a3.yaml", "--set", item), *fragments)


def test_set_error_inside_an_arm_names_set(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "a.yaml", "gate: {kind: G3}\narms:\n  g3: {}\n  g1: {overrides: {gate: {kind: G1}}}\n")
    assert_user_error(invoke("validate", "a.yaml", "--set", "loss.jepa=1"),
                      "--set: loss.jepa: ", "needs gate.kind=G3 (gate is G1)")
