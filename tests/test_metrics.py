"""Full-reference video metrics (xattn_video.eval.metrics) against closed forms and torchmetrics itself."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from xattn_video.eval import metrics
from xattn_video.eval.metrics import MetricUnavailable, compare_videos, lpips, psnr, ssim


def _video(rng: np.random.Generator, t: int = 4, h: int = 16, w: int = 16) -> np.ndarray:
    return rng.random((t, h, w, 3), dtype=np.float32)


def _noisy(rng: np.random.Generator, video: np.ndarray, sigma: float = 0.05) -> np.ndarray:
    return np.clip(video + rng.normal(0.0, sigma, video.shape), 0.0, 1.0).astype(np.float32)


def _tchw(video: np.ndarray, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.from_numpy(video).to(dtype).permute(0, 3, 1, 2)


# ------------------------------------------------------------------------------------------------------- PSNR
def test_psnr_identical_is_inf_without_warning(rng):
    video = _video(rng)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = psnr(video, video.copy())
    assert value == math.inf


@pytest.mark.parametrize("sign", [1, -1])
def test_psnr_constant_offset_closed_form(rng, sign):
    # Multiples of 2**-10 are exact in float32, so every pixel differs by exactly delta (and nothing is clipped).
    j = int(rng.integers(4, 129))
    delta = j / 1024
    reference = (rng.integers(j, 1024 - j, size=(3, 12, 10, 3)) / 1024).astype(np.float32)
    video = (reference + sign * delta).astype(np.float32)
    assert np.all(np.abs(video.astype(np.float64) - reference) == delta)
    assert psnr(video, reference) == pytest.approx(10 * math.log10(1 / delta**2), abs=1e-4)


def test_psnr_is_over_the_whole_video_not_a_mean_of_frames(rng):
    d1, d2 = int(rng.integers(4, 40)) / 1024, int(rng.integers(60, 120)) / 1024
    reference = (rng.integers(128, 896, size=(2, 8, 8, 3)) / 1024).astype(np.float32)
    video = reference.copy()
    video[0] += d1
    video[1] += d2
    whole = 10 * math.log10(1 / ((d1**2 + d2**2) / 2))
    per_frame_mean = (10 * math.log10(1 / d1**2) + 10 * math.log10(1 / d2**2)) / 2
    assert abs(whole - per_frame_mean) > 0.1  # the two definitions are distinguishable here
    assert psnr(video, reference) == pytest.approx(whole, abs=1e-4)


def test_psnr_matches_torchmetrics_and_scales_with_data_range(rng):
    reference = _video(rng, t=5, h=20, w=14)
    video = _noisy(rng, reference, sigma=float(rng.uniform(0.01, 0.2)))
    expected = float(peak_signal_noise_ratio(_tchw(video), _tchw(reference), data_range=1.0))
    assert psnr(video, reference) == pytest.approx(expected, rel=1e-9)
    assert psnr(video * 2, reference * 2, data_range=2.0) == pytest.approx(expected, rel=1e-6)
    assert psnr(video, reference, data_range=2.0) == pytest.approx(expected + 20 * math.log10(2), rel=1e-6)


# ------------------------------------------------------------------------------------------------------- SSIM
def test_ssim_identical_is_one(rng):
    video = _video(rng, t=3, h=24, w=20)
    assert ssim(video, video.copy()) == pytest.approx(1.0, abs=1e-6)


def test_ssim_noisy_matches_torchmetrics_frame_by_frame(rng):
    reference = _video(rng, t=10, h=16, w=16)  # 10 frames: more than one internal chunk
    video = _noisy(rng, reference, sigma=float(rng.uniform(0.02, 0.2)))
    per_frame = [
        float(
            structural_similarity_index_measure(
                _tchw(video[t : t + 1], torch.float32), _tchw(reference[t : t + 1], torch.float32), data_range=1.0
            )
        )
        for t in range(video.shape[0])
    ]
    value = ssim(video, reference)
    assert value < 0.999
    assert value == pytest.approx(float(np.mean(per_frame)), abs=1e-6)


@pytest.mark.parametrize("hw", [(8, 8), (5, 7), (3, 3), (10, 40)])
def test_ssim_small_frames_do_not_crash(rng, hw):
    reference = _video(rng, t=2, h=hw[0], w=hw[1])
    video = _noisy(rng, reference, sigma=0.1)
    value = ssim(video, reference)
    assert math.isfinite(value) and -1.0 <= value < 1.0
    assert ssim(reference, reference.copy()) == pytest.approx(1.0, abs=1e-6)


def test_ssim_frames_below_3_pixels_are_rejected(rng):
    video = _video(rng, t=2, h=2, w=8)
    with pytest.raises(ValueError, match="3x3"):
        ssim(video, video)


# ------------------------------------------------------------------------------------------------------- validation
def test_shape_mismatch_names_both_shapes(rng):
    a, b = _video(rng, t=3, h=16, w=16), _video(rng, t=4, h=16, w=16)
    for fn in (psnr, ssim, lpips):
        with pytest.raises(ValueError) as info:
            fn(a, b)
        assert str(a.shape) in str(info.value) and str(b.shape) in str(info.value)


def test_invalid_layouts_are_rejected_with_the_shape(rng):
    frame = rng.random((16, 16, 3), dtype=np.float32)
    with pytest.raises(ValueError, match=r"4-D.*\(16, 16, 3\)"):
        psnr(frame, frame)
    four_channels = rng.random((2, 8, 8, 4), dtype=np.float32)
    with pytest.raises(ValueError, match=r"3 channels.*\(2, 8, 8, 4\)"):
        ssim(four_channels, four_channels)
    as_uint8 = (rng.random((2, 8, 8, 3)) * 255).astype(np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        psnr(as_uint8, as_uint8)


# ------------------------------------------------------------------------------------------------------- LPIPS
def _forbid_downloads(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", boom)
    monkeypatch.setattr(torch.hub, "download_url_to_file", boom)


def test_lpips_without_torchvision_or_weights_is_unavailable(rng, tmp_path, monkeypatch):
    _forbid_downloads(monkeypatch)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty torch hub cache
    video = _video(rng, t=2, h=32, w=32)
    with pytest.raises(MetricUnavailable) as info:
        lpips(video, _noisy(rng, video))
    message = str(info.value)
    expected_ckpt = tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    assert str(expected_ckpt) in message
    assert "download.pytorch.org/models/alexnet-owt-7be5be79.pth" in message


def test_lpips_names_a_torchvision_problem(rng, tmp_path, monkeypatch):
    _forbid_downloads(monkeypatch)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(metrics, "_torchvision_problem", lambda: "torchvision does not import: boom")
    video = _video(rng, t=2, h=32, w=32)
    with pytest.raises(MetricUnavailable) as info:
        lpips(video, video)
    assert "torchvision does not import: boom: pip install " in str(info.value)
    assert "pip install 'xattn-video[lpips]' (torchmetrics, torchvision)" in str(info.value)  # extras.install_hint


def test_lpips_with_torchvision_but_no_checkpoint_names_only_the_checkpoint(rng, tmp_path, monkeypatch):
    _forbid_downloads(monkeypatch)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(metrics, "_torchvision_problem", lambda: None)
    video = _video(rng, t=2, h=32, w=32)
    with pytest.raises(MetricUnavailable) as info:
        lpips(video, video)
    message = str(info.value)
    assert "alexnet-owt-7be5be79.pth" in message and str(tmp_path) in message
    assert "torchvision does not import" not in message


def test_torchvision_problem_reports_an_import_failure(monkeypatch):
    import importlib

    def fail(name, *args, **kwargs):
        raise RuntimeError("operator torchvision::nms does not exist")

    monkeypatch.setattr(importlib, "import_module", fail)
    problem = metrics._torchvision_problem()
    assert problem is not None and "torchvision::nms" in problem


# ------------------------------------------------------------------------------------------------------- compare_videos
def test_compare_videos_skips_unavailable_lpips(rng, tmp_path, monkeypatch):
    _forbid_downloads(monkeypatch)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference = _video(rng, t=3, h=32, w=32)
    video = _noisy(rng, reference)
    values, skipped = compare_videos(video, reference)
    assert set(values) == {"psnr", "ssim", "lpips"}
    assert values["lpips"] is None and set(skipped) == {"lpips"}
    assert "alexnet-owt-7be5be79.pth" in skipped["lpips"]
    assert values["psnr"] == pytest.approx(psnr(video, reference))
    assert values["ssim"] == pytest.approx(ssim(video, reference))
    only, none_skipped = compare_videos(video, reference, metrics=("ssim",))
    assert list(only) == ["ssim"] and none_skipped == {}


def test_compare_videos_unknown_metric_names_it_and_the_known_ones(rng):
    video = _video(rng)
    with pytest.raises(ValueError) as info:
        compare_videos(video, video, metrics=("psnr", "fvd"))
    message = str(info.value)
    assert "fvd" in message and all(name in message for name in ("psnr", "ssim", "lpips"))
