"""Beyond one process: ``--shard i/N`` into one shared ``--out`` (two processes at once), run claims,
``specroute report OUT``, the device slots of ``--devices`` (pure, without CUDA) and ``--launcher slurm``
through submitit's debug executor (no SLURM).

The shared-folder tests run real ``specroute run`` processes on the micro A3 study (G1_lm, seeds 0 and 1)
over one warm cache, and compare with the same study run in one process.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from helpers import HOLDER, ROOT, RUN_ARGS, micro, strip_wall
from specroute.cli import app
from specroute.store import LOCK_NAME, UserError
from specroute.train import StudyOptions, run_study
from specroute.train.parallel import Slots, parse_devices
from specroute.train.sharing import parse_shard, shard_runs
from specroute.train.study import spec_sha256

runner = CliRunner()


def cli(*args: object):
    return runner.invoke(app, [*RUN_ARGS, *[str(a) for a in args]])


def metrics(summary: dict) -> dict:
    """What two runs of one study must share: every arm's per-seed metrics, means and spreads (wall times
    aside), the comparisons, failed runs, the data and the backbone's held-out LM."""
    arms = {a: {"seeds": {s: strip_wall(v) for s, v in e["seeds"].items()},
                "mean": strip_wall(e["mean"]), "std": strip_wall(e["std"]), "n": e["n"]}
            for a, e in summary["arms"].items()}
    return {"arms": arms, "comparisons": summary["comparisons"], "failed": summary["failed"],
            "data": summary["data"], "backbone_lm": summary["backbone"]["heldout_lm"]}


def message(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.stderr.startswith("error: "), result.stderr
    return " ".join(result.stderr.split())


@pytest.fixture(scope="module")
def unsharded(tmp_path_factory):
    """The micro study's G1_lm arm (seeds 0, 1) in one process: its output folder and its warm cache."""
    base = tmp_path_factory.mktemp("unsharded")
    result = run_study(micro(), StudyOptions(out=base / "out", arms=["G1_lm"], device="cpu", cache=base / "cache",
                                             workers=1))
    return result, base / "cache"


# --------------------------------------------------------------------------------------------------
# shards


def test_shards_split_the_sorted_runs_disjointly_and_completely():
    runs = [(arm, seed, None) for arm in ("b", "a", "c") for seed in (2, 0, 1)]
    for n in (1, 2, 3, 4, 9, 10):
        shares = [shard_runs(runs, i, n) for i in range(n)]
        flat = [(a, s) for share in shares for a, s, _ in share]
        assert sorted(flat) == sorted((a, s) for a, s, _ in runs)  # every run once
        assert len(set(flat)) == len(flat)
        assert max(map(len, shares)) - min(map(len, shares)) <= 1  # balanced
        assert shares == [shard_runs(list(reversed(runs)), i, n)[::-1] for i in range(n)]  # order-free
    assert [(a, s) for a, s, _ in shard_runs(runs, 1, 4)] == [("b", 2), ("a", 1)]  # sorted positions 1, 5


@pytest.mark.parametrize("text", ["2/2", "-1/2", "0/0", "1", "a/b", "1/2/3", ""])
def test_a_bad_shard_exits_2_before_any_work(tmp_path, text):
    t = time.perf_counter()
    r = cli("--shard", text, "--out", tmp_path / "out", "--cache-dir", tmp_path / "cache")
    assert "--shard" in message(r) and "0 <= i < N" in message(r)
    assert time.perf_counter() - t < 10
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()
    assert parse_shard("1/3") == (1, 3)


def test_two_shards_at_once_into_one_out_give_the_unsharded_metrics(tmp_path, unsharded):
    lone, cache = unsharded
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "specroute.cli", *RUN_ARGS, "--out", str(out), "--cache-dir", str(cache)]
    procs = [subprocess.Popen([*cmd, "--shard", f"{i}/2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd=ROOT) for i in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    summary = json.loads((out / "summary.json").read_text())
    assert metrics(summary) == metrics(lone.summary)
    assert sorted(summary["arms"]["G1_lm"]["seeds"]) == ["0", "1"]
    assert "G1_lm" not in summary["missing"]  # the last shard's report sees every run of the arm
    assert [s["ended"] for s in json.loads((out / "sessions.json").read_text())] == ["complete", "complete"]
    assert not list(out.rglob(LOCK_NAME)) and not list(out.rglob("*.tmp"))
    for i, run in enumerate(("seed0", "seed1")):  # each shard trained its own run, once
        lines = (out / "runs" / "G1_lm" / run / "metrics.jsonl").read_text().splitlines()
        assert sum(json.loads(line)["event"] == "train" for line in lines) == 12
    # the report rebuilt afterwards from the folder alone says the same
    (out / "summary.json").unlink()
    r = runner.invoke(app, ["report", str(out)])
    assert r.exit_code == 0, r.output
    assert metrics(json.loads((out / "summary.json").read_text())) == metrics(lone.summary)


def test_a_shard_reports_what_has_finished_and_lists_the_rest(tmp_path, unsharded):
    lone, cache = unsharded
    out = tmp_path / "out"
    r = cli("--shard", "1/2", "--out", out, "--cache-dir", cache)
    assert r.exit_code == 0, r.output
    assert "G1_lm seed 0;" in " ".join(r.stdout.split())
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["arms"]["G1_lm"]["seeds"]) == ["1"]
    assert summary["missing"]["G1_lm"] == [0]
    assert summary["arms"]["G1_lm"]["seeds"]["1"]["avg_lm"] == lone.summary["arms"]["G1_lm"]["seeds"]["1"]["avg_lm"]
    md = (out / "report.md").read_text()
    assert "## Missing runs" in md and "| G1_lm | 0 |" in md
    r = runner.invoke(app, ["report", str(out)])
    assert r.exit_code == 0, r.output
    assert "G1_lm seed 0;" in " ".join(r.stdout.split())


def test_a_shard_of_another_study_is_refused_naming_both_hashes(tmp_path, unsharded):
    _, cache = unsharded
    out = tmp_path / "out"
    out.mkdir()
    (out / "study.json").write_text(json.dumps({"spec_sha256": "0" * 64}))
    before = sorted(p.name for p in out.iterdir())
    r = cli("--shard", "0/2", "--out", out, "--cache-dir", cache)
    text = message(r)
    assert f"--shard: {out} holds a study with another resolved spec (sha256 000000000000, now " \
           f"{spec_sha256(micro())[:12]})" in text and "every shard of a study must use the same spec" in text
    assert sorted(p.name for p in out.iterdir()) == before
    r = cli("--shard", "0/2", "--overwrite", "--out", out, "--cache-dir", cache)
    assert "--shard and --overwrite exclude each other" in message(r)


def test_a_shard_with_other_overrides_is_sent_to_another_out_not_to_overwrite(tmp_path, unsharded):
    _, cache = unsharded
    out = tmp_path / "out"
    r = cli("--shard", "0/2", "--out", out, "--cache-dir", cache, "--set", "train.steps=6")
    assert r.exit_code == 0, r.output
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    t = time.perf_counter()
    r = cli("--shard", "1/2", "--out", out, "--cache-dir", cache, "--set", "train.steps=7")
    text = message(r)
    assert time.perf_counter() - t < 10
    assert f"--shard: {out} holds a study with another resolved spec (sha256 " in text
    assert "every shard of a study must use the same spec and overrides (the spec file, --profile and every " \
           "--set)" in text and "give another --out" in text
    assert "--overwrite" not in text  # it would delete the runs the first shard finished
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    r = cli("--resume", "--out", out, "--cache-dir", cache, "--set", "train.steps=7")
    assert "must run the same spec" in message(r) and "use --overwrite or another --out" in message(r)


def test_a_run_claimed_by_another_process_is_refused_and_a_killed_claim_taken_over(tmp_path, unsharded):
    _, cache = unsharded
    out = tmp_path / "out"
    folder = out / "runs" / "G1_lm" / "seed0"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), "the run folder"], stdout=subprocess.PIPE, text=True,
                              cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        t = time.perf_counter()
        r = cli("--shard", "0/2", "--out", out, "--cache-dir", cache)
        text = message(r)
        assert time.perf_counter() - t < 10  # refused at once, not after training anything
        assert f"the run folder {folder} is in use by another specroute process (pid {holder.pid}" in text
        assert "must train different runs (--shard i/N" in text
        assert not (out / "study.json").exists() and not (folder / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    assert (folder / LOCK_NAME).is_file()  # left behind by the kill
    r = cli("--shard", "0/2", "--out", out, "--cache-dir", cache)
    assert r.exit_code == 0, r.output
    assert f"took over the lock of {folder} left by a process that ended" in " ".join(r.stdout.split())
    assert (folder / "result.json").is_file() and not list(out.rglob(LOCK_NAME))


def _damaged(path, damage: str) -> str:
    """Damage ``path`` (a run's result.json or metrics.jsonl) as ``damage`` says; return the damaged file's name."""
    text = path.read_text()
    path.write_text({"cut": text[:len(text) // 2], "array": "[]", "empty": "{}", "line": "{not json\n" + text}[damage])
    return path.name


@pytest.mark.parametrize("file,damage", [("result.json", "cut"), ("result.json", "array"), ("result.json", "empty"),
                                         ("metrics.jsonl", "line")])
def test_report_leaves_out_a_run_with_a_damaged_file_and_names_it(tmp_path, unsharded, file, damage):
    lone, cache = unsharded
    out = tmp_path / "out"
    shutil.copytree(lone.out, out)
    runs = out / "runs" / "G1_lm"
    name = _damaged(runs / "seed1" / file, damage)
    with open(runs / "seed0" / "metrics.jsonl", "a") as f:
        f.write('{"event": "train", "st')  # a write cut off by a kill: tolerated
    why = {"cut": "not a readable result", "array": "holds a JSON array, not a run's result",
           "empty": "not a complete run's result (no lm, best_lm", "line": "metrics.jsonl:1: not a JSON record"}[damage]
    r = runner.invoke(app, ["report", str(out)])
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output
    stdout = " ".join(r.stdout.split())
    assert "from 1 finished run(s)" in stdout and f"left out (unreadable): {runs / 'seed1' / name}" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["arms"]["G1_lm"]["seeds"]) == ["0"]
    assert summary["arms"]["G1_lm"]["seeds"]["0"] == lone.summary["arms"]["G1_lm"]["seeds"]["0"]
    assert "G1_lm" not in summary["missing"] and list(summary["unreadable"]) == ["G1_lm"]
    (reason,) = summary["unreadable"]["G1_lm"].values()
    assert list(summary["unreadable"]["G1_lm"]) == ["1"] and reason.startswith(str(runs / "seed1" / name))
    assert why in reason
    md = (out / "report.md").read_text()
    assert "## Unreadable runs" in md and f"| G1_lm | 1 | {runs / 'seed1' / name}" in md
    # the end of `specroute run` writes the same report (shard 0/2 trains seed 0, finished already)
    r = cli("--shard", "0/2", "--out", out, "--cache-dir", cache)
    assert r.exit_code == 0, r.output
    assert f"left out (unreadable): {runs / 'seed1' / name}" in " ".join(r.stdout.split())
    assert list(json.loads((out / "summary.json").read_text())["unreadable"]["G1_lm"]) == ["1"]
    # nothing readable left: exit 2 as for an empty study, naming the file; the last report stays
    _damaged(runs / "seed0" / "result.json", "array")
    before = (out / "summary.json").read_text()
    text = message(runner.invoke(app, ["report", str(out)]))
    assert f"no run of the study in {out} has a readable result" in text and "nothing to report" in text
    assert f"unreadable: {runs / 'seed0' / 'result.json'}: holds a JSON array" in text
    assert (out / "summary.json").read_text() == before


def test_report_of_a_folder_that_is_not_a_study_exits_2(tmp_path):
    (tmp_path / "notes").mkdir()
    for folder in (tmp_path / "missing", tmp_path / "notes"):
        r = runner.invoke(app, ["report", str(folder)])
        assert "is not a" in message(r) and "--out of a `specroute run`" in message(r)


# --------------------------------------------------------------------------------------------------
# devices


def test_runs_take_the_lowest_free_device_and_a_finishing_run_frees_its_own():
    slots = Slots(["cuda:0", "cuda:2"])
    placed = {run: slots.start(run) for run in "abc"}
    assert placed == {"a": 0, "b": 1, "c": None}  # two devices, two runs at once
    assert slots.finish("b") == 1
    assert slots.start("c") == 1  # c goes where b was
    assert slots.start("d") is None
    assert slots.finish("a") == 0 and slots.start("d") == 0
    with pytest.raises(KeyError):
        slots.finish("a")
    # N runs over K devices, finishing in a given order: every run gets a device, never two runs on one
    for k in (1, 2, 3):
        slots, pending, running, log = Slots([f"cuda:{i}" for i in range(k)]), list(range(7)), [], []
        while pending or running:
            while pending and (slot := slots.start(pending[0])) is not None:
                running.append(pending.pop(0))
                log.append(slot)
            assert len(running) <= k and len(set(slots.busy)) == len(running)
            slots.finish(running.pop(len(running) // 2))
        assert sorted(set(log)) == list(range(k)) and len(log) == 7


def test_devices_are_parsed_against_the_visible_ones():
    assert parse_devices("auto", 0) == [] and parse_devices("auto", 3) == [0, 1, 2]
    assert parse_devices("0,2", 3) == [0, 2] and parse_devices("1,1", 2) == [1, 1]
    for text, visible, words in (("5", 2, "no CUDA device 5"), ("x", 2, "comma-separated"),
                                 ("0", 0, "torch sees no CUDA device")):
        with pytest.raises(UserError, match=words):
            parse_devices(text, visible)


def test_devices_on_a_machine_without_cuda_exit_2(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = cli("--devices", "0,1", "--out", tmp_path / "out", "--cache-dir", tmp_path / "cache")
    assert "--devices 0,1: torch sees no CUDA device here" in message(r)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------
# SLURM through submitit (its debug executor: the array's tasks run in this process)


def test_an_array_job_runs_every_run_into_one_out_and_reports_them(tmp_path, unsharded):
    lone, cache = unsharded
    out = tmp_path / "out"
    r = cli("--launcher", "submitit-debug", "--out", out, "--cache-dir", cache)
    assert r.exit_code == 0, r.output
    assert "submitted 2 task(s)" in r.stdout
    assert metrics(json.loads((out / "summary.json").read_text())) == metrics(lone.summary)
    assert (out / "slurm").is_dir()  # submitit's logs and pickles
    r = cli("--overwrite", "--out", out, "--cache-dir", cache)  # slurm/ is part of the study's layout
    assert r.exit_code == 0, r.output


def test_no_wait_submits_and_leaves_the_report_for_later(tmp_path, unsharded):
    _, cache = unsharded
    out = tmp_path / "out"
    r = cli("--launcher", "submitit-debug", "--no-wait", "--out", out, "--cache-dir", cache)
    assert r.exit_code == 0, r.output
    assert f"`specroute report {out}`" in " ".join(r.stdout.split())
    r = runner.invoke(app, ["report", str(out)])  # the debug executor runs a task only when asked for it
    assert "no run of the study" in message(r) and "G1_lm seeds [0, 1]" in message(r)


@pytest.mark.parametrize(("args", "words"), [
    (["--launcher", "pbs"], "--launcher 'pbs': use local or slurm"),
    (["--launcher", "slurm", "--time", "soon"], "--time 'soon': give minutes"),
    (["--launcher", "slurm", "--shard", "0/2"], "--shard and --launcher slurm exclude each other"),
])
def test_bad_launcher_options_exit_2(tmp_path, args, words):
    r = cli(*args, "--out", tmp_path / "out", "--cache-dir", tmp_path / "cache")
    assert words in message(r)
    assert not (tmp_path / "out").exists()


def test_slurm_where_there_is_none_exits_2_before_any_work(tmp_path):
    import shutil

    if shutil.which("srun"):
        pytest.skip("this machine has SLURM")
    r = cli("--launcher", "slurm", "--partition", "gpu", "--out", tmp_path / "out", "--cache-dir", tmp_path / "cache")
    assert "--launcher slurm: no SLURM here (srun is not on the PATH)" in message(r)
    assert not (tmp_path / "out").exists()


def test_slurm_without_submitit_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit raises ImportError
    r = cli("--launcher", "slurm", "--out", tmp_path / "out", "--cache-dir", tmp_path / "cache")
    assert "pip install 'specroute[slurm]'" in message(r)
    assert not (tmp_path / "out").exists()
