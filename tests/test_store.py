"""Atomic writes (with the permissions an ordinary write would give) and the output-folder rule."""

from __future__ import annotations

import os
import stat

import pytest

from specroute.store import (UserError, atomic_write_json, atomic_write_text, atomic_write_with, check_out_dir,
                             clear_out_dir, replace_dir, temp_dir_beside)


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
