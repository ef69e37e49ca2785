"""Tracking: every number of metrics.jsonl reaches TensorBoard (read back from the event files) and W&B
(offline: read back from the run's .wandb log), one run per (arm, seed), grouped by study; a resumed run
has each step once; a tracker that is not installed is a user error."""

from __future__ import annotations

import json
import struct
import sys
import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from typer.testing import CliRunner

from helpers import MICRO, SPECS
from specroute.cli import app
from specroute.spec.training import TrackingSpec
from specroute.train.tracking import TrackingFlags, TrackingSink, flat_numbers, wandb_logged_in
from specroute.train.trainer import NoSink

runner = CliRunner()
ARM = "G1_utilrank"
SHORT = ["train.steps=4", "train.eval_every=2", "seeds=[0]"]


def _run(*args: str):
    return runner.invoke(app, ["run", str(SPECS / "a3.yaml"), "--profile", "smoke", "--arm", ARM, "--seed", "0",
                               "--device", "cpu", "--workers", "1",
                               *[x for s in [*MICRO, *SHORT] for x in ("--set", s)], *args])


def _expected(metrics: Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} that metrics.jsonl's records give (the sink's flattening, per event)."""
    tags: dict[str, dict[int, float]] = {}
    step = 0
    for line in metrics.read_text().splitlines():
        record = json.loads(line)
        step = record.get("step", step)
        event = "eval" if record["event"] == "eval_initial" else record["event"]
        for tag, v in flat_numbers(record, event).items():
            tags.setdefault(tag, {})[step] = v
    return tags


def _tensorboard(folder: Path) -> dict[str, dict[int, float]]:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def _wandb_records(path: Path) -> list:
    """The records of a W&B run log (.wandb: the LevelDB log format, 32 KiB blocks of chunks with a 7-byte
    header, after W&B's own 7-byte file header)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pos, buf = [], 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if n == 0 and kind == 0:
            pos += left
            continue
        buf += data[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = pb.Record()
            record.ParseFromString(buf)
            records.append(record)
            buf = b""
    return records


def test_tensorboard_and_wandb_get_every_metric(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_home"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "out"
    r = _run("--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--set", "train.tracking.tensorboard=true",
             "--wandb", "offline")
    assert r.exit_code == 0, r.output
    expected = _expected(out / "runs" / ARM / "seed0" / "metrics.jsonl")
    assert {"train/loss", "train/util", "train/full_fraction/1", "eval/lm", "eval/score_quantiles/1/0",
            "end/best_lm"} <= set(expected)
    tb = _tensorboard(out / "tensorboard" / "a3" / ARM / "seed0")
    assert set(tb) == set(expected)
    for tag, by_step in expected.items():
        assert set(tb[tag]) == set(by_step), tag
        for step, v in by_step.items():
            assert tb[tag][step] == pytest.approx(v, rel=1e-6, abs=1e-9), (tag, step)
    assert sorted(tb["train/loss"]) == [1, 2, 3, 4] and sorted(tb["eval/lm"]) == [0, 2, 4]

    (log,) = (out / "wandb").glob("wandb/offline-run-*/run-*.wandb")
    records = _wandb_records(log)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.run_group, run.display_name, run.project) == ("a3", f"{ARM}/seed0", "specroute")
    logged: dict[str, dict[int, float]] = {}
    for rec in records:
        if rec.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item}
            for tag, v in items.items():
                if not tag.startswith("_"):
                    logged.setdefault(tag, {})[items["_step"]] = v
    assert set(logged) == set(expected)
    for tag, by_step in expected.items():
        assert set(logged[tag]) == set(by_step), tag
        for step, v in by_step.items():
            assert logged[tag][step] == pytest.approx(v, rel=1e-9), (tag, step)


def test_a_resumed_run_has_each_step_once_in_tensorboard(tmp_path):
    flags = TrackingFlags("study", tmp_path, tensorboard=tmp_path / "tb")
    # session 1 crashed after step 5; session 2 resumed from the checkpoint of step 2
    for session, steps in ((1, range(6)), (2, range(3, 9))):
        sink = TrackingSink(NoSink(), flags, TrackingSpec(), "arm", 0, {})
        for s in steps:
            sink.write({"event": "train", "step": s, "loss": 10.0 * s + session})
        sink.close()
    loss = _tensorboard(tmp_path / "tb" / "study" / "arm" / "seed0")["train/loss"]
    assert loss == {s: 10.0 * s + (1 if s < 3 else 2) for s in range(9)}


def test_flattening_keeps_the_numbers_and_names_them():
    record = {"event": "eval", "step": 3, "lm": 2.5, "ok": True, "latent": None, "note": "x",
              "full_fraction": {"1": 0.5}, "q": {"1": [0.1, 0.2]}, "bad": float("nan")}
    assert flat_numbers(record, "eval") == {"eval/lm": 2.5, "eval/full_fraction/1": 0.5, "eval/q/1/0": 0.1,
                                            "eval/q/1/1": 0.2}


@pytest.mark.parametrize("flag,package", [(["--tensorboard", "tb"], "torch.utils.tensorboard"),
                                          (["--wandb", "offline"], "wandb")])
def test_a_tracker_not_installed_is_a_user_error(tmp_path, monkeypatch, flag, package):
    monkeypatch.setitem(sys.modules, package, None)  # import raises ImportError
    r = _run("--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), *flag)
    assert r.exit_code == 2
    assert "pip install 'specroute[tracking]'" in r.output
    assert not (tmp_path / "out" / "runs").exists()


def test_wandb_online_without_a_login_is_refused_before_anything_trains(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "NETRC", "WANDB_CONFIG_DIR"):
        monkeypatch.delenv(var, raising=False)
    assert not wandb_logged_in()
    t = time.perf_counter()
    r = _run("--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--wandb", "online")
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert ("error: --wandb online needs a W&B login (`wandb login` or WANDB_API_KEY); or use --wandb offline"
            in " ".join(r.stderr.split()))
    assert time.perf_counter() - t < 10
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()
    # the .netrc entry `wandb login` writes, or the key in the environment, counts (never checked online here)
    (home / ".netrc").write_text(f"machine api.wandb.ai\n  login user\n  password {'0' * 40}\n")
    (home / ".netrc").chmod(0o600)
    assert wandb_logged_in()
    (home / ".netrc").unlink()
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    assert wandb_logged_in()


def test_a_bad_wandb_mode_is_refused(tmp_path):
    r = _run("--out", str(tmp_path / "out"), "--wandb", "cloud")
    assert r.exit_code == 2 and "--wandb cloud: use offline, online or off" in r.output


def test_a_tensorboard_folder_that_cannot_be_made_is_refused_before_anything_is_written(tmp_path):
    (tmp_path / "a_file").write_text("mine")
    r = _run("--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"),
             "--tensorboard", str(tmp_path / "a_file" / "tb"))
    assert r.exit_code == 2 and "a_file exists and is not a folder" in r.output, r.output
    assert not (tmp_path / "out").exists() and (tmp_path / "a_file").read_text() == "mine"
