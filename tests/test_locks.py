"""One writer per output folder, `--overwrite` that deletes only a study's own files, and filesystem
failures (unwritable folder, read-only cache, disk full) as one message with exit 2 that names the path,
leaving no temporary and nothing that blocks the same command next time.

Locks are tested with real processes: a holder is a ``python -c`` that holds :func:`hold_lock`, or a
second ``specroute run``. Disk-full and read-only filesystems are simulated by making the write raise
the OSError the kernel gives (ENOSPC, EROFS); the tests never mount anything.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from helpers import HOLDER, ROOT, RUN_ARGS, SPECS, micro
from specroute.cli import app
from specroute.locks import clear_abandoned, hold_lock
from specroute.store import LOCK_NAME, UserError
from specroute.train import study as study_module
from specroute.train.study import prepare_out, spec_sha256

runner = CliRunner()


def cli(*args: str):
    return runner.invoke(app, [*RUN_ARGS, *[str(a) for a in args]])


def assert_user_error(result, *fragments: str) -> None:
    """Exit 2, one message on stderr, no traceback, every fragment in the message."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert result.stderr.startswith("error: "), result.stderr
    message = " ".join(result.stderr.split())  # rich wraps long lines
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def tree(folder: Path) -> dict[str, bytes | None]:
    """Every entry under ``folder`` with its bytes (None for a folder): to show nothing was touched."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes()) for p in sorted(folder.rglob("*"))}


def events(path: Path) -> list[dict]:
    """A run's train and eval records (what a lone run and a run beside a refused one must share)."""
    records = map(json.loads, path.read_text().splitlines())
    return [r for r in records if r["event"] in ("train", "eval", "eval_initial")]


class Holder:
    """A separate process holding the lock of ``folder`` (as ``what``) until :meth:`kill`."""

    def __init__(self, folder: Path, what: str = "the output folder"):
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), what], stdout=subprocess.PIPE,
                                     text=True, cwd=ROOT)
        assert self.proc.stdout.readline().strip() == "held"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)  # no clean-up: the lock file stays behind
        self.proc.wait()


@pytest.fixture
def holder():
    started: list[Holder] = []

    def start(folder: Path, what: str = "the output folder") -> Holder:
        started.append(Holder(folder, what))
        return started[-1]

    yield start
    for h in started:
        h.kill()


@pytest.fixture(scope="module")
def lone(tmp_path_factory):
    """A lone run of the micro study's G1_lm arm, seed 0: its output folder and its (warm) cache."""
    base = tmp_path_factory.mktemp("lone")
    r = cli("--out", base / "out", "--cache-dir", base / "cache", "--seed", "0")
    assert r.exit_code == 0, r.output
    return base / "out", base / "cache"


# --------------------------------------------------------------------------------------------------
# the lock


def test_a_second_process_is_refused_at_once_naming_the_holder(tmp_path, holder, monkeypatch):
    out = tmp_path / "out"
    h = holder(out)
    monkeypatch.setattr(study_module, "STUDY_LOCK_WAIT_S", 0.3)  # a study's own holds last seconds: it waits
    record = json.loads((out / LOCK_NAME).read_text())
    assert record["pid"] == h.pid and record["host"] == os.uname().nodename
    for extra in ([], ["--resume"], ["--overwrite"]):
        r = cli("--out", out, "--cache-dir", tmp_path / "cache", *extra)
        assert_user_error(r, f"the output folder {out} is in use by another specroute process (pid {h.pid} on "
                             f"host {record['host']}, started {record['started']}")
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing written beside the holder
    assert not (tmp_path / "cache").exists()  # refused before any work


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path, holder):
    out = tmp_path / "out"
    h = holder(out)
    h.kill()
    assert (out / LOCK_NAME).is_file()  # left behind by kill -9
    with hold_lock(out, "the output folder") as note:
        assert note is not None and f"left by a process that ended without releasing it (pid {h.pid}" in note
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert list(out.iterdir()) == []  # the lock file is removed
    # through the CLI: a killed holder's lock does not stop the next command (here refused for another reason)
    h = holder(out)
    (out / "notes.txt").write_text("mine")
    h.kill()
    r = cli("--out", out, "--overwrite")
    assert_user_error(r, "holds no study (no study.json)")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_an_abandoned_lock_file_is_cleared_and_a_held_one_kept(tmp_path, holder):
    live, dead = tmp_path / "live", tmp_path / "dead"
    h_live, h_dead = holder(live), holder(dead)
    h_dead.kill()
    clear_abandoned(live)
    clear_abandoned(dead)
    clear_abandoned(tmp_path / "never_locked")  # nothing to clear: no error
    assert json.loads((live / LOCK_NAME).read_text())["pid"] == h_live.pid  # still held: kept
    assert list(dead.iterdir()) == []


def test_two_concurrent_runs_one_refused_the_other_identical_to_a_lone_run(tmp_path, lone):
    lone_out, cache = lone
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "specroute.cli", *RUN_ARGS, "--seed", "0", "--out", str(out),
           "--cache-dir", str(cache)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)]
    metrics = out / "runs" / "G1_lm" / "seed0" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not metrics.is_file() and procs[0].poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(procs[0].pid, signal.SIGSTOP)  # the first is training (it holds the run): it stays so while
    try:                                   # the second starts, however fast a micro run now is
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT))
        second = procs[1].communicate(timeout=300)
    finally:
        os.kill(procs[0].pid, signal.SIGCONT)
    outputs = [procs[0].communicate(timeout=600), second]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 2], outputs
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    err = " ".join(outputs[loser][1].split())
    assert f"is in use by another specroute process (pid {procs[winner].pid} on host" in err
    assert "Traceback" not in err
    run = Path("runs") / "G1_lm" / "seed0" / "metrics.jsonl"
    assert events(out / run) == events(lone_out / run)  # no step written twice
    assert len(events(out / run)) == 1 + 12 + 3
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in lone_out.iterdir())  # no lock left


def test_two_studies_that_need_one_backbone_train_it_once(tmp_path, lone):
    """Two studies (different --out, one cache) started together: one trains the backbone, the other waits
    for it and reads the cache; the cached training is the one a lone study writes (no step twice)."""
    lone_out, lone_cache = lone
    cache = tmp_path / "cache"
    cmds = [[sys.executable, "-m", "specroute.cli", *RUN_ARGS, "--seed", "0", "--out", str(tmp_path / name),
             "--cache-dir", str(cache)] for name in ("a", "b")]
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT) for c in cmds]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    sources = sorted(json.loads((tmp_path / n / "summary.json").read_text())["backbone"]["source"] for n in "ab")
    assert sources == ["cache", "trained"]
    (trained,) = cache.glob("backbones/*/metrics.jsonl")
    (lone_trained,) = lone_cache.glob("backbones/*/metrics.jsonl")
    assert events(trained) == events(lone_trained)


def test_a_run_folder_held_by_another_process_is_refused(tmp_path, lone, holder, monkeypatch):
    _, cache = lone
    out = tmp_path / "out"
    folder = out / "runs" / "G1_lm" / "seed0"
    h = holder(folder, "the run folder")  # e.g. a worker of a killed study that has not ended yet
    (out / "study.json").write_text(json.dumps({"spec_sha256": spec_sha256(micro())}))
    monkeypatch.setattr("specroute.train.runs.RUN_LOCK_WAIT_S", 0.2)
    r = cli("--out", out, "--cache-dir", cache, "--seed", "0", "--resume")
    assert_user_error(r, f"the run folder {folder} is in use by another specroute process (pid {h.pid}")
    assert not (folder / "metrics.jsonl").exists()
    h.kill()
    r = cli("--out", out, "--cache-dir", cache, "--seed", "0", "--resume")  # the holder is gone: it runs
    assert r.exit_code == 0, r.output
    assert not list(out.rglob(LOCK_NAME))


def test_a_benchmark_into_a_folder_in_use_is_refused(tmp_path, holder):
    out = tmp_path / "bench"
    h = holder(out)
    r = runner.invoke(app, ["bench", str(SPECS / "a3.yaml"), "--profile", "smoke", "--quick", "--out", str(out)])
    assert_user_error(r, f"the output folder {out} is in use by another specroute process (pid {h.pid}")
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]


# --------------------------------------------------------------------------------------------------
# the output folder, --overwrite and filesystem failures: one row per case


def _user_files(out: Path) -> None:
    (out / "plots").mkdir(parents=True)
    (out / "plots" / "my_figure.png").write_bytes(b"\x89PNG mine")
    (out / "report.md").write_text("# my notes\n")


def _study_plus(*files: str):
    def make(out: Path) -> None:
        (out / "runs" / "G1_lm" / "seed0" / "ckpt" / "step_000005").mkdir(parents=True)
        (out / "runs" / "G1_lm" / "seed0" / "ckpt" / "latest").write_text("step_000005")
        (out / "runs" / "G1_lm" / "seed0" / "metrics.jsonl").write_text("{}\n")
        (out / "plots").mkdir()
        (out / "plots" / "lm_curves.png").write_bytes(b"png")
        (out / "study.json").write_text(json.dumps({"spec_sha256": "0" * 64}))
        for name in files:
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_text("mine")
    return make


def _raising(code: int):
    def fail(*a, **k):
        raise OSError(code, os.strerror(code))
    return fail


def _fail_writes_under(monkeypatch, folder: Path, code: int) -> None:
    """Make creating any file or folder under ``folder`` fail with ``code`` (as a read-only or full disk)."""
    for name in ("mkstemp", "mkdtemp"):
        real = getattr(tempfile, name)

        def fake(*a, _real=real, **k):
            if str(k.get("dir", "")).startswith(str(folder)):
                raise OSError(code, os.strerror(code))
            return _real(*a, **k)

        monkeypatch.setattr(f"specroute.store.tempfile.{name}", fake)


def _disk_full_in_shards(monkeypatch, out: Path, cache: Path) -> None:
    class Full:
        def __init__(self, *a, **k):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("specroute.data.shards.open", Full, raising=False)


def _disk_full_at_checkpoint(monkeypatch, out: Path, cache: Path) -> None:
    def full(obj, f, *a, **k):  # as torch.save into a file on a full disk: a RuntimeError raised on the OSError
        f.write(b"half a checkpoint")
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 768 vs 662") from None

    monkeypatch.setattr(torch, "save", full)


CASES = [
    # id, prepare(out) or None, extra args ({tmp}: the test's folder), environment(monkeypatch, out, cache),
    # message fragments, and what `out` holds afterwards: True, exactly what it held; False, nothing (it does
    # not exist); a set of names, the start of this study, which the same command continues
    ("overwrite-a-folder-without-a-study", _user_files, ["--overwrite"], None,
     ["holds no study (no study.json)", "plots", "report.md", "nothing was changed"], True),
    ("overwrite-a-study-with-a-user-plot", _study_plus("plots/my_figure.png"), ["--overwrite"], None,
     ["files that are not a study's (plots/my_figure.png)", "nothing was changed"], True),
    ("overwrite-a-study-with-a-user-file-in-a-run", _study_plus("runs/G1_lm/seed0/notes.txt"), ["--overwrite"],
     None, ["files that are not a study's (runs/G1_lm/seed0/notes.txt)"], True),
    ("overwrite-a-study-with-a-user-file-in-ckpt", _study_plus("runs/G1_lm/seed0/ckpt/mine.pt"), ["--overwrite"],
     None, ["(runs/G1_lm/seed0/ckpt/mine.pt)"], True),
    ("no-flag-on-a-folder-with-user-files", _user_files, [], None, ["is not empty", "--overwrite"], True),
    ("resume-a-folder-without-a-study", _user_files, ["--resume"], None, ["holds no study"], True),
    ("out-is-a-file", None, ["--out", "{tmp}/file"], None, ["exists and is not a folder"], False),
    ("out-read-only", None, [], lambda mp, out, cache: mp.setattr("pathlib.Path.mkdir", _raising(errno.EROFS)),
     ["cannot create the folder", "/out: the filesystem is read-only (Read-only file system)"], False),
    ("out-no-permission", None, [], lambda mp, out, cache: mp.setattr("filelock.UnixFileLock.acquire",
                                                                       _raising(errno.EACCES)),
     ["cannot lock", "/out/.specroute.lock: permission denied"], False),
    ("cache-read-only", None, [], lambda mp, out, cache: _fail_writes_under(mp, cache, errno.EROFS),
     ["cannot write", "the filesystem is read-only", "--cache-dir"], False),
    ("disk-full-while-tokenising", None, [], _disk_full_in_shards,
     ["cannot write the token cache in", "/tokens: the disk is full (No space left on device)"], False),
    ("disk-full-at-a-backbone-checkpoint", None, [], _disk_full_at_checkpoint,
     ["/ckpt/step_000010: the disk is full"], {"study.json", "sessions.json"}),
    ("missing-data-file", None, ["--set", "data={kind: local, paths: [missing.jsonl]}"], None,
     ["data file not found", "missing.jsonl"], False),
]


@pytest.mark.parametrize(("prepare", "args", "env", "fragments", "kept"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_output_folder_or_filesystem_exits_2_and_loses_nothing(tmp_path, monkeypatch, prepare, args, env,
                                                                   fragments, kept):
    out, cache = tmp_path / "out", tmp_path / "cache"
    if prepare:
        out.mkdir()
        prepare(out)
    (tmp_path / "file").write_text("x")
    before = tree(out)
    if env:
        env(monkeypatch, out, cache)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    r = cli(*(args if "--out" in args else ["--out", out, *args]), "--cache-dir", cache)
    monkeypatch.undo()
    assert_user_error(r, *fragments)
    if isinstance(kept, set):
        assert set(tree(out)) == kept
        assert prepare_out(out, spec_sha256(micro()), resume=False, overwrite=False) is None  # not blocked
    else:
        assert tree(out) == (before if kept else {})  # untouched; or (a failed start) nothing left behind
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp") or p.name == LOCK_NAME]


def test_a_full_disk_while_logging_metrics_names_the_log(tmp_path):
    from specroute.train.trainer import MetricsSink

    sink = MetricsSink(tmp_path / "run" / "metrics.jsonl")

    class Full:
        def write(self, *data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        flush = close = write

    real, sink._f = sink._f, Full()
    with pytest.raises(UserError, match=f"cannot write {tmp_path / 'run' / 'metrics.jsonl'}: the disk is full"):
        sink.write({"event": "train", "step": 1})
    with pytest.raises(UserError, match="the disk is full"):
        sink.close()
    real.close()


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc (Linux)")
def test_out_under_proc(tmp_path):
    r = cli("--out", "/proc/specroute-out", "--cache-dir", tmp_path / "cache")
    assert_user_error(r, "cannot create the folder /proc/specroute-out")


def test_a_failed_start_does_not_block_the_same_command(tmp_path):
    """A folder holding only what the start of the same study writes (study.json, sessions.json) is
    continued without --resume; another study's is refused."""
    resolved = micro()
    out = tmp_path / "out"
    out.mkdir()
    (out / "study.json").write_text(json.dumps({"spec_sha256": spec_sha256(resolved)}))
    assert prepare_out(out, spec_sha256(resolved), resume=False, overwrite=False) is None
    (out / "sessions.json").write_text(json.dumps([{"started": "x", "wall_s": 3.0, "ended": "failed"}]))
    assert prepare_out(out, spec_sha256(resolved), resume=False, overwrite=False) is None
    assert sorted(p.name for p in out.iterdir()) == ["sessions.json", "study.json"]  # kept: its time counts
    (out / "study.json").write_text(json.dumps({"spec_sha256": "0" * 64}))  # another study's: refused
    with pytest.raises(UserError, match="not empty"):
        prepare_out(out, spec_sha256(resolved), resume=False, overwrite=False)


def test_overwrite_deletes_a_study_and_keeps_the_lock(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    _study_plus()(out)
    (out / "runs" / "G1_lm" / "seed0" / ".metrics.jsonl.abc.tmp").write_text("left by a kill")
    with hold_lock(out, "the output folder"):
        assert prepare_out(out, "1" * 64, resume=False, overwrite=True) is None
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]
    assert list(out.iterdir()) == []


def test_overwrite_waits_for_no_run_held_by_another_process(tmp_path, holder, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    _study_plus()(out)
    h = holder(out / "runs" / "G1_lm" / "seed0", "the run folder")
    monkeypatch.setattr(study_module, "RUN_LOCK_WAIT_S", 0.2)
    before = tree(out)
    with pytest.raises(UserError, match=f"the run folder .* is in use by another specroute process \\(pid {h.pid}"):
        prepare_out(out, "1" * 64, resume=False, overwrite=True)
    assert tree(out) == before
    h.kill()  # its lock file stays; taken over, then deleted with the study
    assert prepare_out(out, "1" * 64, resume=False, overwrite=True) is None
    assert list(out.iterdir()) == []


def test_study_layout_names_every_plot_the_report_writes():
    from specroute.report.plots import PLOTS

    assert set(PLOTS.values()) <= set(study_module.study_layout()["plots"])


def test_overwrite_of_a_selection_never_deletes_finished_runs_outside_it(tmp_path):
    """--overwrite replaces the whole folder: with --arm / --seed it is refused while the folder holds finished
    runs the selection leaves out, and nothing is touched."""
    out = tmp_path / "out"
    (out / "runs" / "G3_lm" / "seed1").mkdir(parents=True)
    (out / "runs" / "G3_lm" / "seed1" / "result.json").write_text("{}")
    (out / "study.json").write_text('{"spec_sha256": "x"}')
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    r = cli("--out", out, "--seed", "0", "--overwrite", "--cache-dir", tmp_path / "cache")
    assert r.exit_code == 2 and "G3_lm seed 1" in r.output and "nothing was changed" in r.output, r.output
    assert "Traceback" not in r.output
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
