"""Deepen a trained mini model: load a folder's transformer or text encoder into a copy with more blocks.

The folder's blocks fill the first places; each added block is appended with the output projections of its residual
branches zeroed (Wan: self-attention, cross-attention and feed-forward outputs; UMT5: self-attention and
feed-forward outputs), so it starts as the identity and the deeper model computes exactly what the folder's did.
Training then grows the new blocks out of zero (their output projections get gradients at once, the rest once those
are non-zero). This lets an idea that needs a deeper model be tried from the shipped weights in one short segment.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def _zero(linear: nn.Linear) -> None:
    with torch.no_grad():
        linear.weight.zero_()
        if linear.bias is not None:
            linear.bias.zero_()


def silence_wan_block(block: nn.Module) -> None:
    """Make a ``WanTransformerBlock`` the identity: every residual branch's output projection zero."""
    _zero(block.attn1.to_out[0])
    _zero(block.attn2.to_out[0])
    _zero(block.ffn.net[-1])


def silence_umt5_block(block: nn.Module) -> None:
    """Make a ``UMT5Block`` (encoder) the identity: its self-attention and feed-forward outputs zero."""
    _zero(block.layer[0].SelfAttention.o)
    _zero(block.layer[-1].DenseReluDense.wo)


def blocks_of(module: nn.Module) -> tuple[str, nn.ModuleList, Callable[[nn.Module], None]]:
    """The state-dict prefix, the list and the silencer of a Wan transformer's or a UMT5 encoder's blocks."""
    if hasattr(module, "blocks"):
        return "blocks.", module.blocks, silence_wan_block
    return "encoder.block.", module.encoder.block, silence_umt5_block


def load_deepened(target: nn.Module, source: dict[str, torch.Tensor]) -> int:
    """Load ``source`` (the state dict of a model with k blocks) into ``target`` (the same model with n >= k
    blocks): all shared weights and blocks 0..k-1 from ``source``; blocks k..n-1 silenced. Returns k.

    Raises ValueError naming the first mismatch (a deeper source, or a weight of another shape or name)."""
    prefix, blocks, silence = blocks_of(target)
    depth = 1 + max((int(key[len(prefix):].split(".")[0]) for key in source if key.startswith(prefix)), default=-1)
    if depth > len(blocks):
        raise ValueError(f"the folder's model has {depth} blocks, more than the {len(blocks)} asked for")
    own = target.state_dict()
    for key, value in source.items():
        if key not in own or own[key].shape != value.shape:
            raise ValueError(f"weight {key!r} of shape {tuple(value.shape)} does not fit the model")
    new_blocks = tuple(f"{prefix}{i}." for i in range(depth, len(blocks)))
    outside = sorted(key for key in own if key not in source and not key.startswith(new_blocks))
    if outside:
        raise ValueError(f"the folder lacks weight {outside[0]!r}")
    target.load_state_dict(source, strict=False)
    for block in blocks[depth:]:
        silence(block)
    return depth


__all__ = ["blocks_of", "load_deepened", "silence_umt5_block", "silence_wan_block"]
