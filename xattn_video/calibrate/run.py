"""``calibrate(run, prompts, steps, ...)``: profile a pipeline on a few prompts, solve for τ, write the config."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from ..config import ConfigError, RunConfig, to_container, xattn_config
from .collect import Collector
from .profile import DEFAULT_SAMPLES, DEFAULT_TAUS, CalibrationProfile, check_taus
from .solver import Solution, check_target, solve


@dataclasses.dataclass
class CalibrationResult:
    config: RunConfig  # the run config with the calibrated xattn.threshold
    solution: Solution
    profile: CalibrationProfile
    seconds: float
    files: dict[str, Path] = dataclasses.field(default_factory=dict)


def profiled_steps(run: RunConfig, steps: int) -> int:
    """Sparse-eligible steps a run can profile: ``steps``, capped by the schedule after the warmup."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"--steps (profiled denoising steps) must be a positive int, got {steps!r}")
    available = run.generation.steps - run.xattn.warmup_steps
    if available < 1:
        raise ConfigError(f"nothing to profile: xattn.warmup_steps ({run.xattn.warmup_steps}) leaves no sparse "
                          f"step of generation.steps ({run.generation.steps})")
    return min(steps, available)


def profile_pipeline(pipe: Any, run: RunConfig, prompts: Sequence[str], steps: int, *,
                     taus: Sequence[float] = DEFAULT_TAUS, samples: int = DEFAULT_SAMPLES, seed: int = 0,
                     show_progress: bool = True) -> CalibrationProfile:
    """Run ``pipe`` on each prompt (dense trajectory, the config's schedule, stopped after the warmup steps
    plus ``steps`` profiled steps, no VAE decode) and profile every sparse-eligible attention call."""
    from tqdm.auto import tqdm

    from ..generate import initial_latents
    from ..pipelines.hunyuan_video import apply_xattention
    from ..pipelines.loading import is_tiny
    from ..pipelines.tiny import TINY_PROMPT_TEMPLATE

    n_steps = profiled_steps(run, steps)
    stop_after = run.xattn.warmup_steps + n_steps
    g = run.generation
    # installed with any τ < 1 so the sparse-eligible branch is reached; the collector then runs it dense
    handle = apply_xattention(pipe, dataclasses.replace(run.xattn, threshold=0.5, collect_stats=False,
                                                        time_stats=False))
    num_layers, heads = handle.state.plan.num_layers, handle.state.plan.num_heads
    eligible = sum(handle.state.plan.is_sparse(None, layer) for layer in range(num_layers))
    calls_per_step = 2 if (g.true_cfg_scale > 1 and g.negative_prompt) else 1
    bar = tqdm(total=len(prompts) * n_steps * eligible * calls_per_step, desc="xvid calibrate", unit="call",
               disable=not show_progress)
    collector = Collector(run.xattn, num_layers, heads, taus=taus, samples=samples, seed=seed,
                          on_observe=lambda step, layer: bar.update(1))
    handle.state.observer = collector

    def stop(_pipe: Any, i: int, _t: Any, _kwargs: dict) -> dict:
        if i + 1 >= stop_after:
            _pipe._interrupt = True  # diffusers skips the remaining steps
        return {}

    try:
        pipe.set_progress_bar_config(disable=True)
        for prompt in prompts:
            item = dataclasses.replace(run, generation=dataclasses.replace(g, prompt=prompt))
            kwargs: dict[str, Any] = dict(
                prompt=prompt, negative_prompt=g.negative_prompt, height=g.height, width=g.width,
                num_frames=g.frames, num_inference_steps=g.steps, guidance_scale=g.guidance_scale,
                true_cfg_scale=g.true_cfg_scale, max_sequence_length=g.max_sequence_length,
                latents=initial_latents(pipe, item), output_type="latent", callback_on_step_end=stop)
            if is_tiny(run.model):
                kwargs["prompt_template"] = TINY_PROMPT_TEMPLATE
            with torch.no_grad():
                pipe(**kwargs)
    finally:
        handle.remove()
        bar.close()
    return collector.profile


def calibrated_config(run: RunConfig, solution: Solution) -> RunConfig:
    """``run`` with ``xattn.threshold`` set to the solution's per-layer (per-head) mapping."""
    xattn = xattn_config({**to_container(run.xattn), **solution.xattn_fragment()})
    return dataclasses.replace(run, xattn=xattn)


def run_calibration(run: RunConfig, prompts: Sequence[str], steps: int = 2, *, target_recall: float | None = None,
                    target_error: float | None = None, density: float | None = None, per_head: bool = False,
                    out: str | Path | None = None, taus: Sequence[float] = DEFAULT_TAUS,
                    samples: int = DEFAULT_SAMPLES, seed: int = 0, pipe: Any = None,
                    show_progress: bool = True) -> CalibrationResult:
    """Everything ``calibrate`` does, returning the profile and solution too."""
    from ..pipelines.loading import load_pipeline
    from .report import write_outputs

    # every check before any work, so a bad argument costs nothing and writes nothing
    check_target(target_recall, target_error, density)
    taus = check_taus(taus)
    prompts = [p for p in prompts if p and p.strip()]
    if not prompts:
        raise ConfigError("no prompts to calibrate on")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ConfigError(f"samples (query blocks per call) must be a positive int, got {samples!r}")
    n_steps = profiled_steps(run, steps)
    start = time.perf_counter()
    if pipe is None:
        pipe = load_pipeline(run.model)
    profile = profile_pipeline(pipe, run, prompts, n_steps, taus=taus, samples=samples, seed=seed,
                               show_progress=show_progress)
    sol = solve(profile, target_recall=target_recall, target_error=target_error, density=density,
                per_head=per_head)
    config = calibrated_config(run, sol)
    seconds = time.perf_counter() - start
    result = CalibrationResult(config=config, solution=sol, profile=profile, seconds=seconds)
    if out is not None:
        g = run.generation
        meta = {"model": run.model.path, "prompts": len(prompts),
                "profiled steps": f"{n_steps} after {run.xattn.warmup_steps} warmup steps of {g.steps}",
                "video": f"{g.width}x{g.height}, {g.frames} frames", "stride": run.xattn.stride,
                "block size": run.xattn.block_size, "query blocks sampled per call": samples,
                "calibration wall time": f"{seconds:.1f} s"}
        result.files = write_outputs(out, to_container(config), sol, profile, meta)
    return result


def calibrate(run: RunConfig, prompts: Sequence[str], steps: int = 2, *, target_recall: float | None = None,
              target_error: float | None = None, density: float | None = None, per_head: bool = False,
              out: str | Path | None = None, **kwargs: Any) -> RunConfig:
    """Calibrated run config: per-layer (``per_head``: per-head) τ for one objective.

    Profiles ``steps`` sparse-eligible denoising steps per prompt (dense trajectory; warmup steps and dense
    layers are respected and not profiled), then per unit picks the lowest-density τ with recall ≥
    ``target_recall`` or output error ≤ ``target_error``, or spends a mean ``density`` budget where it buys
    the most recall. With ``out`` writes the YAML (``xvid generate --config`` takes it as is), a markdown
    report, a plot and the profile. ``kwargs``: taus, samples, seed, pipe, show_progress.
    """
    return run_calibration(run, prompts, steps, target_recall=target_recall, target_error=target_error,
                           density=density, per_head=per_head, out=out, **kwargs).config
