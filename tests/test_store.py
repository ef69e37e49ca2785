"""Atomic writes (with the permissions an ordinary write would give), filesystem failures as UserErrors,
locks and the output-folder rule."""

from __future__ import annotations

import errno
import json
import os
import stat

import pytest

from specroute.locks import hold_lock
from specroute.store import (ANY, FILE, LOCK_NAME, UserError, atomic_write_json, atomic_write_text,
                             atomic_write_with, check_out_dir, clear_out_dir, foreign_entries, fs_error,
                             make_dir, replace_dir, temp_dir_beside, writing)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_written_files_and_folders_follow_the_umask(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    atomic_write_text(tmp_path / "report.md", "# r\n")
    atomic_write_json(tmp_path / "sub" / "summary.json", {"a": 1})
    folder = temp_dir_beside(tmp_path / "backbone")
    for path in (tmp_path / "report.md", tmp_path / "sub" / "summary.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path  # not mkstemp's 0600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask  # not mkdtemp's 0700


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "w.safetensors"
    atomic_write_with(target, lambda tmp: tmp.write_bytes(b"old"))

    def crash(tmp):
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write_with(target, crash)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]


def test_replace_dir_swaps_a_whole_folder(tmp_path):
    target = tmp_path / "out"
    for content in ("first", "second"):
        tmp = temp_dir_beside(target)
        (tmp / "f.txt").write_text(content)
        replace_dir(tmp, target)
    assert (target / "f.txt").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_the_output_folder_rule(tmp_path):
    owned = ("summary.json", "runs")
    out = tmp_path / "out"
    assert check_out_dir(out, owned, "a study", overwrite=False) == []
    out.mkdir()
    (out / "summary.json").write_text("{}")
    with pytest.raises(UserError, match="--overwrite"):
        check_out_dir(out, owned, "a study", overwrite=False)
    assert check_out_dir(out, owned, "a study", overwrite=False, resume=True) == ["summary.json"]
    assert check_out_dir(out, owned, "a study", overwrite=True) == ["summary.json"]
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a study"):
        check_out_dir(out, owned, "a study", overwrite=True)
    clear_out_dir(out, owned)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        check_out_dir(tmp_path / "file", owned, "a study", overwrite=True)


def test_a_study_layout_is_checked_folder_by_folder(tmp_path):
    layout = {"study.json": FILE, "plots": {"a.png": FILE}, "runs": {"*": {"seed[0-9]*": {"m.jsonl": FILE,
                                                                                      "ckpt": ANY}}}}
    out = tmp_path / "out"
    for name in ("study.json", "plots/a.png", "runs/G1/seed0/m.jsonl", "runs/G1/seed0/ckpt/anything",
                 "runs/G1/seed0/.m.jsonl.x1.tmp", "plots/.a.png.x2.tmp", LOCK_NAME):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("x")
    assert foreign_entries(out, layout) == []  # temporaries and the lock belong to every folder
    for name in ("plots/mine.png", "runs/G1/notes.txt", "runs/G1/seed0/mine.pt", "notes.txt"):
        (out / name).write_text("mine")
    (out / "runs" / "G1" / "seed1").write_text("a file where a folder belongs")
    (out / "plots" / "link.png").symlink_to(out / "notes.txt")
    assert foreign_entries(out, layout) == ["notes.txt", "plots/link.png", "plots/mine.png", "runs/G1/notes.txt",
                                            "runs/G1/seed0/mine.pt", "runs/G1/seed1"]
    with pytest.raises(UserError, match=r"not a study's \(notes.txt, plots/link.png, plots/mine.png, "
                                        r"runs/G1/notes.txt, runs/G1/seed0/mine.pt and 1 more\)"):
        check_out_dir(out, layout, "a study", overwrite=True, marker="study.json")


def test_overwrite_needs_the_marker_and_the_lock_file_does_not_count(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).write_text("{}")
    assert check_out_dir(out, ("summary.json",), "a study", overwrite=False) == []  # only a lock: empty
    (out / "report.md").write_text("mine")
    with pytest.raises(UserError, match=r"holds no study \(no study.json\)"):
        check_out_dir(out, {"report.md": FILE, "study.json": FILE}, "a study", overwrite=True, marker="study.json")
    (out / "study.json").write_text("{}")
    assert check_out_dir(out, {"report.md": FILE, "study.json": FILE}, "a study", overwrite=True,
                         marker="study.json") == ["report.md", "study.json"]
    clear_out_dir(out, {"report.md": FILE, "study.json": FILE})
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]


def _raised_while_handling(first: BaseException, second: BaseException) -> BaseException:
    try:
        try:
            raise first
        except type(first):
            raise second
    except type(second) as e:
        return e


@pytest.mark.parametrize(("error", "words"), [
    (OSError(errno.ENOSPC, "No space left on device"), "the disk is full (No space left on device); free some space"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), "the disk quota is used up"),
    (OSError(errno.EROFS, "Read-only file system"), "the filesystem is read-only"),
    (PermissionError(errno.EACCES, "Permission denied"), "permission denied"),
    (OSError(errno.EPERM, "Operation not permitted"), "operation not permitted"),
    (RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"), "the disk is full"),
    (_raised_while_handling(OSError(errno.ENOSPC, "No space left on device"),
                            RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 768 vs 662")),
     "the disk is full"),
], ids=["ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "safetensors-ENOSPC", "torch-save-ENOSPC"])
def test_filesystem_failures_the_user_can_fix_become_user_errors(tmp_path, error, words):
    err = fs_error(error, tmp_path / "f.bin")
    assert isinstance(err, UserError) and f"cannot write {tmp_path / 'f.bin'}: {words}" in str(err)


def test_other_failures_stay_what_they_are(tmp_path):
    for error in (OSError(errno.EBADF, "Bad file descriptor"), OSError("no errno"), ValueError("a bug")):
        assert fs_error(error, tmp_path) is None
        with pytest.raises(type(error)):
            with writing(tmp_path):
                raise error


def test_a_write_to_a_full_disk_names_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "summary.json"
    atomic_write_text(target, "old")

    def full(tmp):
        tmp.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(UserError, match=f"cannot write {target}: the disk is full"):
        atomic_write_with(target, full)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_make_dir_reports_what_is_in_the_way_and_what_it_made(tmp_path):
    assert make_dir(tmp_path / "a" / "b") == [tmp_path / "a", tmp_path / "a" / "b"]
    assert make_dir(tmp_path / "a" / "b") == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="file exists and is not a folder"):
        make_dir(tmp_path / "file" / "sub")


def test_a_lock_is_exclusive_even_within_one_process_and_leaves_nothing(tmp_path):
    folder = tmp_path / "new" / "out"
    with hold_lock(folder, "the output folder") as note:
        assert note is None
        record = json.loads((folder / LOCK_NAME).read_text())
        assert record["pid"] == os.getpid() and record["what"] == "the output folder"
        with pytest.raises(UserError, match=f"the output folder {folder} is in use by another specroute process "
                                            f"\\(pid {os.getpid()} on host "):
            with hold_lock(folder, "the output folder"):
                pass
        assert (folder / LOCK_NAME).is_file()  # the refused one did not remove the holder's lock
    assert not (tmp_path / "new").exists()  # the lock file and the folders it made are gone
