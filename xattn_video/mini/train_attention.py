"""A training-time attention processor for the mini model's Wan transformer: diffusers' ``WanAttnProcessor`` math with
the rotary embedding written as ``x·cos + rotate_pairs(x)·sin``.

diffusers applies the rotary embedding by writing the even and odd channels into an empty tensor through strided
slices; under ``torch.compile`` its backward becomes one fused kernel that took 12 of the 56 ms of a mini training
step on an H100 (benchmarks/results/mini-train-step-*.md). The form here has no strided writes. It changes nothing
in the weights or the outputs (``tests/test_mini_train_attention.py``), so a folder trained with it is read by the
stock processor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...) along the last dimension."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, L, H, D]; cos, sin [1, L, 1, D], each pair's value repeated (diffusers' ``repeat_interleave_real``)."""
    return (x * cos + rotate_pairs(x) * sin).type_as(x)


class TrainingAttnProcessor:
    """Self- and cross-attention of a ``WanAttention`` without image keys (the mini model has none)."""

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None,
                 rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        if attn.add_k_proj is not None or attn.fused_projections:
            raise ValueError("TrainingAttnProcessor: image keys and fused projections are not supported")
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        query = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(attn.to_k(context)).unflatten(2, (attn.heads, -1))
        value = attn.to_v(context).unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query, key = apply_rotary(query, *rotary_emb), apply_rotary(key, *rotary_emb)
        out = F.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                                             attn_mask=attention_mask)
        out = out.transpose(1, 2).flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


def use_training_attention(transformer: torch.nn.Module) -> None:
    """Give every attention of a ``WanTransformer3DModel`` the training processor."""
    transformer.set_attn_processor(TrainingAttnProcessor())


__all__ = ["TrainingAttnProcessor", "apply_rotary", "rotate_pairs", "use_training_attention"]
