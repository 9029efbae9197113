from __future__ import annotations

import pytest

from hf_starcoder_ft.io_utils import OutputExistsError, atomic_output_dir, atomic_write


def test_atomic_output_dir_commits_only_on_success(tmp_path):
    out = tmp_path / "model"
    with pytest.raises(RuntimeError):
        with atomic_output_dir(out) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("crash")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []
    with atomic_output_dir(out) as tmp:
        (tmp / "full.bin").write_bytes(b"y")
    assert (out / "full.bin").read_bytes() == b"y"
    with pytest.raises(OutputExistsError, match="--overwrite"):
        with atomic_output_dir(out):
            pass
    with atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / "new.bin").write_bytes(b"z")
    assert sorted(p.name for p in out.iterdir()) == ["new.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "data.jsonl"
    target.write_text("old")
    with pytest.raises(ValueError):
        with atomic_write(target) as tmp:
            tmp.write_text("partial")
            raise ValueError
    assert target.read_text() == "old"
    with atomic_write(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl"]


def test_outputs_get_ordinary_permissions(tmp_path):
    import os
    import stat

    umask = os.umask(0o022)
    try:
        with atomic_output_dir(tmp_path / "d") as tmp:
            (tmp / "f").write_text("x")
        with atomic_write(tmp_path / "file.txt") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "file.txt").stat().st_mode) == 0o644
