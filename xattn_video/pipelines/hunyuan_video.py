"""XAttention on diffusers' HunyuanVideo: ``apply_xattention(pipe, config)`` and a pipeline class."""

from __future__ import annotations

from typing import Any

from diffusers import HunyuanVideoPipeline

from ..config import ConfigError, XAttnConfig, xattn_config
from ..kernels import SUPPORTED_HEAD_DIMS
from ..kernels.api import check_backend_support
from ..kernels.backend import resolve_backend
from ..stats import AttentionStats
from ..warmup import AttentionPlan, StepTracker
from ..warmup.reuse import SelectionCache
from .processor import XAttentionState, XAttnHunyuanVideoAttnProcessor


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


class XAttentionHandle:
    """What ``apply_xattention`` installed: statistics, the plan, and ``remove()`` to restore the pipeline."""

    def __init__(self, pipe: Any, layers: list[Any], originals: list[Any], state: XAttentionState):
        self.pipe = pipe
        self._layers = layers
        self._originals = originals
        self.state = state
        self.active = True

    @property
    def config(self) -> XAttnConfig:
        return self.state.config

    @property
    def stats(self) -> AttentionStats:
        return self.state.stats

    @property
    def tracker(self) -> StepTracker:
        return self.state.tracker

    def remove(self) -> None:
        """Put the original attention processors back (idempotent)."""
        if not self.active:
            return
        for attn, original in zip(self._layers, self._originals):
            attn.set_processor(original)
        self.state.reuse.clear()  # reused selections hold device memory
        self.active = False

    def reset_stats(self) -> None:
        self.state.stats.clear()

    def summary(self) -> dict:
        out = self.state.stats.summary()
        if self.state.config.time_stats:
            out["time_per_step_layer_ms"] = {
                str(step): {str(layer): t for layer, t in layers.items()}
                for step, layers in self.state.stats.timing_table().items()
            }
        return out

    def __enter__(self) -> "XAttentionHandle":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def apply_xattention(pipe: Any, config: XAttnConfig | dict | None = None) -> XAttentionHandle:
    """Install XAttention on every dual- and single-stream attention layer of a HunyuanVideo pipeline.

    ``config``: an ``XAttnConfig``, a dict of its keys, or None for the defaults (τ 0.9, stride 8, 5 dense
    warmup steps). Returns a handle; ``handle.remove()`` (or leaving a ``with`` block) restores the pipeline.
    """
    transformer = getattr(pipe, "transformer", None)
    if transformer is None:
        raise TypeError(f"{type(pipe).__name__} has no transformer to install XAttention on")
    layers = attention_layers(transformer)
    if any(isinstance(attn.processor, XAttnHunyuanVideoAttnProcessor) for attn in layers):
        raise RuntimeError("XAttention is already installed on this pipeline; call .remove() on its handle first")
    cfg = xattn_config(config)
    heads = int(transformer.config.num_attention_heads)
    head_dim = int(transformer.config.attention_head_dim)
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise ConfigError(f"the model's attention head_dim is {head_dim}; XAttention supports {SUPPORTED_HEAD_DIMS}")
    device = next(transformer.parameters()).device
    if cfg.backend != "auto":
        check_backend_support(resolve_backend(cfg.backend, device), cfg.stride, cfg.block_size)
    state = XAttentionState(config=cfg, plan=AttentionPlan(cfg, len(layers), heads), tracker=StepTracker(pipe),
                            reuse=SelectionCache(cfg.selection_reuse))
    originals = [attn.processor for attn in layers]
    for index, attn in enumerate(layers):
        attn.set_processor(XAttnHunyuanVideoAttnProcessor(index, state))
    return XAttentionHandle(pipe, layers, originals, state)


class XAttnHunyuanVideoPipeline(HunyuanVideoPipeline):
    """``HunyuanVideoPipeline`` with XAttention: ``from_pretrained(path, xattn=config)`` installs it on load."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any,
                        xattn: XAttnConfig | dict | None = None, **kwargs: Any) -> "XAttnHunyuanVideoPipeline":
        pipe = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        pipe.enable_xattention(xattn)
        return pipe

    @property
    def xattn_handle(self) -> XAttentionHandle | None:
        return self.__dict__.get("_xattn_handle")

    def enable_xattention(self, config: XAttnConfig | dict | None = None) -> XAttentionHandle:
        """(Re)install XAttention with ``config``."""
        self.disable_xattention()
        self.__dict__["_xattn_handle"] = apply_xattention(self, config)
        return self.__dict__["_xattn_handle"]

    def disable_xattention(self) -> None:
        handle = self.xattn_handle
        if handle is not None:
            handle.remove()
            self.__dict__["_xattn_handle"] = None
