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

import contextlib
from collections.abc import Iterator
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


@contextlib.contextmanager
def asked_size(pipe: Any, height: int, width: int) -> Iterator[None]:
    """HunyuanVideo 1.5 I2V generates ``height`` x ``width`` (other pipelines: no change).

    Its ``__call__`` takes no height/width: it picks the bucket nearest the image's aspect ratio at the
    transformer's ``target_size`` (a 4:3 image on the tiny model gave 144x112 for an asked 256x256, while the
    run record said 256). Pinning the bucket to the asked size makes the pipeline crop-resize the image to it, as
    Wan's I2V does; any multiple of 16 (the VAE's compression, patch 1) is a size the model can take.
    """
    processor = getattr(pipe, "video_processor", None)
    if type(pipe).__name__ != "HunyuanVideo15ImageToVideoPipeline" or processor is None:
        yield
        return
    def pinned(*_args: Any, **_kwargs: Any) -> tuple[int, int]:  # called with the image's size and target_size
        return height, width

    processor.calculate_default_height_width = pinned
    try:
        yield
    finally:
        del processor.calculate_default_height_width  # the class's method again
