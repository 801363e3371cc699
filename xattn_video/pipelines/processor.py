"""Attention processor for HunyuanVideo's dual- and single-stream blocks with XAttention.

It computes q/k/v exactly as diffusers' ``HunyuanVideoAttnProcessor2_0`` does (projections, RMS norms,
rotary embedding on image tokens, [image, text] token order) and then either calls diffusers' own
``dispatch_attention_fn`` (dense steps and layers with ``dense_backend: stock``: bit-identical to the stock
processor; ``fast``, the default: padded keys dropped and unmasked SDPA, exact up to rounding) or ``xattention``
with the key-padding length taken from the attention mask and the text region forced (spec §2).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import apply_rotary_emb

from ..config import XAttnConfig
from ..kernels import xattention
from ..kernels.dense import dense_attention, prefix_kv_lens
from ..stats import AttentionStats, Stopwatch
from ..warmup import AttentionPlan, StepTracker
from ..warmup.reuse import SelectionCache, selection_signature


@dataclass
class XAttentionState:
    """Shared by the processors of one pipeline: config, plan, step tracker, statistics, mask cache."""

    config: XAttnConfig
    plan: AttentionPlan
    tracker: StepTracker
    stats: AttentionStats = field(default_factory=AttentionStats)
    reuse: SelectionCache = field(default_factory=lambda: SelectionCache(0))
    _mask: Any = None
    _mask_kv_len: Any = None
    _mask_is_prefix: bool = True
    _mask_host_lens: Any = None
    warned_mask: bool = False
    # calibration hook (xattn_video.calibrate.Collector): observe(step, layer, q, k, v, kv_len, text_start) on
    # sparse-eligible calls; with observer.run_dense the call then runs dense. To move into pipelines/dispatch.
    observer: Any = None

    def key_padding(self, mask: torch.Tensor | None) -> tuple[bool, torch.Tensor | None]:
        """(usable, kv_len [B] int32 or None) for a mask. usable=False: not a key-padding prefix.

        The transformer passes one mask object to every block of a forward pass, so the prefix check
        (one host synchronization) runs once per forward, not per layer.
        """
        if mask is None:
            return True, None
        if mask is self._mask:
            return self._mask_is_prefix, self._mask_kv_len
        kv_len, prefix, lens = None, False, None
        if mask.dtype == torch.bool and mask.dim() == 4 and mask.shape[1] == 1 and mask.shape[2] == 1:
            prefix, lens = prefix_kv_lens(mask)  # the one host sync; also gives the fast dense path its lengths
            kv_len = mask.reshape(mask.shape[0], mask.shape[-1]).sum(dim=-1, dtype=torch.int32)
        self._mask, self._mask_kv_len, self._mask_is_prefix = mask, (kv_len if prefix else None), prefix
        self._mask_host_lens = lens
        return prefix, self._mask_kv_len

    def host_kv_lens(self, mask: torch.Tensor | None) -> tuple[bool, list[int] | None]:
        """(usable, valid key count per batch entry as host ints) of the forward's mask (cached, see above)."""
        usable, _ = self.key_padding(mask)
        return usable, (self._mask_host_lens if mask is not None else None)


class XAttnHunyuanVideoAttnProcessor:
    """Drop-in for ``HunyuanVideoAttnProcessor2_0`` on layer ``layer`` (0..19 dual, 20..59 single)."""

    _attention_backend = None  # honoured on dense calls, like the stock processor
    _parallel_config = None

    def __init__(self, layer: int, state: XAttentionState):
        self.layer = layer
        self.state = state

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        text_len = 0 if encoder_hidden_states is None else encoder_hidden_states.shape[1]
        single_stream = attn.add_q_proj is None
        if single_stream and encoder_hidden_states is not None:
            hidden_states = torch.cat([hidden_states, encoder_hidden_states], dim=1)

        query, key, value = (proj(hidden_states).unflatten(2, (attn.heads, -1))
                             for proj in (attn.to_q, attn.to_k, attn.to_v))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if image_rotary_emb is not None:
            query, key = (_rope_image_tokens(x, image_rotary_emb, text_len if single_stream else 0)
                          for x in (query, key))
        if not single_stream and encoder_hidden_states is not None:
            enc = [proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
                   for proj in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj)]
            if attn.norm_added_q is not None:
                enc[0] = attn.norm_added_q(enc[0])
            if attn.norm_added_k is not None:
                enc[1] = attn.norm_added_k(enc[1])
            query, key, value = (torch.cat([x, e], dim=1) for x, e in zip((query, key, value), enc))

        # Token order is [image, text]: text starts after the image tokens.
        out = self._attend(query, key, value, attention_mask, image_tokens=query.shape[1] - text_len,
                           has_text=text_len > 0)
        out = out.flatten(2, 3).to(query.dtype)

        if encoder_hidden_states is None:
            return out, None
        out, encoder_out = out[:, :-text_len], out[:, -text_len:]
        if getattr(attn, "to_out", None) is not None:
            out = attn.to_out[1](attn.to_out[0](out))
        if getattr(attn, "to_add_out", None) is not None:
            encoder_out = attn.to_add_out(encoder_out)
        return out, encoder_out

    def _dense(self, q, k, v, mask):
        cfg = self.state.config
        if cfg.dense_backend == "fast" and self._attention_backend is None and self._parallel_config is None:
            usable, lens = self.state.host_kv_lens(mask)
            if usable:
                return dense_attention(q, k, v, lens)
        return dispatch_attention_fn(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False,
                                     backend=self._attention_backend, parallel_config=self._parallel_config)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                image_tokens: int, has_text: bool) -> torch.Tensor:
        state, cfg = self.state, self.state.config
        step = state.tracker.current()
        collect = cfg.collect_stats
        if not state.plan.is_sparse(step, self.layer):
            if collect:
                state.stats.record(step, self.layer, 1.0, sparse=False)
            return self._dense(q, k, v, mask)
        usable, kv_len = state.key_padding(mask)
        if not usable:
            if not state.warned_mask:
                warnings.warn("xattn-video: the attention mask is not a key-padding prefix; those calls run dense "
                              "masked attention", RuntimeWarning, stacklevel=2)
                state.warned_mask = True
            if collect:
                state.stats.record(step, self.layer, 1.0, sparse=False)
            return self._dense(q, k, v, mask)

        tau = state.plan.threshold(self.layer)
        text_start = image_tokens if (cfg.text_forcing and has_text) else None
        if state.observer is not None:
            state.observer.observe(step, self.layer, q, k, v, kv_len, text_start)
            if state.observer.run_dense:
                return self._dense(q, k, v, mask)
        common = dict(block_size=cfg.block_size, kv_len=kv_len)
        signature, selection = None, None
        if state.reuse.enabled:
            _, lens = state.host_kv_lens(mask)
            signature = selection_signature(q.shape[0], q.shape[1], k.shape[1], q.shape[2], cfg.block_size, lens,
                                            text_start)
            selection = state.reuse.get(self.layer, step, signature)
        watch = Stopwatch(q.device) if cfg.time_stats else None  # the operator marks its own steps
        reused = selection is not None
        out, selection = xattention(q, k, v, threshold=tau, stride=cfg.stride, text_start=text_start,
                                    keep_diagonal=cfg.keep_diagonal, max_density=cfg.max_density,
                                    backend=cfg.backend, return_selection=True, stopwatch=watch, selection=selection,
                                    **common)
        if signature is not None and not reused:
            state.reuse.put(self.layer, step, signature, selection)
        if collect or watch is not None:
            state.stats.record(step, self.layer, selection.density(), sparse=True, watch=watch)
        return out


def _rope_image_tokens(x: torch.Tensor, rotary_emb: Any, text_len: int) -> torch.Tensor:
    """Rotary embedding on the image tokens only (the first ``S - text_len`` tokens)."""
    if text_len == 0:
        return apply_rotary_emb(x, rotary_emb, sequence_dim=1)
    return torch.cat([apply_rotary_emb(x[:, :-text_len], rotary_emb, sequence_dim=1), x[:, -text_len:]], dim=1)
