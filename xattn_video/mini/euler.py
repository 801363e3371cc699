"""Plain Euler sampling of the mini model, for probes that look inside the denoising loop.

The shipped pipeline samples with UniPC; probes (``benchmarks/mini_commit_probe.py``, ``mini_routing_probe.py``) use
this first-order loop so that each step's prediction and the state around the transformer call are theirs to read or
change. Guidance 1, CPU, latents normalised as in training.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .data import to_frames
from .model import encode_prompts, latent_norm
from .train import shifted_sigma


@torch.no_grad()
def euler_sample(pipe: Any, prompt: str, seed: int, steps: int, shift: float, shape: tuple[int, int, int],
                 before_step: Callable[[float], None] | None = None,
                 after_step: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Normalised latents [1, C, (frames-1)/4+1, height/4, width/4] sampled from the seed's noise at ``shape``
    (frames, height, width) in ``steps`` Euler steps of the σ schedule shifted by ``shift``.

    ``before_step(σ)`` runs before each transformer call; ``after_step(σ, x, v)`` after it, with the step's latents
    and velocity (the clean-video prediction is x − σ·v)."""
    frames, height, width = shape
    z_shape = (1, pipe.vae.config.z_dim, (frames - 1) // 4 + 1, height // 4, width // 4)
    x = torch.randn(z_shape, generator=torch.Generator().manual_seed(seed))
    text = encode_prompts(pipe.text_encoder, [prompt], "cpu")
    sigmas = shifted_sigma(torch.linspace(1, 0, steps + 1), shift)
    for i in range(steps):
        if before_step is not None:
            before_step(float(sigmas[i]))
        v = pipe.transformer(x, timestep=sigmas[i:i + 1] * 1000, encoder_hidden_states=text, return_dict=False)[0]
        if after_step is not None:
            after_step(sigmas[i], x, v)
        x = x + (sigmas[i + 1] - sigmas[i]) * v
    return x


@torch.no_grad()
def decode_frames(pipe: Any, z: torch.Tensor) -> np.ndarray:
    """Frames [T, H, W, 3] in [0, 1] of normalised latents ``z`` [1, C, F, h, w] (the VAE's decode, clamped)."""
    mean, std = latent_norm(pipe.vae)
    return to_frames(pipe.vae.decode(z * std + mean).sample.clamp(-1, 1)[0])
