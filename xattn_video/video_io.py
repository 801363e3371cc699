"""Every file the package writes (videos, frames, JSON, text, plots) goes through ``atomic_write``: written under a
temporary name in the target folder and renamed, so a reader never sees a half-written file and an error leaves none.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


VIDEO_SUFFIXES = (".mp4",)  # what write_mp4 writes


class OutputPathError(ValueError):
    """An output path that cannot be written; the message says why (one line)."""


def _temp_name(path: Path) -> Path:
    # Same folder (rename stays atomic), same suffix (writers that pick a format by suffix still work).
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds it is renamed to ``path``.

    On error the temporary file is removed and the original exception propagates (a failure to remove it never
    replaces that exception). Creates the parent folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # pragma: no cover - keep the original error (or success) visible
            pass


def check_output_path(path: str | Path, suffixes: tuple[str, ...] = VIDEO_SUFFIXES) -> Path:
    """Check, before any work, that ``path`` can be written: a supported suffix, not a directory, and a place
    where files can be created (the nearest existing folder is probed with a temporary file).

    Raises ``OutputPathError`` with one line naming the problem.
    """
    trailing_sep = str(path).endswith(("/", os.sep))
    path = Path(path).expanduser()
    if path.is_dir() or trailing_sep:
        raise OutputPathError(f"{path} is a directory; give a file name ending in {' or '.join(suffixes)}")
    if path.suffix.lower() not in suffixes:
        got = f"'{path.suffix}'" if path.suffix else "no extension"
        raise OutputPathError(f"{path}: the video writer supports {' or '.join(suffixes)} files, got {got}")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise OutputPathError(f"cannot write {path}: {folder} is not a directory")
    probe = folder / f".{path.stem}.probe-{os.getpid()}"
    try:
        probe.touch(exist_ok=False)
    except OSError as exc:
        raise OutputPathError(f"cannot write {path}: {exc.strerror or exc} ({folder})") from None
    try:
        probe.unlink()
    except OSError:
        pass
    return path


def check_out(out: str | Path, option: str = "--out") -> Path:
    """``out`` (an mp4) and its JSON run record beside it can be written; ``OutputPathError`` naming ``option``
    if not. An empty name is refused as such (``Path("")`` would be the current folder)."""
    if not str(out).strip():
        raise OutputPathError(f"{option} is empty; give a file name ending in {' or '.join(VIDEO_SUFFIXES)}")
    try:
        path = check_output_path(out)
        check_output_path(path.with_suffix(".json"), (".json",))
    except OutputPathError as exc:
        raise OutputPathError(f"{option}: {exc}") from None
    return path


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """float [T, H, W, 3] in [0, 1] → uint8, rounded as a video encoder would see it (uint8 passes through)."""
    if frames.dtype == np.uint8:
        return frames
    return np.clip(np.rint(np.asarray(frames, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


def _ffmpeg_available() -> bool:
    try:
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
    except Exception:  # not installed, or its binary is missing
        return False
    return True


def write_mp4(frames: np.ndarray, path: str | Path, fps: int) -> Path:
    """Write float frames [T, H, W, 3] in [0, 1] as an H.264 mp4 (imageio + ffmpeg).

    Without imageio-ffmpeg (a dependency, but absent from some minimal images) OpenCV's mp4v writer is used.
    """
    path = Path(path)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [T, H, W, 3], got shape {frames.shape}")
    with atomic_write(path) as tmp:
        try:
            tmp.touch()  # fails here, clearly, in a read-only place (ffmpeg would only log it and write nothing)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot write {path}: {exc.strerror}") from None
        if _ffmpeg_available():
            import imageio.v2 as imageio

            with imageio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=8,
                                    macro_block_size=1, pixelformat="yuv420p") as writer:
                for frame in frames:  # frame by frame: no float64 copy of the whole video
                    writer.append_data(to_uint8(frame))
        else:
            _write_mp4_opencv(to_uint8(frames), tmp, fps)
    return path


def _write_mp4_opencv(frames: np.ndarray, path: Path, fps: int) -> None:
    try:
        import cv2
    except ImportError:
        raise RuntimeError("writing mp4 needs imageio-ffmpeg (pip install imageio-ffmpeg) or OpenCV") from None
    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    try:
        for frame in frames:
            writer.write(frame[:, :, ::-1])  # OpenCV wants BGR
    finally:
        writer.release()


def read_video(path: str | Path) -> np.ndarray:
    """uint8 frames [T, H, W, 3] of a video file."""
    import imageio.v2 as imageio

    with imageio.get_reader(path, format="FFMPEG") as reader:
        return np.stack([np.asarray(f) for f in reader])


def write_text(text: str, path: str | Path) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    path = Path(path)
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_json(data: Any, path: str | Path) -> Path:
    """Write ``data`` as indented JSON atomically (objects JSON lacks are written with ``str``)."""
    return write_text(json.dumps(data, indent=1, default=str), path)


def write_report(text: str, record: Any, out_dir: str | Path, stem: str) -> Path:
    """A result as ``<stem>.md`` (``text``) and ``<stem>.json`` (``record``) in ``out_dir`` (made if missing), each
    written atomically; returns the ``.md`` path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(record, out_dir / f"{stem}.json")
    return write_text(text, out_dir / f"{stem}.md")


def write_npy(array: np.ndarray, path: str | Path) -> Path:
    """Write ``array`` as a ``.npy`` file atomically (``path`` should end in ``.npy``)."""
    path = Path(path)
    with atomic_write(path) as tmp:
        np.save(tmp, array)
    return path


def write_figure(fig: Any, path: str | Path, **savefig_kwargs: Any) -> Path:
    """Save a matplotlib figure atomically (format from ``path``'s suffix) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_write(path) as tmp:
            fig.savefig(tmp, **savefig_kwargs)
    finally:
        plt.close(fig)
    return path
