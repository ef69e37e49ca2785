"""Declarative sweeps (``sweeps:``): expansion into arms (names, values, product, base and shared overrides),
errors at the sweep's line, name collisions, the confirmation before a large sweep, the JSON schema, and the
shipped sweep studies."""

from __future__ import annotations

import json
import textwrap

import pytest
from typer.testing import CliRunner

from helpers import SPECS, TINY, check_bad_spec, write
from specroute.cli import app
from specroute.spec import load_study
from specroute.spec.sweeps import confirm_sweep
from specroute.store import UserError

runner = CliRunner()


#: The tiny study's header: one line per top-level key of TINY, and the seeds.
HEADER = "".join(f"{k}: {json.dumps(v)}\n" for k, v in {**TINY, "seeds": [0]}.items())


def _tiny_study(body: str) -> str:
    """A tiny study (TINY's run spec, one seed) followed by ``body`` (YAML); its line n is line n + H of the file."""
    return HEADER + textwrap.dedent(body)


H = HEADER.count("\n")


SWEEP = """\
arms:
  G1_lm: {overrides: {loss: {util: 0.0, rank: 0.0}}}
  G1_ur: {label: base arm, overrides: {loss: {util: 1.0, rank: 1.0, oracle: {rank_margin: 0.5}}}}
sweeps:
  - name: ur
    base: G1_ur
    overrides: {routing: {budget: {full_fraction: 0.25}}}
    grid: {loss.util: [0.25, 4], loss.rank: [0.5, 1.0, 2.0]}
  - name: gate
    grid: {gate.kind: [G1, G3], loss.jepa: [0.0]}
"""


def test_expansion_names_values_and_product(tmp_path):
    study = load_study(write(tmp_path, "s.yaml", _tiny_study(SWEEP)))
    assert list(study.study.arms) == [
        "G1_lm", "G1_ur",
        "ur_util0.25_rank0.5", "ur_util0.25_rank1.0", "ur_util0.25_rank2.0",
        "ur_util4_rank0.5", "ur_util4_rank1.0", "ur_util4_rank2.0",
        "gate_kindG1_jepa0.0", "gate_kindG3_jepa0.0",
    ]
    spec = study.arm_spec("ur_util4_rank2.0")
    assert (spec.loss.util, spec.loss.rank) == (4, 2.0)
    assert spec.loss.oracle.rank_margin == 0.5  # from the base arm
    assert spec.routing.budget.full_fraction == 0.25  # the sweep's shared overrides
    assert study.study.arms["ur_util4_rank2.0"].label == "ur: loss.util=4, loss.rank=2.0"
    assert study.arm_spec("gate_kindG3_jepa0.0").gate.kind == "G3"
    assert study.arm_spec("gate_kindG1_jepa0.0").loss.util == 0.0  # no base: the study's base spec
    assert len(study.runs()) == 10


def test_same_last_part_uses_whole_path(tmp_path):
    body = """\
    sweeps:
      - name: s
        grid: {train.seq_len: [8], backbone.train.seq_len: [16]}
    """
    study = load_study(write(tmp_path, "s.yaml", _tiny_study(body)))
    assert list(study.study.arms) == ["s_train_seq_len8_backbone_train_seq_len16"]


@pytest.mark.parametrize("body, line, field, words", [
    ("sweeps:\n  - name: s\n    grid:\n      loss.utill: [0.25, 1.0]\n", 4, "sweeps.0.grid.loss.utill",
     "unknown field 'utill'"),
    ("sweeps:\n  - name: s\n    grid:\n      loss.util: [0.25, lots]\n", 4, "sweeps.0.grid.loss.util",
     "valid number (got 'lots') (in arm 's_utillots')"),
    ("sweeps:\n  - name: s\n    grid: {loss.util: []}\n", 3, "sweeps.0.grid.loss.util", "empty list of values"),
    ("sweeps:\n  - name: 9s\n    grid: {loss.util: [1.0]}\n", 2, "sweeps.0.name", "not an identifier"),
    ("sweeps:\n  - name: s\n    base: nope\n    grid: {loss.util: [1.0]}\n", 3, "sweeps.0.base", "'nope'"),
    ("sweeps:\n  - name: s\n    grid: {loss.util: [1.0, 1.0]}\n", 3, "sweeps.0.grid.loss.util", "more than once"),
    ("sweeps:\n  - name: s\n    grid: {loss.util: [1.0]}\n    colour: red\n", 4, "sweeps.0.colour", "unknown"),
])
def test_bad_sweep_names_its_line(tmp_path, monkeypatch, body, line, field, words):
    monkeypatch.chdir(tmp_path)
    check_bad_spec(tmp_path, _tiny_study(body), f":{line + H}:", field, words)


def test_name_collision_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    written = "arms:\n  s_util1.0: {}\nsweeps:\n  - name: s\n    grid: {loss.util: [1.0]}\n"
    check_bad_spec(tmp_path, _tiny_study(written), f":{4 + H}:", "sweeps.0.name", "expands to arm 's_util1.0'")
    twice = "sweeps:\n  - name: s\n    grid: {loss.util: [1.0]}\n  - name: s\n    grid: {loss.util: [1.0]}\n"
    check_bad_spec(tmp_path, _tiny_study(twice), f":{4 + H}:", "sweeps.1.name", "another sweep makes")


def test_too_many_arms_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    body = "sweeps:\n  - name: s\n    grid: {loss.util: [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0],\n" \
           "           loss.rank: [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0]}\n"
    check_bad_spec(tmp_path, _tiny_study(body), f":{2 + H}:", "sweeps.0", "MAX_ARMS")


def test_large_sweep_asks_first(tmp_path, monkeypatch):
    monkeypatch.setattr("specroute.spec.sweeps.SWEEP_CONFIRM_RUNS", 3)
    path = write(tmp_path, "s.yaml", _tiny_study(SWEEP))
    # No terminal: refused before anything runs, nothing written.
    r = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert "8 runs" in r.output and "nobody can confirm" in r.output and "--yes" in r.output
    assert not (tmp_path / "o").exists()
    resolved = load_study(path)
    runs = resolved.runs()
    confirm_sweep(resolved.raw_base, runs, yes=True, confirm=None)  # --yes: no question
    asked = []
    confirm_sweep(resolved.raw_base, runs, yes=False, confirm=lambda q: asked.append(q) or True)
    assert len(asked) == 1 and "8 runs" in asked[0]
    with pytest.raises(UserError, match="cancelled"):
        confirm_sweep(resolved.raw_base, runs, yes=False, confirm=lambda q: False)
    few = [r for r in runs if r[0] in ("G1_lm", "ur_util4_rank1.0", "gate_kindG3_jepa0.0")]
    confirm_sweep(resolved.raw_base, few, yes=False, confirm=None)  # 2 swept runs: under the threshold


def test_schema_has_sweeps():
    r = runner.invoke(app, ["schema"])
    assert r.exit_code == 0
    schema = json.loads(r.stdout)
    assert "sweeps" in schema["properties"]
    assert set(schema["$defs"]["SweepSpec"]["properties"]) == {"name", "base", "overrides", "grid", "label"}


def test_shipped_sweep_studies():
    a9 = load_study(SPECS / "a9_utilrank_sweep.yaml", "smoke")
    assert len(a9.study.arms) == 10
    assert {(a9.arm_spec(a).loss.util, a9.arm_spec(a).loss.rank) for a in a9.study.arms if a != "G1_lm"} == \
        {(u, r) for u in (0.25, 1.0, 4.0) for r in (0.25, 1.0, 4.0)}
    a10 = load_study(SPECS / "a10_budget_sweep.yaml", "smoke")
    assert len(a10.study.arms) == 12
    assert sorted({a10.arm_spec(a).routing.budget.full_fraction for a in a10.study.arms}) == [0.25, 0.5, 0.75]
