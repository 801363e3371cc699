"""Memory a generation needs, estimated from height × width × frames before anything is allocated.

A lower bound of the unavoidable buffers, so that impossible sizes (``--frames 100001``) are refused at once
with the numbers, instead of filling the machine's memory minutes later. Sizes that pass may still not fit.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import ConfigError, RunConfig, TINY_MODELS, model_folder

GIB = 1024**3


class GenerationTooLarge(ConfigError):
    """The requested video cannot fit in memory; the message names what it needs and what there is."""


@dataclass(frozen=True)
class ModelDims:
    """What the estimate needs of a HunyuanVideo-style model (transformer + causal video VAE)."""

    hidden: int = 24 * 128  # transformer width (heads × head_dim)
    mlp_ratio: float = 4.0
    patch: int = 2
    patch_t: int = 1
    vae_spatial: int = 8
    vae_temporal: int = 4
    vae_channels: int = 128  # channels of the VAE decoder's full-resolution stage


TINY_DIMS = ModelDims(hidden=2 * 64, mlp_ratio=2.0, vae_channels=8)  # see pipelines/tiny.py


def model_dims(path: str) -> ModelDims:
    """Dims of the tiny model, or read from a local folder's configs; HunyuanVideo's when unknown (hub ids)."""
    if path in TINY_MODELS:  # every built-in tiny model is about this small
        return TINY_DIMS
    dims = ModelDims()
    path = model_folder(path)
    try:
        t = json.loads((Path(path).expanduser() / "transformer" / "config.json").read_text())
        vae = json.loads((Path(path).expanduser() / "vae" / "config.json").read_text())
        return ModelDims(
            hidden=int(t["num_attention_heads"]) * int(t["attention_head_dim"]),
            mlp_ratio=float(t.get("mlp_ratio", dims.mlp_ratio)), patch=int(t.get("patch_size", dims.patch)),
            patch_t=int(t.get("patch_size_t", dims.patch_t)),
            vae_spatial=int(vae.get("spatial_compression_ratio", dims.vae_spatial)),
            vae_temporal=int(vae.get("temporal_compression_ratio", dims.vae_temporal)),
            vae_channels=int(vae.get("block_out_channels", [dims.vae_channels])[0]),
        )
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return dims


@dataclass(frozen=True)
class MemoryEstimate:
    device_bytes: int  # peak on the compute device: transformer activations or the VAE decode
    host_bytes: int  # the decoded float32 frames handed back to Python

    def describe(self, on_cpu: bool) -> str:
        if on_cpu:
            return f"about {(self.device_bytes + self.host_bytes) / GIB:.1f} GiB of RAM"
        return f"about {self.device_bytes / GIB:.1f} GiB of GPU memory and {self.host_bytes / GIB:.1f} GiB of RAM"


def estimate(run: RunConfig, dims: ModelDims, on_cpu: bool) -> MemoryEstimate:
    """Lower bound of a generation's peak memory (bytes): the transformer's per-layer activations (hidden
    states, q/k/v and MLP over every token), the VAE's decoded video, and the float32 frames on the host."""
    g = run.generation
    act_bytes = 4 if on_cpu else {"float32": 4}.get(run.model.dtype, 2)
    vae_bytes = 4 if on_cpu else 2
    latent_t = (g.frames - 1) // dims.vae_temporal + 1
    tokens = (latent_t // dims.patch_t) * (g.height // dims.vae_spatial // dims.patch) \
        * (g.width // dims.vae_spatial // dims.patch) + g.max_sequence_length
    transformer = tokens * dims.hidden * act_bytes * (4 + dims.mlp_ratio)
    pixels = g.frames * g.height * g.width
    tiled = run.model.vae_tiling is not False and run.model.path not in TINY_MODELS
    vae = pixels * 3 * vae_bytes + (0 if tiled else pixels * dims.vae_channels * vae_bytes)
    return MemoryEstimate(device_bytes=int(max(transformer, vae)), host_bytes=pixels * 3 * 4)


def available_ram() -> int | None:
    """Bytes of RAM available now (Linux MemAvailable; else physical pages); None when unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def check_fits(run: RunConfig, device: Any) -> MemoryEstimate:
    """Raise ``GenerationTooLarge`` if ``run`` cannot fit on ``device`` (a torch.device) and this machine's RAM."""
    import torch

    on_cpu = device.type != "cuda"
    need = estimate(run, model_dims(run.model.path), on_cpu)
    g = run.generation
    what = f"{g.frames} frames at {g.width}x{g.height}"
    ram = available_ram()
    host_need = need.host_bytes + (need.device_bytes if on_cpu else 0)
    if ram is not None and host_need > ram:
        raise GenerationTooLarge(f"{what} needs {need.describe(on_cpu)}, but this machine has "
                                 f"{ram / GIB:.1f} GiB of RAM available; use fewer frames or a smaller size")
    if not on_cpu:
        total = torch.cuda.get_device_properties(device).total_memory
        if need.device_bytes > total:
            raise GenerationTooLarge(f"{what} needs {need.describe(on_cpu)}, but {device} "
                                     f"({torch.cuda.get_device_name(device)}) has {total / GIB:.1f} GiB; "
                                     f"use fewer frames or a smaller size")
    return need
