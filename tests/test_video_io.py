"""video_io's atomic writer: the target appears whole or not at all, and errors stay visible."""

import json

import numpy as np
import pytest

from xattn_video import video_io
from xattn_video.video_io import atomic_write, write_json, write_npy, write_text


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


def test_atomic_write_renames_on_success(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    with atomic_write(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".txt" and tmp != target
        tmp.write_text("hello")
        assert not target.exists()  # invisible until the block succeeds
    assert target.read_text() == "hello" and _leftovers(target.parent) == []


def test_atomic_write_error_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a.json"
    write_json({"v": 1}, target)
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_write(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk on fire")
    assert target.read_text() == '{\n "v": 1\n}' and _leftovers(tmp_path) == []


def test_cleanup_failure_does_not_hide_the_original_error(tmp_path, monkeypatch):
    real_unlink = type(tmp_path).unlink

    def failing_unlink(self, missing_ok=False):
        raise PermissionError("cannot remove")

    monkeypatch.setattr(type(tmp_path), "unlink", failing_unlink)
    with pytest.raises(ValueError, match="the real problem"):
        with atomic_write(tmp_path / "b.txt") as tmp:
            tmp.write_text("x")
            raise ValueError("the real problem")
    monkeypatch.setattr(type(tmp_path), "unlink", real_unlink)


def test_writers_round_trip(tmp_path):
    arr = np.arange(6, dtype=np.float16).reshape(2, 3)
    np.testing.assert_array_equal(np.load(write_npy(arr, tmp_path / "f.npy")), arr)
    assert write_text("τ ∞", tmp_path / "t.md").read_text(encoding="utf-8") == "τ ∞"
    assert _leftovers(tmp_path) == []


def test_write_mp4_failure_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(video_io, "_ffmpeg_available", lambda: False)

    def broken(frames, path, fps):
        path.write_bytes(b"partial")
        raise OSError("encoder crashed")

    monkeypatch.setattr(video_io, "_write_mp4_opencv", broken)
    with pytest.raises(OSError, match="encoder crashed"):
        video_io.write_mp4(np.zeros((2, 8, 8, 3), np.float32), tmp_path / "v.mp4", fps=8)
    assert list(tmp_path.iterdir()) == []


def test_write_report_writes_markdown_and_json_side_by_side(tmp_path):
    from xattn_video.video_io import write_report

    md = write_report("# table\n", {"rows": [1, 2]}, tmp_path / "new" / "dir", "result-x")
    assert md == tmp_path / "new" / "dir" / "result-x.md" and md.read_text() == "# table\n"
    assert json.loads((md.parent / "result-x.json").read_text()) == {"rows": [1, 2]}
    assert sorted(p.name for p in md.parent.iterdir()) == ["result-x.json", "result-x.md"]  # no temp files left
