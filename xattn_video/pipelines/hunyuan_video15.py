"""HunyuanVideo 1.5 adapter (text- and image-to-video).

Token layout (``HunyuanVideo15Transformer3DModel``): 54 dual-stream blocks (layers 0..53) with joint
self-attention over [video, condition tokens]. The condition tokens are re-ordered by the transformer as
[valid image (SigLIP, I2V only), valid ByT5, valid Qwen text, padding...], so the valid keys form a prefix and the
module receives a [B, S_cond] mask; the processor pads it with True for the video tokens and builds a
[B, 1, S, S] mask per call. We read the key padding from the module-level mask instead (one object per forward:
one host synchronization per forward, not per layer). Never sparse: the token refiner (not hooked); the I2V
image tokens sit in the condition region, which text forcing keeps dense (all queries there attend densely and
every video query keeps them).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .family import FamilyAdapter, register_family


def attention_layers(transformer: Any) -> list[Any]:
    blocks = getattr(transformer, "transformer_blocks", None)
    if blocks is None or not all(hasattr(b, "attn") for b in blocks):
        raise TypeError(f"{type(transformer).__name__} is not a HunyuanVideo 1.5 transformer")
    return [block.attn for block in blocks]


def module_mask(mask: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
    """[B, S_cond] condition mask -> [B, 1, 1, S_video + S_cond] bool key padding (video tokens always valid)."""
    padded = F.pad(mask.bool(), (hidden_states.shape[1], 0), value=True)
    return padded[:, None, None, :]


HUNYUAN_VIDEO15 = register_family(FamilyAdapter(
    name="hunyuan_video15",
    pipeline_classes=("HunyuanVideo15Pipeline", "HunyuanVideo15ImageToVideoPipeline"),
    patch_modules=("diffusers.models.transformers.transformer_hunyuan_video15",),
    attention_layers=attention_layers,
    joint_text=True,
    module_mask=module_mask,
    never_sparse="token refiner; I2V image tokens and text (condition region, kept dense by text forcing)",
))
