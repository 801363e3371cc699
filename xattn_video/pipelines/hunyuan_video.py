"""HunyuanVideo (2024; text- and image-to-video) adapter, and ``XAttnHunyuanVideoPipeline``.

Token layout: joint self-attention over [video, text] in the 20 dual-stream blocks (layers 0..19) and the 40
single-stream blocks (20..59); text starts after the module's ``hidden_states`` and the transformer passes a
[B, 1, 1, S] key-padding mask (padded text last). Never sparse: the token refiner's attention (not hooked).
Image-to-video: the conditioning image's latent enters the video tokens (``latent_concat``: as extra input
channels of latent frame 0; ``token_replace``: as latent frame 0 itself), so those are ordinary video tokens and
go sparse like the rest. The Llava text encoder's image tokens (every 2nd / 4th vision patch) come first in the
text embedding, before the valid text and the padding: they sit in the text region (text_start = the video token
count), which text forcing keeps dense, and the key-padding mask stays a prefix that counts them as valid keys
(tests/test_families.py checks both condition types on the tiny ``tiny-hunyuan-i2v``).
"""

from __future__ import annotations

from typing import Any

from diffusers import (AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline,
                       HunyuanVideoTransformer3DModel)
from transformers import CLIPTextModel, CLIPTokenizer, LlamaModel, LlamaTokenizerFast

from ..config import XAttnConfig
from .dispatch import has_xattention
from .family import FamilyAdapter, XAttentionHandle, apply_xattention, register_family

__all__ = ["HUNYUAN_VIDEO", "XAttentionHandle", "XAttnHunyuanVideoPipeline", "apply_xattention", "attention_layers"]


def attention_layers(transformer: Any) -> list[Any]:
    """Attention modules in layer order: dual-stream blocks first (0..19), then single-stream (20..59)."""
    dual = getattr(transformer, "transformer_blocks", None)
    single = getattr(transformer, "single_transformer_blocks", None)
    if dual is None or single is None:
        raise TypeError(
            f"{type(transformer).__name__} is not a HunyuanVideo transformer (it needs transformer_blocks and "
            f"single_transformer_blocks)"
        )
    return [block.attn for block in list(dual) + list(single)]


HUNYUAN_VIDEO = register_family(FamilyAdapter(
    name="hunyuan_video",
    pipeline_classes=("HunyuanVideoPipeline", "HunyuanVideoImageToVideoPipeline"),
    patch_modules=("diffusers.models.transformers.transformer_hunyuan_video",),
    attention_layers=attention_layers,
    joint_text=True,
    never_sparse="token refiner self-attention (over text only)",
))


class XAttnHunyuanVideoPipeline(HunyuanVideoPipeline):
    """``HunyuanVideoPipeline`` with XAttention.

    One behaviour for every way of building it: construction (directly, ``from_pretrained``, ``from_pipe``)
    installs XAttention with the defaults (unless the transformer already has it, e.g. ``from_pipe`` of another
    XAttention pipeline: that install serves both, as the step follows whichever pipeline runs); ``from_pretrained(path, xattn=cfg)`` installs ``cfg`` instead
    (``xattn=False``: nothing), ``enable_xattention(cfg)`` changes it and ``disable_xattention()`` removes it.
    ``save_pretrained`` writes the stock class name into ``model_index.json``, so the saved folder loads with
    ``DiffusionPipeline.from_pretrained`` (as a stock ``HunyuanVideoPipeline``) and with this class.
    """

    # the stock annotations: from_pipe matches components by them
    def __init__(self, text_encoder: LlamaModel, tokenizer: LlamaTokenizerFast,
                 transformer: HunyuanVideoTransformer3DModel, vae: AutoencoderKLHunyuanVideo,
                 scheduler: FlowMatchEulerDiscreteScheduler, text_encoder_2: CLIPTextModel, tokenizer_2: CLIPTokenizer):
        super().__init__(text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae,
                         scheduler=scheduler, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2)
        self.__dict__["_xattn_handle"] = None
        if not has_xattention(transformer):  # from_pipe of an XAttn pipeline: its install already serves both
            self.enable_xattention(None)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any,
                        xattn: XAttnConfig | dict | bool | None = None, **kwargs: Any) -> "XAttnHunyuanVideoPipeline":
        pipe = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        if xattn is False:
            pipe.disable_xattention()
        elif xattn is not None:
            pipe.enable_xattention(xattn)
        return pipe

    def to_json_string(self) -> str:
        # model_index.json names the stock class: the folder is an ordinary HunyuanVideo checkpoint.
        return super().to_json_string().replace(f'"{type(self).__name__}"', '"HunyuanVideoPipeline"', 1)

    @property
    def xattn_handle(self) -> XAttentionHandle | None:
        return self.__dict__.get("_xattn_handle")

    def enable_xattention(self, config: XAttnConfig | dict | None = None) -> XAttentionHandle:
        """(Re)install XAttention with ``config`` (None: the defaults)."""
        self.disable_xattention()
        self.__dict__["_xattn_handle"] = apply_xattention(self, config)
        return self.__dict__["_xattn_handle"]

    def disable_xattention(self) -> None:
        handle = self.xattn_handle
        if handle is not None:
            handle.remove()
            self.__dict__["_xattn_handle"] = None
