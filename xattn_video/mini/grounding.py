"""Cross-attention grounding for the mini model's training (``mini.train --grounding-weight``).

Why: the shipped weights bind direction words to the wrong object in two-object prompts (README, "What it can and
cannot do yet"), although the text encoder's states carry the binding (a linear probe reads it 99.8-100%). The
procedural data knows where each object is, so training can say directly which text each video token should read:
the tokens inside object i's track should put their cross-attention on the prompt's i-th clause ("a red ball moving
right"), not the other one's — TokenCompose's token loss (Wang et al., CVPR 2024) with the renderer's masks in place
of segmentation masks.

- :func:`clause_spans`: the token positions of each clause (ByT5 tokens are the cleaned prompt's bytes).
- :func:`token_regions`: each object's coverage of the transformer's tokens, from its coverage of the latent grid
  (``train.latent_thumbnail`` of the renderer's masks, which travels with the latents through the training pool).
- :class:`CrossAttentionMaps`: records the blocks' cross-attention probabilities (mean over heads) during a forward.
- :func:`grounding_loss`: for each clause, 1 − (its attention mass that comes from its object's tokens) / (its
  attention mass from all tokens), averaged over clauses, clips and layers.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .grammar import phrase_spans


def clause_spans(prompt: str) -> list[tuple[int, int]]:
    """[start, end) token positions of the grammar's phrases in ``prompt``, in order (at most two), as the mini text
    encoder sees it: the prompt cleaned as ``WanPipeline`` cleans it, one token per byte (the grammar is ASCII)."""
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean

    text = prompt_clean(prompt)
    if not text.isascii():
        return []
    return phrase_spans(text)


def token_regions(latent: torch.Tensor, patch: tuple[int, int] = (2, 2)) -> torch.Tensor:
    """Coverage of the latent cells [B, S, F, h, w] (``train.latent_thumbnail`` of the masks) -> coverage of each video token [B, S, N], N = F·(h/patch)·(w/patch), in
    the transformer's token order (latent frame, row, column)."""
    B, S = latent.shape[:2]
    return F.avg_pool3d(latent, (1, *patch)).reshape(B, S, -1)


class _RecordingProcessor:
    """An attention processor for a block's cross-attention (``attn2``): the stock processor's output, and the
    attention probabilities softmax(q·kᵀ/√d) averaged over heads appended to ``sink`` ([B, N, L] float32)."""

    def __init__(self, inner: Any, sink: list[torch.Tensor]) -> None:
        self.inner, self.sink = inner, sink

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 *args: Any, **kwargs: Any) -> torch.Tensor:
        q = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1)).transpose(1, 2)
        k = attn.norm_k(attn.to_k(encoder_hidden_states)).unflatten(2, (attn.heads, -1)).transpose(1, 2)
        scores = q.float() @ k.float().transpose(-1, -2) * q.shape[-1] ** -0.5
        self.sink.append(scores.softmax(-1).mean(1))
        return self.inner(attn, hidden_states, encoder_hidden_states, *args, **kwargs)


class CrossAttentionMaps:
    """``with CrossAttentionMaps(transformer) as maps:`` — during the block, every ``attn2`` of the Wan transformer
    records its cross-attention probabilities into ``maps.layers`` (one [B, N, L] tensor per block and forward);
    the stock processors are back on exit. Eager only (the recording is a Python side effect)."""

    def __init__(self, transformer: Any) -> None:
        self.transformer = transformer
        self.layers: list[torch.Tensor] = []
        self._saved: list[tuple[Any, Any]] = []

    def __enter__(self) -> "CrossAttentionMaps":
        for block in self.transformer.blocks:
            self._saved.append((block.attn2, block.attn2.processor))
            block.attn2.set_processor(_RecordingProcessor(block.attn2.processor, self.layers))
        return self

    def __exit__(self, *exc: Any) -> None:
        for module, processor in self._saved:
            module.set_processor(processor)
        self._saved.clear()


def grounding_loss(layers: list[torch.Tensor], regions: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """TokenCompose's token loss over the clauses of ``prompts`` (clips without a clause, e.g. the empty prompts of
    guidance training, count for nothing): mean over layers, clips and clauses of 1 − Σ_n r_i[n]·a_i[n] / Σ_n a_i[n],
    where a_i[n] is the attention token n puts on clause i's text positions and r_i[n] object i's coverage of n.
    layers: [B, N, L] each; regions [B, S, N] (slot i = the prompt's i-th object). One batched product per call
    (no loop over clips or layers on the device)."""
    mass, present = clause_mass(layers, prompts, regions.shape[1], regions.dtype)
    if not present.any():
        return regions.new_zeros(())
    grounded = (mass * regions).sum(-1) / mass.sum(-1).clamp_min(1e-12)  # [layers, B, S]
    return (1 - grounded)[:, present].mean()


def clause_mass(layers: list[torch.Tensor], prompts: list[str], slots: int,
                dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention each video token puts on each clause of its clip's prompt: ([layers, B, slots, N] — slot i is
    the prompt's i-th clause, zeros where it has none — and bool [B, slots]: the clause exists). layers: [B, N, L]
    each, as :class:`CrossAttentionMaps` records them."""
    stacked = torch.stack(layers).to(dtype)
    B, L = stacked.shape[1], stacked.shape[-1]
    clauses = torch.zeros(B, slots, L)  # [b, i, l] = 1 where text position l belongs to clip b's i-th clause
    for b, prompt in enumerate(prompts):
        for slot, (start, end) in enumerate(clause_spans(prompt)[:slots]):
            clauses[b, slot, start:min(end, L)] = 1
    present = (clauses.sum(-1) > 0).to(stacked.device)
    return torch.einsum("kbnl,bsl->kbsn", stacked, clauses.to(stacked.device, dtype)), present


def prompts_in_window(prompts: list[str], sigma: torch.Tensor, sigma_min: float) -> list[str]:
    """``prompts`` with those of clips whose training σ is below ``sigma_min`` emptied, so that
    :func:`grounding_loss` counts only the clips at σ ≥ ``sigma_min`` (the noise levels where a sample's colours
    and motions are decided, σ ≈ 0.98–0.95: ``benchmarks/mini_commit_probe.py``). sigma: [B] (or [B, 1, ...])."""
    if sigma_min <= 0:
        return list(prompts)
    low = (sigma.reshape(len(prompts), -1)[:, 0] < sigma_min).tolist()
    return ["" if below else prompt for prompt, below in zip(prompts, low)]


__all__ = ["CrossAttentionMaps", "clause_mass", "clause_spans", "grounding_loss", "prompts_in_window", "token_regions"]
