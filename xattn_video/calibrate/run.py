"""``calibrate(run, prompts, steps, ...)``: profile a pipeline on a few prompts, solve for τ, write the config."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from ..config import ConfigError, RunConfig, to_container, xattn_config
from ..pipelines.hunyuan_video15 import asked_size
from .collect import Collector
from .profile import DEFAULT_SAMPLES, DEFAULT_TAUS, CalibrationProfile, check_taus
from .checks import check_samples, check_target, profiled_steps
from .solver import Solution, solve


@dataclasses.dataclass
class CalibrationResult:
    config: RunConfig  # the run config with the calibrated xattn.threshold
    solution: Solution
    profile: CalibrationProfile
    seconds: float
    files: dict[str, Path] = dataclasses.field(default_factory=dict)


def profile_pipeline(pipe: Any, run: RunConfig, prompts: Sequence[str], steps: int, *,
                     taus: Sequence[float] = DEFAULT_TAUS, samples: int = DEFAULT_SAMPLES, seed: int = 0,
                     show_progress: bool = True, image: Any = None) -> CalibrationProfile:
    """Run ``pipe`` on each prompt (dense trajectory, the config's schedule, stopped after the warmup steps
    plus ``steps`` profiled steps, no VAE decode) and profile every sparse-eligible attention call.

    Any supported family (``xattn_video.pipelines.supported_pipelines()``); Wan 2.2 A14B's second expert is
    profiled as layers ``t2.N`` (its warmup and dense layers from ``xattn.expert2``). ``image``: the
    conditioning image of an image-to-video pipeline (else read from ``run.generation.image``).
    """
    import inspect

    from tqdm.auto import tqdm

    from ..generate import initial_latents, load_image
    from ..pipelines.family import _expert_config, apply_xattention
    from .collect import eligibility_plan

    n_steps = profiled_steps(run, steps)
    stop_after = run.xattn.warmup_steps + n_steps
    g = run.generation
    if image is None and g.image is not None:
        image = load_image(g.image)
    # installed with any τ < 1 so the sparse-eligible branch is reached; the collector then runs it dense
    handle = apply_xattention(pipe, dataclasses.replace(run.xattn, threshold=0.5, collect_stats=False,
                                                        time_stats=False, selection_reuse=0))
    plans = {expert: eligibility_plan(_expert_config(handle.config, expert), plan.num_layers, plan.num_heads)
             for expert, plan in handle.state.plans.items()}
    # calls per step: the sparse-eligible layers of one expert (Wan 2.2 switches experts between steps)
    eligible = max(sum(p.is_sparse(None, layer) for layer in range(p.num_layers)) for p in plans.values())
    cfg_calls = g.guidance_scale > 1 if handle.family.name == "wan" else (g.true_cfg_scale > 1 and g.negative_prompt)
    calls_per_step = 2 if cfg_calls else 1  # progress bar only
    bar = tqdm(total=len(prompts) * n_steps * eligible * calls_per_step, desc="xvid calibrate", unit="call",
               disable=not show_progress)
    collector = Collector(run.xattn, plans[0].num_layers, plans[0].num_heads, taus=taus, samples=samples,
                          seed=seed, on_observe=lambda step, layer: bar.update(1), plans=plans)
    handle.state.observer = collector

    def stop(_pipe: Any, i: int, _t: Any, _kwargs: dict) -> dict:
        if i + 1 >= stop_after:
            _pipe._interrupt = True  # diffusers skips the remaining steps
        return {}

    accepted = inspect.signature(pipe.__call__).parameters
    try:
        pipe.set_progress_bar_config(disable=True)
        for prompt in prompts:
            item = dataclasses.replace(run, generation=dataclasses.replace(g, prompt=prompt))
            latents = initial_latents(pipe, item)
            kwargs: dict[str, Any] = dict(
                prompt=prompt, negative_prompt=g.negative_prompt, height=g.height, width=g.width,
                num_frames=g.frames, num_inference_steps=g.steps, guidance_scale=g.guidance_scale,
                true_cfg_scale=g.true_cfg_scale, max_sequence_length=g.max_sequence_length, image=image,
                output_type="latent", callback_on_step_end=stop)
            if latents is not None:
                kwargs["latents"] = latents
            else:
                kwargs["generator"] = torch.Generator(device="cpu").manual_seed(g.seed)
            # only what this pipeline's __call__ takes (families differ), as generate.run_pipeline does
            kwargs = {k: v for k, v in kwargs.items() if k in accepted and (v is not None or k == "negative_prompt")}
            with torch.no_grad(), asked_size(pipe, g.height, g.width):  # HunyuanVideo 1.5 I2V: the asked size
                pipe(**kwargs)
    finally:
        handle.remove()
        bar.close()
    return collector.profile


def calibrated_config(run: RunConfig, solution: Solution) -> RunConfig:
    """``run`` with ``xattn.threshold`` set to the solution's per-layer (per-head) mapping."""
    fragment = solution.xattn_fragment()
    if "expert2" in fragment:  # keep the user's other expert2 keys (dense_layers)
        fragment["expert2"] = {**(run.xattn.expert2 or {}), **fragment["expert2"]}
    xattn = xattn_config({**to_container(run.xattn), **fragment})
    return dataclasses.replace(run, xattn=xattn)


def run_calibration(run: RunConfig, prompts: Sequence[str], steps: int = 2, *, target_recall: float | None = None,
                    target_error: float | None = None, density: float | None = None, per_head: bool = False,
                    out: str | Path | None = None, taus: Sequence[float] = DEFAULT_TAUS,
                    samples: int = DEFAULT_SAMPLES, seed: int = 0, pipe: Any = None,
                    show_progress: bool = True) -> CalibrationResult:
    """Everything ``calibrate`` does, returning the profile and solution too."""
    from ..generate import check_inputs
    from ..pipelines.loading import load_pipeline
    from .report import write_outputs

    # every check before any work, so a bad argument costs nothing and writes nothing
    check_target(target_recall, target_error, density)
    taus = check_taus(taus)
    prompts = [p for p in prompts if p and p.strip()]
    if not prompts:
        raise ConfigError("no prompts to calibrate on")
    check_samples(samples)
    n_steps = profiled_steps(run, steps)
    start = time.perf_counter()
    image = None
    if pipe is None:
        image = check_inputs(run)  # the I2V image, before any model loads
        pipe = load_pipeline(run.model)
    profile = profile_pipeline(pipe, run, prompts, n_steps, taus=taus, samples=samples, seed=seed,
                               show_progress=show_progress, image=image)
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
