"""One video from a ``RunConfig``: load (or reuse) the pipeline, install XAttention, run, and report."""

from __future__ import annotations

import datetime
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import ConfigError, RunConfig, to_container, warn_all_dense
from .memory import check_fits
from .pipelines.family import apply_xattention, check_precision_runs
from .pipelines.hunyuan_video15 import asked_size
from .pipelines.limits import check_model_size, check_pipeline_size
from .pipelines.loading import is_tiny, load_pipeline, pipeline_class_for, resolve_device, takes_image
from .pipelines.clauses import cache_compute_first, clause_composition, split_clauses
from .pipelines.sampler import sampler_shift
from .video_io import OutputPathError, write_json, write_mp4
from .video_io import check_out as check_video_out


class NonFiniteVideoError(RuntimeError):
    """The pipeline returned frames with NaN/inf: a failed generation, never written as a video."""


def check_finite_frames(frames: np.ndarray, what: str = "the generated video") -> None:
    """Raise ``NonFiniteVideoError`` (one line) if any frame of ``frames`` [T, H, W, 3] holds NaN or inf."""
    bad = ~np.isfinite(frames).reshape(frames.shape[0], -1).all(axis=1)
    if bad.any():
        raise NonFiniteVideoError(
            f"{what} has non-finite values (NaN/inf) in {int(bad.sum())} of {frames.shape[0]} frames (first: "
            f"frame {int(np.argmax(bad))}); nothing was written. The model produced NaN: check the prompt, the "
            f"dtype and the checkpoint"
        )


@dataclass
class GenerationResult:
    frames: np.ndarray  # float32 [T, H, W, 3] in [0, 1]
    seconds_total: float
    seconds_per_step: list[float]
    xattn: dict | None  # handle summary (density per step and layer), None for dense runs
    cache: dict | None = None  # step cache ledger (computed/skipped/predicted/reused per step), None without one
    clauses: list[str] | None = None  # the prompt's clauses when clause composition ran, else None
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


def load_image(path: str | Path) -> Any:
    """The conditioning image as an RGB PIL image; one clear error when it is missing or unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise ConfigError(f"config key 'generation.image': image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ConfigError(f"config key 'generation.image': cannot read {path} as an image ({exc})") from None


def check_inputs(run: RunConfig) -> Any:
    """Before any model loads: the size is one the model takes (its configs), the image fits the pipeline (I2V
    needs one, T2V takes none) and is readable.

    Returns the loaded image or None.
    """
    check_model_size(run.model, run.generation)
    cls = pipeline_class_for(run.model)
    image_path = run.generation.image
    if takes_image(cls) and image_path is None:
        raise ConfigError(f"{cls.__name__} is image-to-video: pass --image FILE (config key 'generation.image')")
    if not takes_image(cls) and image_path is not None:
        raise ConfigError(f"{cls.__name__} is text-to-video and takes no --image; use an image-to-video checkpoint "
                          f"(e.g. --model tiny-wan-i2v)")
    return None if image_path is None else load_image(image_path)


def initial_latents(pipe: Any, run: RunConfig, batch: int = 1) -> torch.Tensor | None:
    """The seeded starting noise of a HunyuanVideo generation, so dense and XAttention runs share it exactly.

    Other families return None: their runs share the noise through a generator seeded with the same seed.
    """
    if type(pipe).__name__ not in ("HunyuanVideoPipeline", "XAttnHunyuanVideoPipeline"):
        return None
    g = run.generation
    device = pipeline_device(pipe)
    generator = torch.Generator(device="cpu").manual_seed(g.seed)
    return pipe.prepare_latents(batch, pipe.transformer.config.in_channels, g.height, g.width, g.frames,
                                torch.float32, device, generator)


def compile_pipeline(pipe: Any) -> None:
    """Regional ``torch.compile`` of the repeated blocks of every transformer (Wan 2.2: both experts).

    With XAttention every hooked attention call is one deliberate graph break (our dispatch runs eagerly, see
    :mod:`xattn_video.pipelines.dispatch`), so the blocks compile with ``fullgraph=False``; the graphs hold only
    the model's own math and never recompile across steps or layers. Dense runs compile the same way, since one
    pipeline may serve dense and XAttention runs (``xvid compare``); the stock blocks have no graph break of their
    own (``tests/test_compile_regional.py`` checks that with fullgraph).
    """
    from .compile import compile_transformer

    for attr in ("transformer", "transformer_2"):
        transformer = getattr(pipe, attr, None)
        if transformer is not None:
            compile_transformer(transformer, fullgraph=False)


def run_pipeline(pipe: Any, run: RunConfig, latents: torch.Tensor | None = None,
                 show_progress: bool = True, image: Any = None, decode: bool = True) -> GenerationResult:
    """Run one generation on ``pipe`` (XAttention installed for its duration unless ``run.dense``).

    Only the arguments the pipeline's ``__call__`` takes are passed (families differ: HunyuanVideo 1.5 has no
    guidance_scale, its I2V pipeline no height/width). ``image``: a PIL image for I2V (else read from
    ``run.generation.image``). ``decode=False`` skips the VAE (frames come back empty): ranks other than 0 of
    a multi-GPU run.
    """
    import inspect

    g = run.generation
    device = pipeline_device(pipe)
    check_pipeline_size(pipe, g, run.model.path)  # a pipeline given by the caller was not checked before it loaded
    check_fits(run, device)  # before the latents: refuse sizes that cannot fit, with the numbers
    if latents is None:
        latents = initial_latents(pipe, run)
    if image is None and g.image is not None:
        image = load_image(g.image)
    if run.model.compile:
        from .compile import is_compiled

        if show_progress and not is_compiled(pipe.transformer):
            print("model.compile: the first denoising step compiles the transformer blocks (1-3 min at full size)",
                  file=sys.stderr, flush=True)
        compile_pipeline(pipe)  # once per pipeline; the first step pays for the compilation
    handle = None if run.dense else apply_xattention(pipe, run.xattn)
    cache = None
    if run.cache.name is not None:
        from .caches.apply import enable_step_cache

        try:
            # the composed steps and two after them are computed: predicting from them costs two-object prompts
            compute_first = cache_compute_first(g.prompt, g.clause_weight, g.clause_steps, g.clause_start)
            cache = enable_step_cache(pipe, run.cache, steps=g.steps, compute_first=compute_first)
        except BaseException:
            if handle is not None:
                handle.remove()
            raise
        cache.reset()  # a generation cut short earlier may have left cache state behind
    step_ends: list[float] = []

    def on_step_end(_pipe: Any, _i: int, _t: Any, kwargs: dict) -> dict:
        _sync(device)  # one wait per denoising step, for honest per-step times
        step_ends.append(time.perf_counter())
        return {}

    kwargs: dict[str, Any] = dict(
        prompt=g.prompt, negative_prompt=g.negative_prompt, height=g.height, width=g.width, num_frames=g.frames,
        num_inference_steps=g.steps, guidance_scale=g.guidance_scale, true_cfg_scale=g.true_cfg_scale,
        max_sequence_length=g.max_sequence_length, output_type="np" if decode else "latent",
        callback_on_step_end=on_step_end, image=image,
    )
    if latents is not None:
        kwargs["latents"] = latents
    else:
        kwargs["generator"] = torch.Generator(device="cpu").manual_seed(g.seed)
    accepted = inspect.signature(pipe.__call__).parameters
    kwargs = {k: v for k, v in kwargs.items() if k in accepted and (v is not None or k == "negative_prompt")}
    pipe.set_progress_bar_config(disable=not show_progress)
    clauses = None
    try:
        _sync(device)
        start = time.perf_counter()
        with asked_size(pipe, g.height, g.width), sampler_shift(pipe, g.flow_shift), \
                clause_composition(pipe, g.prompt, g.clause_weight, g.max_sequence_length, device,
                                   g.clause_steps, g.clause_start, steady_batch=cache is not None,
                                   suffix=g.clause_suffix, referee=g.clause_referee) as prompt_embeds:
            if prompt_embeds is not None:  # the hook knows the prompt's transformer call by this tensor
                kwargs.pop("prompt")
                kwargs["prompt_embeds"] = prompt_embeds
                clauses = split_clauses(g.prompt)
            output = pipe(**kwargs)
        _sync(device)
        total = time.perf_counter() - start
        summary = handle.summary() if handle is not None else None
        cache_summary = cache.summary() if cache is not None else None
        if summary is not None and cache_summary is not None:
            # steps the cache did not compute (their head-block calls, if any, stay in the per-layer statistics)
            summary["steps_not_computed"] = [s["step"] for s in cache_summary["steps"]
                                             if "computed" not in s["status"].split("+")]
        if cache is not None and cache.mag_ratios() is not None:
            cache_summary["calibrated_mag_ratios"] = cache.mag_ratios()
    finally:
        if handle is not None:
            handle.remove()
        if cache is not None:
            cache.remove()
    if decode:
        frames = np.asarray(output.frames[0], dtype=np.float32)
        check_finite_frames(frames)
    else:
        frames = np.zeros((0, 0, 0, 3), np.float32)
    per_step = [b - a for a, b in zip([start] + step_ends[:-1], step_ends)]
    return GenerationResult(frames=frames, seconds_total=total, seconds_per_step=per_step, xattn=summary,
                            cache=cache_summary, clauses=clauses)


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


def check_out(out: str | Path | None) -> Path | None:
    """``--out`` and its JSON record can be written (checked before any model loads); ``ConfigError`` if not."""
    if out is None:
        return None
    try:
        return check_video_out(out)
    except OutputPathError as exc:
        raise ConfigError(str(exc)) from None


def generate(run: RunConfig, out: str | Path | None = None, pipe: Any = None,
             show_progress: bool = True) -> GenerationResult:
    """Generate one video; with ``out`` write ``out`` (mp4) and ``out`` with suffix .json (the run record).

    ``out``, the image and the memory the size needs are checked before the model loads (``ConfigError``);
    frames with NaN/inf raise ``NonFiniteVideoError`` and nothing is written.
    """
    if out is not None:
        out = check_out(out)
    warn_all_dense(run)
    image = check_inputs(run) if pipe is None else None
    if pipe is None:
        device = resolve_device(run.model.device)
        if not run.dense:
            check_precision_runs(run.xattn.precision, device)
        check_fits(run, device)
        pipe = load_pipeline(run.model)
    result = run_pipeline(pipe, run, show_progress=show_progress, image=image)
    result.meta = run_record(result, run, pipe)
    if out is not None:
        write_outputs(result, run, out)
    return result


def run_record(result: GenerationResult, run: RunConfig, pipe: Any) -> dict:
    """The JSON run record of a finished generation (config, environment, times, XAttention statistics)."""
    from . import __version__

    return {
        "xattn_video_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": to_container(run),
        "device": str(pipeline_device(pipe)),
        "environment": environment(),
        "sparse_kernel": _sparse_kernel(run, pipe),
        "seconds_total": result.seconds_total,
        "seconds_per_step": result.seconds_per_step,
        "frames": int(result.frames.shape[0]),
        "height": int(result.frames.shape[1]),
        "width": int(result.frames.shape[2]),
        "xattn": result.xattn,
        "cache": result.cache,
        "clauses": result.clauses,
        "note": "tiny random-weight model: the video is noise" if is_tiny(run.model) else None,
    }


def _sparse_kernel(run: RunConfig, pipe: Any) -> str | None:
    """The kernel XAttention's sparse steps ran with (None for a dense run)."""
    if run.dense:
        return None
    from .kernels import sparse_kernel

    return sparse_kernel(pipeline_device(pipe), run.xattn.backend, run.xattn.precision)


def write_outputs(result: GenerationResult, run: RunConfig, out: str | Path) -> None:
    """Write the mp4 and, next to it, the run record (both atomically); sets the result's paths."""
    out = Path(out)
    result.video_path = write_mp4(result.frames, out, fps=run.generation.fps)
    result.meta["video"] = str(result.video_path)
    result.json_path = write_json(result.meta, out.with_suffix(".json"))
    ratios = (result.cache or {}).get("calibrated_mag_ratios")
    if ratios:  # a MagCache calibration run: the config that uses its ratios, next to the video
        from omegaconf import OmegaConf

        from .caches.magcache import calibrated_config
        from .video_io import write_text

        path = write_text(OmegaConf.to_yaml(to_container(calibrated_config(run, ratios))), out.with_suffix(".yaml"))
        result.meta["magcache_config"] = str(path)
