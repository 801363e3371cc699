"""Full-reference video quality: a video against a reference video of the same shape.

Videos are numpy float arrays ``[T, H, W, C]`` with ``C == 3`` and values in ``[0, 1]`` (raw frames as the
pipeline produced them, never decoded from an mp4). All metrics come from torchmetrics:

* :func:`psnr`  - dB over the whole video (one MSE over every pixel of every frame); ``math.inf`` if identical.
* :func:`ssim`  - mean over frames of the per-frame SSIM (Gaussian window 11, sigma 1.5); 1.0 if identical.
* :func:`lpips` - mean over frames of LPIPS (AlexNet); needs torchvision and AlexNet's ImageNet checkpoint on
  disk, otherwise :class:`~xattn_video.eval.errors.Unavailable` is raised (nothing is ever downloaded).

:func:`compare_videos` runs several of them and reports unavailable ones as skipped instead of failing.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from .errors import Unavailable
from .extras import install_hint

__all__ = [
    "KNOWN_METRICS",
    "MetricUnavailable",
    "Unavailable",
    "compare_videos",
    "lpips",
    "psnr",
    "ssim",
]

# torchmetrics' SSIM defaults; the Gaussian window size follows from sigma: int(3.5 * sigma + 0.5) * 2 + 1 = 11.
_SSIM_SIGMA = 1.5
_SSIM_KERNEL = 11
# Frames per torchmetrics call for SSIM / LPIPS, to bound memory on long high-resolution videos.
_FRAME_CHUNK = 8

# torchvision's AlexNet ImageNet weights (AlexNet_Weights.IMAGENET1K_V1), which torchmetrics' LPIPS backbone loads
# through the torch hub cache; LPIPS' own linear heads ship inside torchmetrics (lpips_models/alex.pth).
ALEXNET_CHECKPOINT = "alexnet-owt-7be5be79.pth"
ALEXNET_URL = f"https://download.pytorch.org/models/{ALEXNET_CHECKPOINT}"


MetricUnavailable = Unavailable  # the name this module used before the eval package had one error class


# --------------------------------------------------------------------------------------------------- validation
def _check_pair(video: np.ndarray, reference: np.ndarray) -> None:
    """Raise ValueError unless both are float arrays [T, H, W, 3] of the same shape."""
    for label, arr in (("video", video), ("reference", reference)):
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"{label} must be a numpy array [T, H, W, 3], got {type(arr).__name__}")
        if arr.ndim != 4:
            raise ValueError(f"{label} must be 4-D [T, H, W, 3], got shape {arr.shape}")
        if arr.shape[-1] != 3:
            raise ValueError(f"{label} must have 3 channels last [T, H, W, 3], got shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"{label} must be floating point with values in [0, 1], got dtype {arr.dtype}")
        if arr.size == 0:
            raise ValueError(f"{label} is empty, shape {arr.shape}")
    if video.shape != reference.shape:
        raise ValueError(f"video and reference shapes differ: video {video.shape} vs reference {reference.shape}")


def _to_tchw(frames: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """[T, H, W, C] numpy -> [T, C, H, W] torch tensor of ``dtype``."""
    return torch.from_numpy(np.ascontiguousarray(frames)).to(dtype).permute(0, 3, 1, 2).contiguous()


# --------------------------------------------------------------------------------------------------- PSNR / SSIM
def psnr(video: np.ndarray, reference: np.ndarray, data_range: float = 1.0) -> float:
    """PSNR in dB of ``video`` against ``reference`` (both [T, H, W, 3] floats in [0, data_range]).

    One MSE over all pixels of all frames (not a mean of per-frame PSNRs); ``math.inf`` when identical.
    """
    from torchmetrics.functional.image import peak_signal_noise_ratio

    _check_pair(video, reference)
    if not data_range > 0:
        raise ValueError(f"data_range must be > 0, got {data_range}")
    if np.array_equal(video, reference):
        return math.inf
    # float64 so that small errors are not lost to float32 rounding in the squared-error sum.
    value = peak_signal_noise_ratio(
        _to_tchw(video, torch.float64), _to_tchw(reference, torch.float64), data_range=float(data_range)
    )
    return float(value)


def _ssim_window(height: int, width: int) -> tuple[int, float]:
    """Gaussian window (odd size, sigma) for SSIM: the default 11 / 1.5, shrunk to fit frames smaller than 11.

    torchmetrics derives the Gaussian window size from sigma (``int(3.5 * sigma + 0.5) * 2 + 1``), so a smaller
    window is obtained by scaling sigma with it (sigma = 1.5 * k / 11), which keeps the same shape of kernel.
    """
    side = min(height, width)
    if side < 3:
        raise ValueError(f"SSIM needs frames of at least 3x3 pixels, got {height}x{width}")
    size = min(_SSIM_KERNEL, side if side % 2 == 1 else side - 1)
    sigma = _SSIM_SIGMA * size / _SSIM_KERNEL
    if int(3.5 * sigma + 0.5) * 2 + 1 != size:  # pragma: no cover - holds for every odd size 3..11
        raise AssertionError(f"SSIM sigma {sigma} does not give window {size}")
    return size, sigma


def ssim(video: np.ndarray, reference: np.ndarray, data_range: float = 1.0) -> float:
    """Mean over frames of SSIM (no unit, at most 1) of ``video`` against ``reference`` ([T, H, W, 3] floats).

    torchmetrics' ``structural_similarity_index_measure`` per frame (frames as [T, C, H, W]), Gaussian window 11 and
    sigma 1.5; frames smaller than 11 pixels get the largest odd window that fits (at least 3, sigma scaled).
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    _check_pair(video, reference)
    if not data_range > 0:
        raise ValueError(f"data_range must be > 0, got {data_range}")
    size, sigma = _ssim_window(video.shape[1], video.shape[2])
    per_frame: list[torch.Tensor] = []
    for start in range(0, video.shape[0], _FRAME_CHUNK):
        stop = start + _FRAME_CHUNK
        per_frame.append(
            structural_similarity_index_measure(
                _to_tchw(video[start:stop], torch.float32),
                _to_tchw(reference[start:stop], torch.float32),
                gaussian_kernel=True,
                sigma=sigma,
                kernel_size=size,
                data_range=float(data_range),
                reduction="none",
            )
        )
    return float(torch.cat(per_frame).double().mean())


# --------------------------------------------------------------------------------------------------- LPIPS
def _torchvision_problem() -> str | None:
    """Why torchvision cannot be used (it is not installed or fails to import), or None if it imports."""
    try:
        importlib.import_module("torchvision")
    except Exception as exc:  # noqa: BLE001 - an incompatible build fails with arbitrary errors
        return f"torchvision does not import ({type(exc).__name__}: {exc})"
    return None


def alexnet_checkpoint_path() -> Path:
    """Where torchvision looks for AlexNet's weights: ``torch.hub.get_dir()/checkpoints/alexnet-owt-7be5be79.pth``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_CHECKPOINT


def _lpips_problems() -> list[str]:
    """Everything missing for LPIPS (AlexNet) to run offline; empty when it can run."""
    problems: list[str] = []
    reason = _torchvision_problem()
    if reason is not None:
        problems.append(f"{reason}: {install_hint(['lpips'])}")
    ckpt = alexnet_checkpoint_path()
    if not ckpt.is_file():
        problems.append(
            f"AlexNet ImageNet weights are missing: place {ALEXNET_CHECKPOINT} ({ALEXNET_URL}) at {ckpt} "
            "(the torch hub cache; set TORCH_HOME to use another cache)"
        )
    try:
        import torchmetrics

        heads = Path(torchmetrics.__file__).parent / "functional" / "image" / "lpips_models" / "alex.pth"
        if not heads.is_file():
            problems.append(f"torchmetrics' LPIPS linear heads are missing ({heads}): reinstall torchmetrics")
    except ImportError:  # pragma: no cover - torchmetrics is a dependency of this module
        problems.append("torchmetrics is not installed: pip install torchmetrics")
    return problems


def lpips(video: np.ndarray, reference: np.ndarray) -> float:
    """Mean over frames of LPIPS-AlexNet (no unit, 0 = identical, lower is better) of two [T, H, W, 3] videos in [0, 1].

    Raises Unavailable (before loading anything) when torchvision or the AlexNet checkpoint is missing.
    """
    _check_pair(video, reference)
    problems = _lpips_problems()
    if problems:
        raise Unavailable("LPIPS (AlexNet) is unavailable: " + "; ".join(problems))

    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    # Backbone from the torch hub cache (checked above), linear heads from torchmetrics; mean over all frames.
    metric = LearnedPerceptualImagePatchSimilarity(net_type="alex", reduction="mean", normalize=True)
    with torch.no_grad():
        for start in range(0, video.shape[0], _FRAME_CHUNK):
            stop = start + _FRAME_CHUNK
            metric.update(_to_tchw(video[start:stop], torch.float32), _to_tchw(reference[start:stop], torch.float32))
        return float(metric.compute())


# --------------------------------------------------------------------------------------------------- all together
KNOWN_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "psnr": psnr,
    "ssim": ssim,
    "lpips": lpips,
}


def compare_videos(
    video: np.ndarray,
    reference: np.ndarray,
    metrics: Iterable[str] = ("psnr", "ssim", "lpips"),
) -> tuple[dict[str, float | None], dict[str, str]]:
    """Compute ``metrics`` of ``video`` against ``reference`` (both [T, H, W, 3] floats in [0, 1]).

    Returns ``(values, skipped)``: ``values[name]`` is the metric (PSNR in dB, SSIM and LPIPS unitless) or None when
    it was skipped, and ``skipped[name]`` is the reason (an :class:`Unavailable` message). Unknown names raise
    ValueError; invalid videos raise ValueError before any metric runs.
    """
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    unknown = [name for name in names if name not in KNOWN_METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known metrics: {sorted(KNOWN_METRICS)}")
    _check_pair(video, reference)
    values: dict[str, float | None] = {}
    skipped: dict[str, str] = {}
    for name in names:
        try:
            values[name] = KNOWN_METRICS[name](video, reference)
        except Unavailable as exc:
            values[name] = None
            skipped[name] = str(exc)
    return values, skipped
