"""``flicker``: VBench's *temporal flickering* formula, computed in-house on the frames (no model, no VBench)."""

from __future__ import annotations

import numpy as np

from ...video_io import to_uint8
from .registry import VideoItem, check_batch

__all__ = ["FlickerScorer", "frames_to_uint8", "make_flicker", "temporal_flickering_score"]


def frames_to_uint8(frames: np.ndarray) -> np.ndarray:
    """[T, H, W, 3] float in [0, 1] -> uint8 as written to an mp4: round(x * 255), clipped to [0, 255].

    uint8 input is returned unchanged.
    """
    if frames.dtype != np.uint8 and not np.issubdtype(frames.dtype, np.floating):
        raise ValueError(f"frames must be float in [0, 1] or uint8, got dtype {frames.dtype}")
    return to_uint8(frames)


def temporal_flickering_score(frames: np.ndarray) -> float:
    """VBench temporal flickering of one video (unitless, 1.0 = no change between frames, higher is better).

    ``frames``: [T, H, W, 3] float in [0, 1] (quantized like an mp4 frame, see :func:`frames_to_uint8`) or uint8;
    T >= 2. Score = (255 - mean over consecutive frame pairs of the mean absolute pixel difference) / 255.

    Same formula as VBench ``vbench/temporal_flickering.py`` (``calculate_mae`` / ``mae_seq`` / ``cal_score``,
    github.com/Vchitect/VBench): per pair, the mean over all pixels and channels of |f[i] - f[i+1]| in float32; then the
    mean of these pair values; then (255 - mean) / 255. VBench reads the mp4 with OpenCV (BGR order, after lossy
    encoding); channel order does not change the formula, but scores on raw frames differ from scores on an encoded
    mp4 by the encoding error. VBench's dimension score is the mean of these per-video scores (its leaderboard later
    min-max normalizes the dimension with min 0.6293 / max 1.0, scripts/constant.py; not applied here).
    """
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [T, H, W, 3], got shape {frames.shape}")
    if frames.shape[0] < 2:
        raise ValueError(f"temporal flickering needs at least 2 frames, got shape {frames.shape}")
    pixels = frames_to_uint8(frames)
    pair_mae = np.empty(pixels.shape[0] - 1, dtype=np.float32)
    for i in range(pixels.shape[0] - 1):
        a = pixels[i].astype(np.float32)
        b = pixels[i + 1].astype(np.float32)
        pair_mae[i] = np.mean(np.abs(a - b))
    return (255.0 - float(np.mean(pair_mae))) / 255.0


class FlickerScorer:
    """``flicker``: VBench's temporal flickering on each video's raw frames; sub-metric ``"flicker"``."""

    name = "flicker"
    reads = "frames"  # the float frames, quantized to 8 bits like an mp4 frame but without the encoding error

    def score(self, videos: list[VideoItem], prompts: list[str]) -> dict[str, list[float]]:
        check_batch(videos, prompts)
        return {"flicker": [temporal_flickering_score(item.frames) for item in videos]}


def make_flicker(args: list[str]) -> FlickerScorer:
    """Factory for ``flicker`` (it takes no arguments)."""
    if args:
        raise ValueError(f"the flicker scorer takes no arguments, got {args}")
    return FlickerScorer()
