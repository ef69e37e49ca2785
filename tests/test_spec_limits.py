"""Inputs that must neither hang, exhaust nor crash the toolkit: the limits of spec reading
(:mod:`specroute.spec.yaml_io`), finite floats and size bounds (:mod:`specroute.spec.base`), capped error
messages (:mod:`specroute.spec.errors`) and the memory check (:mod:`specroute.train.memory`).

Each bad input exits 2 with one message naming the file, the limit (its constant) and, where YAML can tell,
the line; never a traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from helpers import SPECS, assert_exit_2, check_bad_spec, tiny_spec, write
from specroute.cli import app
from specroute.report.console import millions
from specroute.spec import SpecError, load_study
from specroute.spec.errors import MAX_PROBLEMS_SHOWN, Problem
from specroute.spec.loader import parse_set
from specroute.spec.yaml_io import MAX_FILE_BYTES, MAX_NODES
from specroute.store import UserError
from specroute.train import memory
from specroute.train.memory import Available, estimate_study, judge

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def _laughs(levels: int, fan: int) -> str:
    lines = [f"l0: &l0 [{', '.join(['x'] * fan)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * fan)}]" for i in range(1, levels)]
    return "arms:\n  a:\n    overrides:\n" + "".join(f"      {ln}\n" for ln in lines)


def _merge_laughs(levels: int) -> str:
    lines = ["m0: &m0 {a: 1, b: 2}"] + [f"m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}]}}" for i in range(1, levels)]
    return "arms:\n  a:\n    overrides:\n" + "".join(f"      {ln}\n" for ln in lines)


# --------------------------------------------------------------------------------------------------
# the table: one bad spec file per row


@pytest.mark.parametrize(
    ("text", "where", "field", "words"),
    [
        ("name: t\nseed: " + "[" * 500 + "]" * 500 + "\n", ":2:", "", "nested too deep: over the limit of 64 levels "
         "(MAX_DEPTH in specroute.spec.yaml_io)"),
        ("name: t\nseed: " + "{a: " * 100 + "1" + "}" * 100 + "\n", ":2:", "", "MAX_DEPTH"),
        ("a: &a " + "[" * 40 + "1" + "]" * 40 + "\nb: " + "[" * 30 + "*a" + "]" * 30 + "\n", ":1:", "",
         "nested too deep once aliases are expanded"),
        (_laughs(9, 10), ":7:", "", "too many YAML nodes once aliases are expanded"),  # l3: 11,111 nodes
        (_merge_laughs(30), "", "", "MAX_NODES"),
        ("arms:\n  a:\n    overrides: &x\n      y: *x\n", ":3:", "", "recursive structure"),
        ("".join(f"k{i}: {i}\n" for i in range(MAX_NODES)), "", "", "too many YAML nodes"),
        ("name: " + "n" * 20_000 + "\n", ":1:", "", "a scalar of 20,000 characters: over the limit of 10,000"),
        ("? " + "k" * 20_000 + "\n: 1\n", ":1:", "", "MAX_SCALAR_CHARS"),
        ("seed: " + "9" * 5000 + "\n", ":1:", "", "a number of 5,000 characters: over the limit of 100"),
        ("seed: 2026-13-45\n", "bad.yaml: ", "", "a value YAML cannot build: month must be in 1..12"),
        ("# padding\n" * (MAX_FILE_BYTES // 10 + 1), "bad.yaml: ", "", "MAX_FILE_BYTES"),
        ("profiles:\n" + "".join(f"  p{i}: {{seed: {i}}}\n" for i in range(65)), ":1:", "profiles",
         "65 profiles: over the limit of 64"),
        ("arms:\n" + "".join(f"  a{i}: {{}}\n" for i in range(65)), ":1:", "arms", "at most 64 items"),
        ("train:\n  optimizer:\n    lr_peak: .inf\n", ":3:", "train.optimizer.lr_peak", "finite number (got inf; "),
        ("train:\n  optimizer:\n    lr_peak: 1e400\n", ":3:", "train.optimizer.lr_peak", "finite number"),
        ("train:\n  lm_thresholds: [.nan]\n", ":2:", "train.lm_thresholds.0", "finite number (got nan)"),
        ("gate: {kind: G1, init_bias: -.inf}\n", ":1:", "gate.init_bias", "finite number"),
        ("backbone:\n  train:\n    optimizer: {betas: [0.9, .nan]}\n", ":3:", "backbone.train.optimizer.betas.1",
         "finite number"),
        ("train:\n  optimizer: {betas: [1.5, 0.9]}\n", ":2:", "train.optimizer.betas.0", "less than 1"),
        ("model:\n  d_model: 1000000000000\n", ":2:", "model.d_model", "less than or equal to 65536"),
        ("model: {n_layers: 100000}\n", ":1:", "model.n_layers", "less than or equal to 1024"),
        ("model: {vocab_size: 99999999999}\n", ":1:", "model.vocab_size", "less than or equal to 2097152"),
        ("train: {batch_size: 99999999999}\n", ":1:", "train.batch_size", "less than or equal to 1048576"),
        ("gate: {kind: G3, target_seed: 99999999999999999999}\n", ":1:", "gate.target_seed", "less than or equal"),
        ("train:\n  lm_thresholds: [" + ", ".join(["3.0"] * 65) + "]\n", ":2:", "train.lm_thresholds",
         "at most 64 items"),
        ("name: \"\x00\"\n", "bad.yaml: ", "", "invalid YAML: unacceptable character #x0000"),
        ("default_profile: [x]\n", ":1:", "default_profile", "must be the name of a profile"),
        ("profiles: {1: {seed: 1}, a: {seed: 2}}\n", ":1:", "profiles.1", "a profile name must be text"),
    ],
    ids=["nested-lists-500", "nested-maps-100", "alias-depth", "billion-laughs", "merge-key-laughs",
         "recursive-alias", "too-many-nodes", "long-scalar", "long-key", "long-number", "bad-date", "file-too-large",
         "too-many-profiles", "too-many-arms", "lr-inf", "lr-1e400", "threshold-nan", "init-bias-inf", "beta-nan",
         "beta-above-1", "d-model-1e12", "n-layers", "vocab", "batch", "target-seed", "thresholds", "nul-character",
         "default-profile-list", "profile-name-int"],
)
def test_bad_input_exits_2_naming_file_limit_and_line(tmp_path, monkeypatch, text, where, field, words):
    monkeypatch.chdir(tmp_path)
    check_bad_spec(tmp_path, text, where, field, words)


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda p: p.mkdir(), "is a folder, not a spec file"),
        (lambda p: os.mkfifo(p), "is a FIFO (named pipe), not a spec file"),
        (lambda p: p.write_bytes(bytes(range(128, 256)) * 8), "is not UTF-8 text (byte 0x80 at offset 0)"),
        (lambda p: p.symlink_to("/dev/zero"), "is a character device, not a spec file"),
    ],
    ids=["folder", "fifo", "binary", "dev-zero"],
)
def test_only_regular_files_are_read(tmp_path, monkeypatch, make, words):
    monkeypatch.chdir(tmp_path)
    make(tmp_path / "bad.yaml")
    assert_exit_2(invoke("validate", "bad.yaml"), words)


def test_a_fifo_or_a_device_never_blocks_the_reader(tmp_path):
    """In a child process with a deadline, so that a reader that blocks fails the test instead of hanging it."""
    fifo = tmp_path / "spec.fifo"
    os.mkfifo(fifo)
    code = textwrap.dedent(f"""
        from pathlib import Path
        from specroute.spec import SpecError
        from specroute.spec.yaml_io import read_text
        for p in ({str(fifo)!r}, "/dev/zero", "/dev/stdin", "/dev/tty"):
            try:
                read_text(Path(p))
            except SpecError as e:
                print(e.reason)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         stdin=subprocess.PIPE)
    assert out.returncode == 0, out.stderr
    reasons = out.stdout.splitlines()
    assert len(reasons) == 4, out.stdout
    assert "FIFO" in reasons[0] and "character device" in reasons[1] and "FIFO" in reasons[2]


def test_extends_chain_and_files_are_bounded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for i in range(20):
        write(tmp_path, f"c{i}.yaml", f"extends: c{i + 1}.yaml\n" if i < 19 else "name: c\n")
    assert_exit_2(invoke("validate", "c0.yaml"), "c15.yaml:1: extends: ", "the extends chain is too long: over the "
                  "limit of 16 files (MAX_EXTENDS_CHAIN")
    for i in range(12):  # each file extends the next twice: 2^11 reads without a bound
        write(tmp_path, f"d{i}.yaml", f"extends: [d{i + 1}.yaml, d{i + 1}.yaml]\n" if i < 11 else "name: d\n")
    assert_exit_2(invoke("validate", "d0.yaml"), ": extends: ", "over the limit of 64 files (MAX_EXTENDS_FILES")
    os.mkfifo(tmp_path / "pipe.yaml")
    write(tmp_path, "e.yaml", "name: e\nextends: pipe.yaml\n")
    assert_exit_2(invoke("validate", "e.yaml"), "e.yaml:2: extends: ", "is a FIFO (named pipe), not a file")


@pytest.mark.parametrize(
    ("item", "words"),
    [
        ("seed=" + "[" * 200 + "]" * 200, "--set: seed: nested too deep"),
        ("name=" + "n" * 20_000, "--set: name: a scalar of 20,000 characters"),
        ("train.optimizer.lr_peak=.inf", "--set: train.optimizer.lr_peak: Input should be a finite number"),
        ("model.d_model=1e12", "--set: model.d_model: "),
        (".".join(["a"] * 100) + "=1", "a key path of 100 parts"),
        ("name=" + "x" * (MAX_FILE_BYTES + 1), "the limit is 1,048,576"),
        ("description=&a [*a]", "--set: description: value is not valid YAML: "),
    ],
    ids=["deep", "long-scalar", "inf", "huge-width", "long-key-path", "huge-value", "recursive-alias"],
)
def test_bad_set_values_are_bounded(item, words):
    assert_exit_2(invoke("validate", SPECS / "a3.yaml", "--set", item), words)


def test_set_values_share_one_node_budget():
    item = "description=[" + ", ".join(["1"] * (MAX_NODES // 4)) + "]"
    parse_set([item] * 3)  # within the budget together
    with pytest.raises(SpecError, match="MAX_NODES"):
        parse_set([item] * 5)


# --------------------------------------------------------------------------------------------------
# messages stay short whatever the spec holds


def test_very_many_problems_are_counted_not_listed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "bad.yaml", "".join(f"k{i}: 1\n" for i in range(3000)))
    result = invoke("validate", "bad.yaml")
    assert_exit_2(result, "bad.yaml:1: k0: unknown field 'k0'", f"... and {3000 - MAX_PROBLEMS_SHOWN:,} more problems")
    assert len(result.stderr.splitlines()) == 1 + MAX_PROBLEMS_SHOWN + 1


def test_long_fields_and_reasons_are_clipped():
    error = SpecError([Problem("--set", "k" * 5000, None, "r" * 5000)])
    assert len(str(error)) < 1000
    assert "(+4,840 characters)" in str(error) and "(+4,400 characters)" in str(error)


def test_markup_in_names_is_printed_as_text(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "s.yaml", "name: s\ndescription: '[/bold] [red [link=x]'\n")
    result = invoke("validate", "s.yaml")
    assert result.exit_code == 0, result.output
    assert "[/bold] [red [link=x]" in result.stdout
    write(tmp_path, "s.yaml", "name: '[/bold] [red'\narms:\n  '[/]': {}\n")  # names are folders: refused
    assert_exit_2(invoke("validate", "s.yaml"), "name '[/bold] [red' is used as a folder name",
                  "arm name '[/]' is used as a folder name")


def test_parameter_counts_are_readable_at_any_size():
    assert millions(157_520_000) == "157.52M"
    assert millions(2_500_000_000) == "2.50B"
    assert millions(48_000_000_000_632_004_608) == "4.80e+19"


# --------------------------------------------------------------------------------------------------
# memory: a model that cannot fit is refused before anything is allocated


HUGE = ["--set", "model.d_model=65536", "--set", "model.n_heads=64", "--set", "model.n_layers=1024"]


def test_validate_shows_the_memory_estimate():
    result = invoke("validate", SPECS / "a3.yaml", "--profile", "smoke")
    assert result.exit_code == 0, result.output
    assert "memory: about " in result.stdout and " at peak (" in result.stdout and " free of " in result.stdout


def test_a_model_that_cannot_fit_is_refused_by_validate_and_run(tmp_path):
    assert_exit_2(invoke("validate", SPECS / "a3.yaml", *HUGE), "the study cannot fit in memory",
                  "TiB", "of RAM of this machine", prefix="error: ")
    out = tmp_path / "o"
    assert_exit_2(invoke("run", SPECS / "a3.yaml", *HUGE, "--out", out, "--cache-dir", tmp_path / "c", "--yes"),
                  "the study cannot fit in memory", prefix="error: ")
    assert not out.exists() and not (tmp_path / "c").exists()


def test_a_study_that_may_not_fit_needs_yes(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "available", lambda device: Available("RAM", 1 << 20, 64 << 30))
    out = tmp_path / "o"
    result = invoke("run", SPECS / "a3.yaml", "--profile", "smoke", "--out", out, "--cache-dir", tmp_path / "c")
    assert_exit_2(result, "the study may not fit in memory", "1 MiB free of 64.0 GiB", "Pass --yes",
                  prefix="error: ")
    assert not out.exists()
    validated = invoke("validate", SPECS / "a3.yaml", "--profile", "smoke")
    assert validated.exit_code == 0 and "warning: the study may not fit" in validated.stdout


def test_judge_refuses_only_what_is_certain():
    est = estimate_study([tiny_spec()], "cpu")
    p = est.peak
    assert judge(est, Available("RAM", p.high, p.high)).status == "fits"
    assert judge(est, Available("RAM", p.high - 1, p.high)).status == "uncertain"
    assert judge(est, Available("RAM", 0, p.exact)).status == "uncertain"
    assert judge(est, Available("RAM", 0, p.exact - 1)).status == "cannot"


def test_check_memory_refuses_or_warns(monkeypatch):
    spec = tiny_spec()
    p = estimate_study([spec], "cpu").peak
    monkeypatch.setattr(memory, "available", lambda device: Available("RAM", 0, 1 << 50))
    with pytest.raises(UserError, match="may not fit in memory.*Pass --yes"):
        memory.check_memory([spec], "cpu", 1, yes=False)
    assert "running anyway" in memory.check_memory([spec], "cpu", 1, yes=True)
    monkeypatch.setattr(memory, "available", lambda device: Available("RAM", 0, p.exact - 1))
    with pytest.raises(UserError, match="cannot fit in memory"):
        memory.check_memory([spec], "cpu", 1, yes=True)
    monkeypatch.setattr(memory, "available", lambda device: Available("RAM", p.high, p.high))
    assert memory.check_memory([spec], "cpu", 1, yes=False) is None


def test_the_estimate_counts_parameters_exactly_and_activations_by_batch():
    from specroute.flops.analytic import count_params

    spec = tiny_spec()
    dense, run = memory.stage_memory(spec, "cpu")
    pc = count_params(spec)
    assert dense.exact == memory.PROCESS_BYTES + 16 * pc.backbone
    assert run.exact == memory.PROCESS_BYTES + 4 * pc.total + 12 * (pc.gate + pc.cheap_ffn) + 4 * pc.backbone
    double = tiny_spec({"backbone": {"train": {"batch_size": 4}}, "train": {"batch_size": 4}})
    d2, r2 = memory.stage_memory(double, "cpu")
    assert (d2.activations, r2.activations) == (2 * dense.activations, 2 * run.activations)
    assert (d2.exact, r2.exact) == (dense.exact, run.exact)
    parallel = estimate_study([spec], "cpu", parallel=3)
    assert parallel.stages[1].activations == 3 * run.activations
    assert estimate_study([spec], "cuda").peak.activations < estimate_study([spec], "cpu").peak.activations


@pytest.mark.parametrize("profile", ["smoke", "bench", "paper"])
def test_shipped_profiles_are_never_refused_as_impossible(profile):
    resolved = load_study(SPECS / "a3.yaml", profile)
    est = estimate_study([resolved.arm_spec(a) for a in resolved.study.arms], "cpu")
    assert judge(est, Available("RAM", 16 << 30, 16 << 30)).status != "cannot"
