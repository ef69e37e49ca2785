"""Atomic writes: what a run or report writes gets the permissions an ordinary write would give it."""

from __future__ import annotations

import os
import stat

import pytest

from specroute.store import atomic_write_json, atomic_write_text, temp_dir_beside


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
