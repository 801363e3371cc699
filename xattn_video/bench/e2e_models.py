"""The models of the end-to-end benchmark (``xvid bench --e2e``): full-size diffusers transformers with random
bf16 weights, their preset shapes and inputs, how our attention is installed on them, and the settings timed."""

from __future__ import annotations

import argparse
import contextlib
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch

SETTINGS = ("stock", "dense", "cap0.2", "cap0.35", "cap0.5", "tau0.9", "cap0.35-reuse2")


@dataclass(frozen=True)
class Shape:
    """A video size: pixels and frames, and the latent grid the transformer sees."""

    name: str
    height: int
    width: int
    frames: int

    def latent(self, spatial: int = 8, temporal: int = 4) -> tuple[int, int, int]:
        return (self.frames - 1) // temporal + 1, self.height // spatial, self.width // spatial


@dataclass
class ModelSpec:
    """One model family: how to build it at full size, its inputs, and how our attention is installed."""

    name: str
    diffusers_class: str
    shapes: dict[str, Shape]
    default_shapes: tuple[str, ...]
    make_inputs: Callable[[Any, Shape, torch.device], dict]
    image_tokens: Callable[[Any, Shape], int]
    text_tokens: int  # condition tokens per call (HunyuanVideo 1.5: Qwen text + ByT5 + image slots)
    text_valid: int
    joint_text: bool = True  # the condition tokens take part in self-attention (Wan: cross-attention only)
    # Install our attention (dense path or XAttention) on a transformer; returns a handle with .remove() and
    # .state.stats. None: our attention is not installable on this model.
    install: Callable[[Any, dict], Any] | None = None
    notes: list[str] = field(default_factory=list)
    pipeline_class: str = ""  # the diffusers pipeline of the family (a holder of it carries a step cache)
    # the scheduler's timesteps for N steps (step caches whose schedule depends on the timestep: PAB, FasterCache)
    timesteps: Callable[[int], list[float]] | None = None
    scheduler_note: str = ""
    # a small transformer of the same class, on which diffusers' cache hooks are run to get a cache's schedule
    small_config: dict = field(default_factory=dict)


def make_holder(pipeline_class: str, transformer: Any) -> Any:
    """A pipeline object of ``pipeline_class`` holding only ``transformer`` (nothing else is built or loaded): what
    ``apply_xattention`` and ``enable_step_cache`` detect the family from."""
    import diffusers

    cls = getattr(diffusers, pipeline_class)
    holder = cls.__new__(cls)
    object.__setattr__(holder, "transformer", transformer)
    object.__setattr__(holder, "transformer_2", None)
    return holder


def flow_timesteps(shift: float, unipc: bool = False) -> Callable[[int], list[float]]:
    """Timesteps of the flow-matching schedulers these checkpoints ship (Euler, or UniPC for Wan)."""
    def timesteps(steps: int) -> list[float]:
        from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

        if unipc:
            sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                            num_train_timesteps=1000, flow_shift=shift)
        else:
            sched = FlowMatchEulerDiscreteScheduler(shift=shift)
        sched.set_timesteps(steps)
        return [float(t) for t in sched.timesteps]
    return timesteps


def _hunyuan_inputs(transformer: Any, shape: Shape, device: torch.device) -> dict:
    cfg = transformer.config
    t, h, w = shape.latent()
    gen = torch.Generator(device=device).manual_seed(0)
    dtype = torch.bfloat16
    mask = torch.zeros(1, HUNYUAN.text_tokens, dtype=torch.bool, device=device)
    mask[:, :HUNYUAN.text_valid] = True
    return dict(
        hidden_states=torch.randn(1, cfg.in_channels, t, h, w, generator=gen, device=device, dtype=dtype),
        timestep=torch.tensor([500], device=device),
        encoder_hidden_states=torch.randn(1, HUNYUAN.text_tokens, cfg.text_embed_dim, generator=gen, device=device,
                                          dtype=dtype),
        encoder_attention_mask=mask,
        pooled_projections=torch.randn(1, cfg.pooled_projection_dim, generator=gen, device=device, dtype=dtype),
        guidance=torch.tensor([6000.0], device=device, dtype=dtype),
        return_dict=False,
    )


def _installer(pipeline_class: str) -> Callable[[Any, dict], Any]:
    """Install our attention (pipelines/dispatch.py, any family) on a bare transformer: a pipeline object of the
    family's class holding only the transformer (the family is detected by class; the step is set by hand)."""

    def install(transformer: Any, xattn: dict) -> Any:
        from ..pipelines.family import apply_xattention

        holder = make_holder(pipeline_class, transformer)
        handle = apply_xattention(holder, xattn)
        handle._holder = holder  # the tracker keeps a weak reference only
        return handle

    return install


def _wan_inputs(transformer: Any, shape: Shape, device: torch.device) -> dict:
    cfg = transformer.config
    t, h, w = shape.latent()
    gen = torch.Generator(device=device).manual_seed(0)
    return dict(
        hidden_states=torch.randn(1, cfg.in_channels, t, h, w, generator=gen, device=device, dtype=torch.bfloat16),
        timestep=torch.tensor([500], device=device),
        encoder_hidden_states=torch.randn(1, WAN.text_tokens, cfg.text_dim, generator=gen, device=device,
                                          dtype=torch.bfloat16),
        return_dict=False,
    )


def _tokens(patch: tuple[int, int, int], spatial: int = 8) -> Callable[[Any, Shape], int]:
    """Video tokens per call: the latent grid (VAE 4x time, ``spatial``x space) over the patch size."""
    def count(transformer: Any, shape: Shape) -> int:
        t, h, w = shape.latent(spatial=spatial)
        return (t // patch[0]) * (h // patch[1]) * (w // patch[2])
    return count


HUNYUAN = ModelSpec(
    name="hunyuan-video",
    diffusers_class="HunyuanVideoTransformer3DModel",
    shapes={"720p": Shape("720p×129f", 720, 1280, 129), "544p": Shape("544p×33f", 544, 960, 33)},
    default_shapes=("720p", "544p"),
    make_inputs=_hunyuan_inputs,
    image_tokens=_tokens((1, 2, 2)),
    text_tokens=256,
    text_valid=40,
    install=_installer("HunyuanVideoPipeline"),
    pipeline_class="HunyuanVideoPipeline",
    timesteps=flow_timesteps(7.0),
    scheduler_note="FlowMatchEulerDiscreteScheduler, shift 7 (the checkpoint's)",
    small_config=dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=64, num_layers=1,
                      num_single_layers=1, num_refiner_layers=1, mlp_ratio=2.0, text_embed_dim=32,
                      pooled_projection_dim=16, rope_axes_dim=(8, 28, 28)),
)

WAN = ModelSpec(
    name="wan2.1-14b",
    diffusers_class="WanTransformer3DModel",
    shapes={"720p": Shape("720p×81f", 720, 1280, 81), "480p": Shape("480p×81f", 480, 832, 81)},
    default_shapes=("720p",),
    make_inputs=_wan_inputs,
    image_tokens=_tokens((1, 2, 2)),
    text_tokens=512,
    text_valid=512,
    joint_text=False,
    install=_installer("WanPipeline"),  # self-attention has no text and no mask
    pipeline_class="WanPipeline",
    timesteps=flow_timesteps(5.0, unipc=True),
    scheduler_note="UniPCMultistepScheduler, flow shift 5 (diffusers' recommendation for 720p)",
    small_config=dict(num_attention_heads=2, attention_head_dim=64, in_channels=4, out_channels=4, text_dim=32,
                      freq_dim=32, ffn_dim=64, num_layers=2),
)

# HunyuanVideo 1.5 T2V condition tokens: 1,000 Qwen text (40 valid), 256 ByT5 (none valid: no quoted text),
# 729 SigLIP image slots (all invalid in T2V); the transformer puts the valid ones first.
HV15_TEXT, HV15_TEXT_VALID, HV15_BYT5, HV15_IMAGE = 1000, 40, 256, 729


def _hunyuan15_inputs(transformer: Any, shape: Shape, device: torch.device) -> dict:
    cfg = transformer.config
    t, h, w = shape.latent(spatial=16)
    gen = torch.Generator(device=device).manual_seed(0)
    dtype = torch.bfloat16
    mask = torch.zeros(1, HV15_TEXT, dtype=torch.bool, device=device)
    mask[:, :HV15_TEXT_VALID] = True
    return dict(
        hidden_states=torch.randn(1, cfg.in_channels, t, h, w, generator=gen, device=device, dtype=dtype),
        timestep=torch.tensor([500.0], device=device, dtype=dtype),  # as the pipeline passes it (latents' dtype)
        encoder_hidden_states=torch.randn(1, HV15_TEXT, cfg.text_embed_dim, generator=gen, device=device, dtype=dtype),
        encoder_attention_mask=mask,
        encoder_hidden_states_2=torch.randn(1, HV15_BYT5, cfg.text_embed_2_dim, generator=gen, device=device,
                                            dtype=dtype),
        encoder_attention_mask_2=torch.zeros(1, HV15_BYT5, dtype=torch.bool, device=device),
        image_embeds=torch.zeros(1, HV15_IMAGE, cfg.image_embed_dim, device=device, dtype=dtype),  # T2V
        return_dict=False,
    )


HUNYUAN15 = ModelSpec(
    name="hunyuan-video-1.5",
    diffusers_class="HunyuanVideo15Transformer3DModel",
    shapes={"720p": Shape("720p×121f", 720, 1280, 121), "480p": Shape("480p×121f", 480, 848, 121)},
    default_shapes=("720p",),
    make_inputs=_hunyuan15_inputs,
    image_tokens=_tokens((1, 1, 1), spatial=16),  # VAE 16x space, patch 1
    text_tokens=HV15_TEXT + HV15_BYT5 + HV15_IMAGE,
    text_valid=HV15_TEXT_VALID,
    install=_installer("HunyuanVideo15Pipeline"),
    pipeline_class="HunyuanVideo15Pipeline",
    timesteps=flow_timesteps(7.0),
    scheduler_note="FlowMatchEulerDiscreteScheduler, shift 7 (assumed)",
    small_config=dict(in_channels=17, out_channels=8, num_attention_heads=2, attention_head_dim=64, num_layers=2,
                      num_refiner_layers=1, mlp_ratio=2.0, text_embed_dim=32, text_embed_2_dim=32, image_embed_dim=32,
                      rope_axes_dim=(16, 24, 24), target_size=128, task_type="t2v"),
)

MODELS: dict[str, ModelSpec] = {m.name: m for m in (HUNYUAN, WAN, HUNYUAN15)}


CAP_SETTING = re.compile(r"cap(0?\.\d*[1-9]\d*|1(\.0*)?)")  # capD: τ 0.9 capped at density D in (0, 1]
# NAME-fp8 / NAME-int8: setting NAME (not stock) with that xattn.precision, beside NAME in bf16 in the same run
PRECISION_SUFFIX = re.compile(r"(.+)-(fp8|int8)")


def _base_setting(text: str) -> bool:
    return text in SETTINGS or CAP_SETTING.fullmatch(text) is not None


def setting_name(text: str) -> str:
    """``--settings`` value check: one of ``SETTINGS``, ``capD`` for any density D in (0, 1] (e.g. ``cap0.49``,
    the density a quality setting keeps on the mini model), or either of those but stock with ``-fp8`` / ``-int8``
    (that setting in 8-bit precision, e.g. ``cap0.35-int8``)."""
    suffixed = PRECISION_SUFFIX.fullmatch(text)
    if _base_setting(text) or (suffixed and suffixed[1] != "stock" and _base_setting(suffixed[1])):
        return text
    raise argparse.ArgumentTypeError(f"unknown setting {text!r}: one of {', '.join(SETTINGS)}, or capD with D a "
                                     f"density in (0, 1] (e.g. cap0.49), optionally with -fp8 or -int8 (not stock)")


def xattn_settings(warmup: int, precision: str = "bf16", names: Iterable[str] = ()) -> dict[str, dict | None]:
    """Setting name → config for our attention (None: stock diffusers). Every setting times one sparse step
    (the forward runs with the step set past the warmup), except ``dense`` whose every layer is dense.
    ``precision`` ("bf16", "fp8", "int8": ``xattn.precision``) applies to every setting but stock; ``names``
    adds any ``capD`` among them (τ 0.9 capped at density D) and any ``NAME-fp8`` / ``NAME-int8`` (setting NAME
    with that precision, whatever ``precision`` is)."""
    common = {"stride": 8, "block_size": 128, "collect_stats": True, "time_stats": True, "dense_backend": "fast"}
    if precision != "bf16":
        common["precision"] = precision
    tau09 = {**common, "threshold": 0.9, "warmup_steps": warmup}
    # cap0.2 / cap0.35 / cap0.5 always, and any other capD asked for: τ 0.9 capped at density D
    names = list(names)
    suffixed = [(n, m[1], m[2]) for n in names if (m := PRECISION_SUFFIX.fullmatch(n))]
    bases = [base for _, base, _ in suffixed]
    caps = [n for n in ("cap0.2", "cap0.35", "cap0.5", *names, *bases) if CAP_SETTING.fullmatch(n)]
    settings: dict[str, dict | None] = {
        "stock": None,
        "dense": {**common, "threshold": 1.0, "warmup_steps": 0},
        **{n: {**tau09, "max_density": float(n[3:])} for n in caps},
        "tau0.9": {**tau09},
        # a step that reuses the previous step's selections (measured: an untimed estimating step runs first)
        "cap0.35-reuse2": {**tau09, "max_density": 0.35, "selection_reuse": 2},
    }
    for name, base, prec in suffixed:
        if settings.get(base) is not None:
            settings[name] = {**settings[base], "precision": prec}
    return settings


# ---------------------------------------------------------------- building


@contextlib.contextmanager
def _fast_init(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Construct modules directly on ``device`` in ``dtype`` without running torch's (slow, CPU-style) init."""
    classes = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Embedding,
               torch.nn.LayerNorm, torch.nn.GroupNorm)
    saved = [(c, c.reset_parameters) for c in classes]
    old_dtype = torch.get_default_dtype()
    try:
        for c, _ in saved:
            c.reset_parameters = lambda self: None
        torch.set_default_dtype(dtype)
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(old_dtype)
        for c, fn in saved:
            c.reset_parameters = fn


@torch.no_grad()
def build_transformer(spec: ModelSpec, device: torch.device, seed: int = 0, **config: Any) -> Any:
    """The model at diffusers' default config (``config`` overrides, for tests) with random bf16 weights:
    N(0, 0.02) matrices, norm weights 1, biases 0."""
    import diffusers

    cls = getattr(diffusers, spec.diffusers_class)
    with _fast_init(device, torch.bfloat16):
        model = cls(**config)
    gen = torch.Generator(device=device).manual_seed(seed)
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            p.normal_(0.0, 0.02, generator=gen)
        elif name.endswith("bias"):
            p.zero_()
        else:
            p.fill_(1.0)
    return model.eval().requires_grad_(False)
