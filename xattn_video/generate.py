"""One video from a ``RunConfig``: load (or reuse) the pipeline, install XAttention, run, and report."""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import RunConfig, to_container
from .pipelines.hunyuan_video import apply_xattention
from .pipelines.loading import is_tiny, load_pipeline
from .pipelines.tiny import TINY_PROMPT_TEMPLATE
from .video_io import write_json, write_mp4


@dataclass
class GenerationResult:
    frames: np.ndarray  # float32 [T, H, W, 3] in [0, 1]
    seconds_total: float
    seconds_per_step: list[float]
    xattn: dict | None  # handle summary (density per step and layer), None for dense runs
    video_path: Path | None = None
    json_path: Path | None = None
    meta: dict = field(default_factory=dict)

    @property
    def mean_density(self) -> float | None:
        return None if self.xattn is None else self.xattn.get("mean_density_sparse_calls")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pipeline_device(pipe: Any) -> torch.device:
    return getattr(pipe, "_execution_device", None) or next(pipe.transformer.parameters()).device


def initial_latents(pipe: Any, run: RunConfig, batch: int = 1) -> torch.Tensor:
    """The seeded starting noise of a generation, so dense and XAttention runs can share it exactly."""
    g = run.generation
    device = pipeline_device(pipe)
    generator = torch.Generator(device="cpu").manual_seed(g.seed)
    return pipe.prepare_latents(batch, pipe.transformer.config.in_channels, g.height, g.width, g.frames,
                                torch.float32, device, generator)


def run_pipeline(pipe: Any, run: RunConfig, latents: torch.Tensor | None = None,
                 show_progress: bool = True, decode: bool = True) -> GenerationResult:
    """Run one generation on ``pipe`` (XAttention installed for its duration unless ``run.dense``).

    ``decode=False`` skips the VAE (frames come back empty): ranks other than 0 of a multi-GPU run.
    """
    g = run.generation
    device = pipeline_device(pipe)
    if latents is None:
        latents = initial_latents(pipe, run)
    handle = None if run.dense else apply_xattention(pipe, run.xattn)
    step_ends: list[float] = []

    def on_step_end(_pipe: Any, _i: int, _t: Any, kwargs: dict) -> dict:
        _sync(device)  # one wait per denoising step, for honest per-step times
        step_ends.append(time.perf_counter())
        return {}

    kwargs: dict[str, Any] = dict(
        prompt=g.prompt, negative_prompt=g.negative_prompt, height=g.height, width=g.width, num_frames=g.frames,
        num_inference_steps=g.steps, guidance_scale=g.guidance_scale, true_cfg_scale=g.true_cfg_scale,
        max_sequence_length=g.max_sequence_length, latents=latents, output_type="np" if decode else "latent",
        callback_on_step_end=on_step_end,
    )
    if is_tiny(run.model):
        kwargs["prompt_template"] = TINY_PROMPT_TEMPLATE
    pipe.set_progress_bar_config(disable=not show_progress)
    try:
        _sync(device)
        start = time.perf_counter()
        output = pipe(**kwargs)
        _sync(device)
        total = time.perf_counter() - start
        summary = handle.summary() if handle is not None else None
    finally:
        if handle is not None:
            handle.remove()
    frames = np.asarray(output.frames[0], dtype=np.float32) if decode else np.zeros((0, 0, 0, 3), np.float32)
    per_step = [b - a for a, b in zip([start] + step_ends[:-1], step_ends)]
    return GenerationResult(frames=frames, seconds_total=total, seconds_per_step=per_step, xattn=summary)


def environment() -> dict:
    """Versions and GPU, for run records."""
    import diffusers

    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "diffusers": diffusers.__version__,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def generate(run: RunConfig, out: str | Path | None = None, pipe: Any = None,
             show_progress: bool = True) -> GenerationResult:
    """Generate one video; with ``out`` write ``out`` (mp4) and ``out`` with suffix .json (the run record)."""
    if pipe is None:
        pipe = load_pipeline(run.model)
    result = run_pipeline(pipe, run, show_progress=show_progress)
    result.meta = run_record(result, run, pipe)
    if out is not None:
        write_outputs(result, run, out)
    return result


def run_record(result: GenerationResult, run: RunConfig, pipe: Any) -> dict:
    """The JSON run record of a finished generation (config, environment, times, XAttention statistics)."""
    return {
        "config": to_container(run),
        "device": str(pipeline_device(pipe)),
        "environment": environment(),
        "seconds_total": result.seconds_total,
        "seconds_per_step": result.seconds_per_step,
        "frames": int(result.frames.shape[0]),
        "height": int(result.frames.shape[1]),
        "width": int(result.frames.shape[2]),
        "xattn": result.xattn,
        "note": "tiny random-weight model: the video is noise" if is_tiny(run.model) else None,
    }


def write_outputs(result: GenerationResult, run: RunConfig, out: str | Path) -> None:
    """Write the mp4 and, next to it, the run record (both atomically); sets the result's paths."""
    out = Path(out)
    result.video_path = write_mp4(result.frames, out, fps=run.generation.fps)
    result.meta["video"] = str(result.video_path)
    result.json_path = write_json(result.meta, out.with_suffix(".json"))
