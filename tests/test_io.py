"""nasproxy.io: atomic writes leave the old file or the new one, never a part, and output
locations are refused before any work when they cannot be written."""

from __future__ import annotations

import json
import os
import stat

import pytest

from nasproxy.errors import NasproxyError
from nasproxy.io import (
    atomic_write_json,
    atomic_writer,
    check_output_dir,
    check_output_file,
    private_to_default,
    umask,
)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "deep" / "table.json"
    atomic_write_json(target, {"b": 1, "a": [2]})
    assert target.read_text() == '{\n  "a": [\n    2\n  ],\n  "b": 1\n}\n'
    with pytest.raises(RuntimeError), atomic_writer(target) as fh:
        fh.write(b"half of a new ")
        raise RuntimeError("killed while writing")
    assert json.loads(target.read_text()) == {"a": [2], "b": 1}
    assert os.listdir(target.parent) == ["table.json"]


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_files_and_folders_get_the_modes_the_umask_gives(tmp_path, mask):
    old = os.umask(mask)
    try:
        assert umask() == mask
        path = atomic_write_json(tmp_path / "f.json", {})
        folder = tmp_path / "made"
        folder.mkdir(mode=0o700)
        private_to_default(folder)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~mask


def test_unwritable_outputs_are_refused_before_the_work(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    a_folder = tmp_path / "folder"
    a_folder.mkdir()
    assert check_output_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checking creates nothing
    assert check_output_file(a_folder / "out.json") == a_folder / "out.json"
    with pytest.raises(NasproxyError, match="is a file, not a folder"):
        check_output_dir(a_file)
    with pytest.raises(NasproxyError, match="is a file, not a folder"):
        check_output_dir(a_file / "below")
    with pytest.raises(NasproxyError, match="is a folder, not a file"):
        check_output_file(a_folder)
    if os.geteuid() != 0:  # root writes anywhere
        a_folder.chmod(0o500)
        try:
            with pytest.raises(NasproxyError, match="cannot write"):
                check_output_file(a_folder / "out.json")
        finally:
            a_folder.chmod(0o700)
