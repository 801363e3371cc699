"""Video and JSON files, written under a temporary name and renamed, so nothing is left half-written."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")


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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        if _ffmpeg_available():
            import imageio.v2 as imageio

            with imageio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=8,
                                    macro_block_size=1, pixelformat="yuv420p") as writer:
                for frame in to_uint8(frames):
                    writer.append_data(frame)
        else:
            _write_mp4_opencv(to_uint8(frames), tmp, fps)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json(data: Any, path: str | Path) -> Path:
    return write_text(json.dumps(data, indent=1, default=str), path)
