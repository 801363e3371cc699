"""The largest video a model can take, from its configs alone (no weights), so a size it cannot take is refused
with one line before anything loads.

Wan (``WanTransformer3DModel``, the mini model too) precomputes its rotary table for ``rope_max_seq_len``
positions per axis (latent frames / patch_t, latent height / patch_h, latent width / patch_w); a larger grid
failed deep in the first forward ("shape '[65, 1, 1, -1]' is invalid..."): ``--model tiny-wan`` (64 positions)
stops at 1024 px and 253 frames, the real checkpoints (1024 positions) far beyond any GPU's memory.
HunyuanVideo and HunyuanVideo 1.5 build their rotary grids for the size asked: no limit of this kind (memory is
:mod:`xattn_video.memory`'s check).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import ConfigError, GenerationConfig, ModelConfig

LIMITED_FAMILIES = ("WanTransformer3DModel",)  # the others build their rotary grids for any size
SIZE_MULTIPLE = 16  # config.validate: height and width are multiples of 16, frames 4k+1


@dataclass(frozen=True)
class SizeLimits:
    """Largest frames / height / width a model takes (None: no limit from its configs) and why."""

    frames: int | None = None
    height: int | None = None
    width: int | None = None
    why: str = ""


def _compression(vae_config: dict | None, family: str) -> tuple[int, int]:
    """(time, space) compression of the VAE, from its config, else the family's usual one."""
    from .parallel import _FAMILIES

    spec = _FAMILIES.get(family, {"vae_t": 4, "vae_s": 8})
    vae = vae_config or {}
    vae_t = vae.get("temporal_compression_ratio", vae.get("scale_factor_temporal")) or spec["vae_t"]
    vae_s = vae.get("spatial_compression_ratio", vae.get("scale_factor_spatial")) or spec["vae_s"]
    return int(vae_t), int(vae_s)


def size_limits(family: str, transformer_config: dict, vae_config: dict | None = None) -> SizeLimits:
    """The limits of a transformer class ``family`` with this config (and VAE config)."""
    if family not in LIMITED_FAMILIES:
        return SizeLimits()
    positions = int(transformer_config.get("rope_max_seq_len", 1024))
    p_t, p_h, p_w = transformer_config.get("patch_size", (1, 2, 2))
    vae_t, vae_s = _compression(vae_config, family)
    # An axis of n pixels has n // vae_s // p latent patches, which must be <= positions; the largest such
    # multiple of 16 is the limit.
    height = ((positions + 1) * p_h * vae_s - 1) // SIZE_MULTIPLE * SIZE_MULTIPLE
    width = ((positions + 1) * p_w * vae_s - 1) // SIZE_MULTIPLE * SIZE_MULTIPLE
    # f frames give (f - 1) // vae_t + 1 latent frames, // p_t positions; frames are 4k+1.
    latent = (positions + 1) * p_t - 1
    frames = (latent - 1) * vae_t + 1
    frames -= (frames - 1) % 4
    why = (f"{family}'s rotary table has rope_max_seq_len={positions} positions per axis (patch "
           f"{p_t}x{p_h}x{p_w}, VAE {vae_t}x{vae_s}x{vae_s})")
    return SizeLimits(frames=frames, height=height, width=width, why=why)


def check_size_limits(limits: SizeLimits, generation: GenerationConfig, what: str) -> None:
    """``ConfigError`` (one line, naming the option) when ``generation`` asks for more than ``limits``."""
    for key, option in (("width", "--width"), ("height", "--height"), ("frames", "--frames")):
        limit = getattr(limits, key)
        value = getattr(generation, key)
        if limit is not None and value > limit:
            unit = "" if key == "frames" else " px"
            raise ConfigError(f"{option} {value} is more than {what} can take: at most {limit}{unit} "
                              f"({limits.why}); config key 'generation.{key}'")


def check_model_size(model: ModelConfig, generation: GenerationConfig) -> None:
    """Refuse a size the model cannot take, from its configs only (tiny, mini, local or hub; nothing loads)."""
    from .parallel import read_transformer_config

    family, config, vae_config = read_transformer_config(model)
    check_size_limits(size_limits(family, config, vae_config), generation, model.path)


def check_pipeline_size(pipe: Any, generation: GenerationConfig, what: str | None = None) -> None:
    """The same check for a loaded pipeline (its transformer's and VAE's configs)."""
    transformer = pipe.transformer
    family = type(transformer).__name__
    if family not in LIMITED_FAMILIES:
        return
    vae = getattr(pipe, "vae", None)
    limits = size_limits(family, dict(transformer.config), dict(vae.config) if vae is not None else None)
    check_size_limits(limits, generation, what or family)


__all__ = ["SizeLimits", "check_model_size", "check_pipeline_size", "check_size_limits", "size_limits"]
