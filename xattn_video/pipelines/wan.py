"""Wan 2.1 / 2.2 adapter (text- and image-to-video, including Wan 2.2 A14B's second expert).

Token layout: ``attn1`` of each block is self-attention over video tokens only (no text, no mask), numbered by
block (0..39 for 14B). Never sparse: ``attn2`` (cross-attention to the text, and in Wan 2.1 I2V to the CLIP image
tokens) is not hooked, so it stays dense; I2V conditioning otherwise enters by channel concatenation of the
latents, which does not change the self-attention tokens. Wan 2.2 A14B: ``transformer`` (high noise) and
``transformer_2`` (low noise) both get XAttention; ``transformer_2``'s layers are ``t2.<n>`` in statistics and
take their τ / dense layers from ``xattn.expert2``.
"""

from __future__ import annotations

from typing import Any

from .family import FamilyAdapter, register_family


def attention_layers(transformer: Any) -> list[Any]:
    """Self-attention (``attn1``) of each block, in block order."""
    blocks = getattr(transformer, "blocks", None)
    if blocks is None or not all(hasattr(b, "attn1") for b in blocks):
        raise TypeError(f"{type(transformer).__name__} is not a Wan transformer (it needs blocks[i].attn1)")
    return [block.attn1 for block in blocks]


WAN = register_family(FamilyAdapter(
    name="wan",
    pipeline_classes=("WanPipeline", "WanImageToVideoPipeline"),
    patch_modules=("diffusers.models.transformers.transformer_wan",),
    attention_layers=attention_layers,
    joint_text=False,
    never_sparse="cross-attention attn2 (text, and CLIP image tokens in Wan 2.1 I2V)",
))
