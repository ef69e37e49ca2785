"""Training: the learning-rate schedule, determinism, interruption and --resume, output-folder safety,
the paper profile's confirmation, unknown arms."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers import MICRO, SPECS, lone_and_resumed, micro, strip_wall
from specroute.cli import app
from specroute.spec.training import OptimizerSpec
from specroute.train import StudyOptions, run_study
from specroute.train.step import lr_at



def test_lr_schedule():
    opt = OptimizerSpec(lr_peak=1.0, warmup_steps=4, schedule="cosine", min_lr_ratio=0.1)
    assert [lr_at(s, 20, opt) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(4, 20, opt) == 1.0
    assert math.isclose(lr_at(19, 20, opt), 0.1)
    lin = OptimizerSpec(lr_peak=1.0, warmup_steps=0, schedule="linear", min_lr_ratio=0.0)
    assert math.isclose(lr_at(5, 11, lin), 0.5)
    assert lr_at(7, 10, OptimizerSpec(lr_peak=2.0, warmup_steps=0, schedule="constant")) == 2.0


def events(path: Path) -> list[dict]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["event"] in ("train", "eval", "eval_initial")]


def test_interrupted_study_resumes_to_identical_metrics(tmp_path):
    resolved = micro("train.loss_grad_norm_every=3")  # logged steps on both sides of the checkpoints
    # crash 1: inside the backbone (checkpoint at 10, died at 17); crash 2: inside the controller run
    # (backbone done after 20 replayed steps, controller checkpoint at 5, died at 10)
    ref, got, latest = lone_and_resumed(resolved, "G3_utilrank", tmp_path, (17, 30))
    assert latest == "step_000010"
    a = ref.summary["arms"]["G3_utilrank"]["seeds"]["0"]
    b = got.summary["arms"]["G3_utilrank"]["seeds"]["0"]
    assert strip_wall(a) == strip_wall(b) and a["loss_grad_norm"]["gate"]["rank"] > 0
    assert ref.summary["backbone"]["heldout_lm"] == got.summary["backbone"]["heldout_lm"]
    run = Path("runs") / "G3_utilrank" / "seed0" / "metrics.jsonl"
    assert events(ref.out / run) == events(got.out / run)  # nothing lost, nothing duplicated
    assert len(events(got.out / run)) == 1 + 12 + 3


def test_same_seed_same_metrics_different_seed_differs(tmp_path):
    resolved = micro()
    opts = dict(arms=["G1_lm"], device="cpu", cache=tmp_path / "cache", workers=1)
    one = run_study(resolved, StudyOptions(out=tmp_path / "a", **opts)).summary["arms"]["G1_lm"]["seeds"]
    two = run_study(resolved, StudyOptions(out=tmp_path / "b", **opts)).summary["arms"]["G1_lm"]["seeds"]
    assert strip_wall(one["0"]) == strip_wall(two["0"])
    assert one["0"]["lm"] != one["1"]["lm"]


runner = CliRunner()


def cli(*args: str):
    return runner.invoke(app, ["run", str(SPECS / "a3.yaml"), "--profile", "smoke",
                               *[x for s in MICRO for x in ("--set", s)], *args])


def test_existing_output_is_never_overwritten_silently(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    r = cli("--out", str(out), "--cache-dir", str(tmp_path / "c"), "--arm", "G1_lm")
    assert r.exit_code == 2 and "--resume" in r.output and "--overwrite" in r.output
    assert (out / "notes.txt").read_text() == "mine" and sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    # a --resume into a folder that holds no study, or a study of another spec, is refused too
    r = cli("--out", str(out), "--cache-dir", str(tmp_path / "c"), "--arm", "G1_lm", "--resume")
    assert r.exit_code == 2 and "holds no study" in r.output
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    (out / "study.json").write_text(json.dumps({"spec_sha256": "0" * 64}))
    r = cli("--out", str(out), "--cache-dir", str(tmp_path / "c"), "--arm", "G1_lm", "--resume")
    assert r.exit_code == 2 and "another resolved spec" in r.output
    for broken in ("{ broken", "[]"):
        (out / "study.json").write_text(broken)
        r = cli("--out", str(out), "--cache-dir", str(tmp_path / "c"), "--arm", "G1_lm", "--resume")
        assert r.exit_code == 2, r.output
        assert ("cannot read" if broken.startswith("{") else "another resolved spec") in r.output


def test_unknown_arm_and_seed_exit_2(tmp_path):
    r = cli("--out", str(tmp_path / "o"), "--arm", "G7_magic")
    assert r.exit_code == 2 and "G7_magic" in r.output and "G1_lm" in r.output
    r = cli("--out", str(tmp_path / "o"), "--seed", "9")
    assert r.exit_code == 2 and "seed" in r.output
    assert not (tmp_path / "o").exists()


def test_paper_profile_without_gpu_needs_yes(tmp_path, monkeypatch):
    from specroute.train.memory import Available

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    # A machine with room for it, so that the refusal is the confirmation's, not the memory check's.
    monkeypatch.setattr("specroute.train.memory.available", lambda device: Available("RAM", 1 << 40, 1 << 40))
    r = runner.invoke(app, ["run", str(SPECS / "a3.yaml"), "--profile", "paper", "--out", str(tmp_path / "p")])
    assert r.exit_code == 2 and "nobody can confirm" in r.output and "--yes" in r.output
    assert not (tmp_path / "p").exists()


# --------------------------------------------------------------------------------------------------
# worker processes: an interrupted or killed study leaves none behind


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def _workers(pid: int) -> list[int]:
    """The worker processes of study process ``pid``: its spawned children, or the children of its fork
    server (the server and multiprocessing's resource tracker are its other children)."""
    found = []
    for child in _children(pid):
        try:
            cmd = Path(f"/proc/{child}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"spawn_main" in cmd:
            found.append(child)
        elif b"forkserver" in cmd:
            found += _children(child)
    return found


def _wait_gone(pids: list[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while (alive := [p for p in pids if _pid_alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    for p in alive:  # do not leak them into the rest of the suite
        os.kill(p, signal.SIGKILL)
    return alive


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
@pytest.mark.parametrize("start", ["spawn", "forkserver"])
def test_workers_end_quietly_when_the_study_process_is_killed(tmp_path, start):
    """Under spawn the workers are the study process's children; under the fork server its grandchildren
    (the server ends with the study process, and they with it)."""
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(f"""
        import multiprocessing, os, time
        from concurrent.futures import ProcessPoolExecutor
        from specroute.train.runs import init_worker
        if __name__ == "__main__":
            ctx = multiprocessing.get_context("{start}")
            pool = ProcessPoolExecutor(2, mp_context=ctx, initializer=init_worker,
                                       initargs=(ctx.Queue(), 1, True))
            for f in [pool.submit(time.sleep, 0.2) for _ in range(2)]:
                f.result()
            print(*pool._processes, flush=True)
            pool.submit(time.sleep, 120)  # a long run in progress; the other worker waits for work
            time.sleep(120)
    """))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    workers = [int(x) for x in parent.stdout.readline().split()]
    assert len(workers) == 2
    time.sleep(0.5)
    parent.kill()  # SIGKILL: no clean-up in the parent
    parent.wait()
    assert _wait_gone(workers, 15) == [], "a worker trained on after its study process was killed"
    assert "Traceback" not in parent.stderr.read()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_ctrl_c_while_workers_start_is_one_line(tmp_path):
    """Ctrl-C in a terminal signals the whole process group; sent while the workers are starting, it ends
    the study with its one-line message, no worker traceback, no worker left."""
    out = tmp_path / "out"
    args = [sys.executable, "-m", "specroute.cli", "run", str(SPECS / "a3.yaml"), "--profile", "smoke",
            *[x for s in [*MICRO, "train.steps=100000"] for x in ("--set", s)],
            "--arm", "G1_lm", "--seed", "0", "--seed", "1", "--workers", "2", "--out", str(out),
            "--cache-dir", str(tmp_path / "cache")]
    log = tmp_path / "stderr.txt"
    study = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log.open("w"), start_new_session=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 240
        while len(workers) < 2 and time.monotonic() < deadline:  # the pool's workers exist, starting
            assert study.poll() is None, "the study ended before its workers started"
            workers = [w for w in _workers(study.pid) if _pid_alive(w)]
            time.sleep(0.05)
        os.killpg(study.pid, signal.SIGINT)
        rc = study.wait(timeout=60)
    finally:
        if study.poll() is None:
            study.kill()
    assert rc == 130
    assert _wait_gone(workers, 10) == []
    err = log.read_text()
    assert "Traceback" not in err and "PoolWorker" not in err, err
    assert err.strip().splitlines()[-1].startswith("interrupted; ")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
@pytest.mark.parametrize(("sig", "rc_expected"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_sigint_or_sigterm_to_the_study_process_stops_its_workers_at_once(tmp_path, sig, rc_expected):
    out = tmp_path / "out"
    args = [sys.executable, "-m", "specroute.cli", "run", str(SPECS / "a3.yaml"), "--profile", "smoke",
            *[x for s in [*MICRO, "train.steps=100000"] for x in ("--set", s)],
            "--arm", "G1_lm", "--seed", "0", "--seed", "1", "--workers", "2", "--out", str(out),
            "--cache-dir", str(tmp_path / "cache")]
    log = tmp_path / "stderr.txt"
    study = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log.open("w"),
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 240
        while len(list(out.glob("runs/*/*/ckpt/latest"))) < 2 and time.monotonic() < deadline:
            assert study.poll() is None, "the study ended before its runs started"
            time.sleep(0.2)
        workers = _workers(study.pid)
        assert len(workers) == 2
        study.send_signal(sig)  # the study process only, as `kill` does
        rc = study.wait(timeout=30)  # without stopping its workers it would wait for 100000-step runs
    finally:
        if study.poll() is None:
            study.kill()
            _wait_gone(workers, 0)
    assert rc == rc_expected
    assert _wait_gone(workers, 10) == []
    err = log.read_text()
    assert "continue with the same command plus --resume" in err
    assert "Traceback" not in err
    assert list(out.glob("runs/*/*/.specroute.lock")) == []  # the ended workers' locks are cleared


def test_deterministic_block_fixes_the_thread_count_it_is_given():
    """A worker passes its share of the cores (one thread when the runs go one per core): the block must
    keep it, not raise it to the machine's core count (more threads than cores stall every parallel op)."""
    import torch

    from specroute.train.device import Device, deterministic

    before = torch.get_num_threads()
    with deterministic(Device("cpu", None), threads=1):
        assert torch.get_num_threads() == 1
        assert torch.are_deterministic_algorithms_enabled()
    with deterministic(Device("cpu", None)):
        assert torch.get_num_threads() == (os.cpu_count() or 1)
    assert torch.get_num_threads() == before
    assert not torch.are_deterministic_algorithms_enabled()


def test_a_study_started_from_standard_input_trains_in_process_not_in_workers(tmp_path):
    """Workers import the main module again; a script read from standard input cannot be imported, so
    its workers would fail at their start, again and again: such a study runs its runs in this process."""
    script = ("import sys\nfrom specroute.train.distributed import SINGLE\n"
              "from specroute.train.parallel import uses_workers\nprint(uses_workers(2, 4, False, SINGLE))\n")
    from_stdin = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, check=True)
    path = tmp_path / "study.py"
    path.write_text(script)
    from_file = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, check=True)
    assert (from_stdin.stdout.strip(), from_file.stdout.strip()) == ("False", "True")


def test_workers_see_the_study_process_environment_as_it_is_when_they_start(tmp_path):
    """A fork server's workers would see its environment from when it started; they get the study's."""
    script = tmp_path / "env.py"
    script.write_text(textwrap.dedent("""
        import os
        from specroute.train.parallel import start_worker_server, worker_context
        from specroute.train.runs import init_worker
        if __name__ == "__main__":
            start_worker_server()  # started before the variable is set, as in a study
            os.environ["SPECROUTE_TEST_VALUE"] = "set after the server started"
            ctx = worker_context()
            with ctx.Pool(1, initializer=init_worker, initargs=(ctx.Queue(), 1, True, None, {}, dict(os.environ))) as pool:
                print(pool.apply(os.getenv, ("SPECROUTE_TEST_VALUE",)))
    """))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=True)
    assert r.stdout.strip() == "set after the server started"
