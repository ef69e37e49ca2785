"""Data parallel training of one run under torchrun (gloo on the CPU): two processes, each on its half of
the global batch, give the metrics of one process on the whole batch, write only from rank 0, and resume
from the checkpoint rank 0 wrote."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import TIMING_KEYS, micro
from specroute.train import StudyOptions, run_study

ARM = "G3_utilrank"
#: A short run with a checkpoint the interrupted session leaves (step 3) and evaluations on both sides of it;
#: util (standardised targets) and rank (sampled pairs): batch-level statistics over the two processes.
SETS = ["seeds=[0]", "train.steps=6", "train.checkpoint_every=3", "train.eval_every=2", "train.batch_size=4",
        "train.seq_len=16"]


def _records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "runs" / ARM / "seed0" / "metrics.jsonl").read_text().splitlines()]


def _assert_close(a, b, where: str = "") -> None:
    if isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            if k not in TIMING_KEYS:
                _assert_close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        # the latent's effective rank (an entropy of singular values) amplifies float noise most
        assert math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-6), (where, a, b)
    else:
        assert a == b, where


def test_two_processes_train_one_run_like_one_process(tmp_path):
    """2 processes x 2 micro-batches of 1 sequence, crashed after step 5 and resumed from step 3, against 1
    process on the whole batch of 4 (whose backbone, trained first, the processes load from the cache: the
    session's step budget would count the backbone's steps on rank 0 alone)."""
    one = tmp_path / "one"
    run_study(micro(*SETS), StudyOptions(out=one, arms=[ARM], seeds=[0], device="cpu", cache=tmp_path / "cache",
                                         workers=1))
    two = tmp_path / "two"
    script = Path(__file__).resolve().parent / "ddp_study.py"
    sets = [*SETS, "train.grad_accum_steps=2"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           str(two), str(tmp_path / "cache"), "5", *[x for s in sets for x in ("--set", s)]]
    r = subprocess.run(cmd, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                       timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    a, b = _records(one), _records(two)
    assert [r["event"] for r in a] == [r["event"] for r in b]
    assert [r["step"] for r in b if r["event"] == "train"] == list(range(1, 7))  # truncated at the resume
    for x, y in zip(a, b):
        _assert_close(x, y)
    assert len(list((tmp_path / "cache" / "backbones").iterdir())) == 1  # the same backbone, trained once
    result_one = json.loads((one / "runs" / ARM / "seed0" / "result.json").read_text())
    result_two = json.loads((two / "runs" / ARM / "seed0" / "result.json").read_text())
    _assert_close(result_one, result_two)
    assert json.loads((two / "sessions.json").read_text())[0]["ended"] == "interrupted"


def test_a_batch_the_processes_cannot_share_is_refused():
    from specroute.store import UserError
    from specroute.train.distributed import BatchSplit, World

    with pytest.raises(UserError, match=r"train.batch_size: 6 sequences cannot be cut into 4 process"):
        BatchSplit(6, 1, World(1, 4, 1))
    split = BatchSplit(8, 2, World(1, 2, 1))
    assert (split.rows_per_rank, split.rows_per_micro, split.micro_rows(1)) == (4, 2, slice(6, 8))


def test_python_dash_m_specroute_is_the_command_line():
    """What ``torchrun ... -m specroute run SPEC`` starts in each process."""
    r = subprocess.run([sys.executable, "-m", "specroute", "run", "--help"], check=False, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "--tensorboard" in r.stdout and "torchrun" in r.stdout
