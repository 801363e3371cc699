"""Attention processor for HunyuanVideo's dual- and single-stream blocks with XAttention.

It computes q/k/v exactly as diffusers' ``HunyuanVideoAttnProcessor2_0`` does (projections, RMS norms,
rotary embedding on image tokens, [image, text] token order) and then either calls diffusers' own
``dispatch_attention_fn`` (dense steps and layers: bit-identical to the stock processor) or ``xattention``
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
from ..kernels import block_sparse_attention, estimate_block_scores, select_blocks, xattention
from ..stats import AttentionStats, Stopwatch
from ..warmup import AttentionPlan, StepTracker


@dataclass
class XAttentionState:
    """Shared by the processors of one pipeline: config, plan, step tracker, statistics, mask cache."""

    config: XAttnConfig
    plan: AttentionPlan
    tracker: StepTracker
    stats: AttentionStats = field(default_factory=AttentionStats)
    _mask: Any = None
    _mask_kv_len: Any = None
    _mask_is_prefix: bool = True
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
        kv_len, prefix = None, False
        if mask.dtype == torch.bool and mask.dim() == 4 and mask.shape[1] == 1 and mask.shape[2] == 1:
            flat = mask.reshape(mask.shape[0], mask.shape[-1])
            kv_len = flat.sum(dim=-1, dtype=torch.int32)
            positions = torch.arange(flat.shape[-1], device=flat.device)
            prefix = bool(torch.equal(flat, positions[None, :] < kv_len[:, None])) and bool((kv_len > 0).all())
        self._mask, self._mask_kv_len, self._mask_is_prefix = mask, (kv_len if prefix else None), prefix
        return prefix, self._mask_kv_len


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
        if cfg.time_stats:
            watch = Stopwatch(q.device)
            watch.mark()
            scores = estimate_block_scores(q, k, stride=cfg.stride, backend=cfg.backend, **common)
            selection = select_blocks(scores, tau, q_len=q.shape[1], keep_diagonal=cfg.keep_diagonal,
                                      text_start=text_start, max_density=cfg.max_density, backend=cfg.backend,
                                      **common)
            watch.mark()
            out = block_sparse_attention(q, k, v, selection, backend=cfg.backend)
            watch.mark()
            state.stats.record(step, self.layer, selection.density(), sparse=True, watch=watch)
            return out
        out, selection = xattention(q, k, v, threshold=tau, stride=cfg.stride, text_start=text_start,
                                    keep_diagonal=cfg.keep_diagonal, max_density=cfg.max_density,
                                    backend=cfg.backend, return_selection=True, **common)
        if collect:
            state.stats.record(step, self.layer, selection.density(), sparse=True)
        return out


def _rope_image_tokens(x: torch.Tensor, rotary_emb: Any, text_len: int) -> torch.Tensor:
    """Rotary embedding on the image tokens only (the first ``S - text_len`` tokens)."""
    if text_len == 0:
        return apply_rotary_emb(x, rotary_emb, sequence_dim=1)
    return torch.cat([apply_rotary_emb(x[:, :-text_len], rotary_emb, sequence_dim=1), x[:, -text_len:]], dim=1)
