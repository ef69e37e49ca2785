"""Numbers a spec cannot take (``nan``, ``inf``, ``1e400``, a float for an integer, a negative step count):
`specroute validate` and `specroute run` refuse each with one message that names where the value was
written (the file and line, or ``--set``), the field and what is wrong with the value; exit 2, no traceback."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from helpers import SPECS, assert_exit_2, check_bad_spec
from specroute.cli import app

FINITE = "which is not a finite number"


@pytest.mark.parametrize(
    ("item", "words"),
    [
        ("train.steps=nan", ["got the text 'nan', " + FINITE, "the field takes an integer"]),
        ("train.steps=inf", ["got the text 'inf', " + FINITE, "the field takes an integer"]),
        ("train.steps=-inf", ["got the text '-inf', " + FINITE]),
        ("train.steps=.nan", ["got nan, " + FINITE]),
        ("train.steps=1e400", ["got inf, " + FINITE, "such as 1e400, as infinity", "the field takes an integer"]),
        ("train.steps=1.5", ["got 1.5, a float, not an integer"]),
        ("train.steps=1e3", ["got 1000.0, a float, not an integer: write 1000"]),
        ("train.steps=-3", ["greater than or equal to 1 (got -3)"]),
        ("train.steps='12'", ["got the text '12': write the number without quotes"]),
        ("routing.budget.full_fraction=.5e0", ["got the text '.5e0', which YAML reads as text: write the number "
                                               "as 0.5)"]),
        ("routing.budget.full_fraction=nan", ["got the text 'nan', " + FINITE, "the field takes a finite number"]),
        ("train.steps=", ["got no value", "the field takes an integer"]),
        ("routing.budget.full_fraction=1e400", ["finite number (got inf; YAML reads .inf, and a number beyond the "
                                                "range of a float"]),
        ("routing.budget.full_fraction=.nan", ["Input should be a finite number (got nan)"]),
    ],
    ids=["nan-text", "inf-text", "minus-inf-text", "yaml-nan-for-int", "overflow-int", "fraction-for-int",
         "exponent-for-int", "negative-steps", "quoted-number", "yaml-text-number", "nan-fraction", "empty-steps",
         "overflow-fraction",
         "yaml-nan-fraction"],
)
def test_bad_numbers_in_set_name_the_field_and_the_fault(item, words):
    field = item.partition("=")[0]
    result = CliRunner().invoke(app, ["validate", str(SPECS / "a3.yaml"), "--set", item])
    assert_exit_2(result, f"--set: {field}: ", *words)
    if "'" not in item:  # only quoted text is told to drop its quotes
        assert "without quotes" not in result.stderr


def test_run_refuses_nan_steps_before_writing_anything(tmp_path):
    out = tmp_path / "study"
    result = CliRunner().invoke(app, ["run", str(SPECS / "a3.yaml"), "--profile", "smoke", "--set",
                                      "train.steps=nan", "--out", str(out)])
    assert_exit_2(result, "--set: train.steps: ", "got the text 'nan', " + FINITE)
    assert not out.exists()


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        ("train:\n  steps: nan\n", "train.steps", "got the text 'nan', " + FINITE),
        ("train:\n  steps: 1e400\n", "train.steps", "got inf, " + FINITE),
        ("routing:\n  budget: {full_fraction: .inf}\n", "routing.budget.full_fraction", "finite number (got inf"),
    ],
    ids=["nan-steps", "overflow-steps", "inf-fraction"],
)
def test_bad_numbers_in_a_file_name_its_line(tmp_path, monkeypatch, text, field, words):
    monkeypatch.chdir(tmp_path)
    check_bad_spec(tmp_path, text, ":2:", field, words)
