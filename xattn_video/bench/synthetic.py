"""Synthetic, video-like attention inputs for benchmarks (no model weights needed).

Each head gets queries and keys whose dot products follow a locality kernel over the (t, h, w) position of
the image tokens, built with random Fourier features: with ω ~ N(0, diag(ℓ_t⁻², ℓ_h⁻², ℓ_w⁻²)) and
φ(x) = [cos ω·x, sin ω·x] / √m (m = D/2 frequencies), φ(x)·φ(y) ≈ exp(−½ Σ (Δ_a/ℓ_a)²). Queries and keys
are √(β·√D)·φ(x) plus Gaussian noise, so the attention logits are ≈ β·kernel(Δ) + noise. Three head kinds:

- spatial:  sharp in time (ℓ_t = 0.5 frames), a few latent pixels in space (ℓ_h = ℓ_w = 3);
- temporal: the same spatial spot across frames (ℓ_t = 6, ℓ_h = ℓ_w = 0.75);
- broad:    smooth everywhere (ℓ_t = 12, ℓ_h = ℓ_w = 20).

Text tokens (HunyuanVideo appends 256) are plain Gaussian vectors. Values are standard normal.
"""

from __future__ import annotations

import math

import torch

HEAD_KINDS = {
    "spatial": (0.5, 3.0, 3.0),
    "temporal": (6.0, 0.75, 0.75),
    "broad": (12.0, 20.0, 20.0),
}

# HunyuanVideo latent grids (frames, height, width after patching) + 256 text tokens.
HUNYUAN_GRIDS = {
    18616: (9, 34, 60),  # 544×960, 33 frames
    67576: (33, 34, 60),  # 544×960, 129 frames
    119056: (33, 45, 80),  # 720×1280, 129 frames
}
HUNYUAN_TEXT_TOKENS = 256


def grid_for_tokens(tokens: int) -> tuple[int, int, int]:
    """The HunyuanVideo latent grid behind a token count (image + 256 text)."""
    if tokens not in HUNYUAN_GRIDS:
        raise ValueError(f"no HunyuanVideo grid for {tokens} tokens; known: {sorted(HUNYUAN_GRIDS)}")
    return HUNYUAN_GRIDS[tokens]


@torch.no_grad()
def video_like_qkv(
    grid: tuple[int, int, int],
    *,
    text_tokens: int = HUNYUAN_TEXT_TOKENS,
    heads: int = 24,
    head_dim: int = 128,
    sharpness: float = 12.0,
    noise: float = 0.5,
    seed: int = 0,
    device: str | torch.device = "cuda",
    dtype: torch.dtype = torch.bfloat16,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """q, k, v [1, S, H, D] with S = t·h·w + text_tokens, and the kind of each head (cycled)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    T, Hh, W = grid
    n_img = T * Hh * W
    S = n_img + text_tokens
    m = head_dim // 2
    tt, hh, ww = torch.meshgrid(torch.arange(T), torch.arange(Hh), torch.arange(W), indexing="ij")
    pos = torch.stack([tt, hh, ww], dim=-1).reshape(n_img, 3).to(device=device, dtype=torch.float32)
    kinds = [list(HEAD_KINDS)[i % len(HEAD_KINDS)] for i in range(heads)]
    q = torch.empty(1, S, heads, head_dim, device=device, dtype=dtype)
    k = torch.empty_like(q)
    for h, kind in enumerate(kinds):
        scale = torch.tensor(HEAD_KINDS[kind], dtype=torch.float32)
        omega = (torch.randn(3, m, generator=g) / scale[:, None]).to(device)
        beta = sharpness * (0.75 + 0.5 * torch.rand((), generator=g).item())
        amp = math.sqrt(beta * math.sqrt(head_dim) / m)
        phase = pos @ omega  # [n_img, m]
        feats = torch.cat([phase.cos(), phase.sin()], dim=-1) * amp
        for dst in (q, k):
            noise_t = torch.randn(S, head_dim, generator=g).to(device) * noise
            dst[0, :n_img, h] = (feats + noise_t[:n_img]).to(dtype)
            dst[0, n_img:, h] = (noise_t[n_img:] * 2.0).to(dtype)
    v = torch.randn(1, S, heads, head_dim, generator=g).to(device=device, dtype=dtype)
    return q, k, v, kinds
