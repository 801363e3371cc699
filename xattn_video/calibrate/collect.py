"""``Collector``: the object the attention mechanism calls on sparse-eligible calls during calibration.

Hook contract (what a pipeline's attention mechanism must do, per attention call, while an observer is set):
if the call is sparse-eligible and its key mask is a usable key-padding prefix, call
``observer.observe(step, layer, q, k, v, kv_len, text_start)`` with ``layer`` the layer label (5, or "t2.5" for
Wan 2.2's ``transformer_2``), q/k/v [B, S, H, D], kv_len an int32 tensor [B] or None, text_start the first text
position when text forcing is on (else None), before the attention itself; then, if ``observer.run_dense`` is
true, run dense attention (the reference trajectory) instead of XAttention. The collector re-checks warmup steps and dense layers with its own ``AttentionPlan`` per
expert, so calling it on every call is also correct. ``xattn_video.pipelines.dispatch`` implements the contract
for every family (``handle.state.observer``).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..config import XAttnConfig
from ..stats import Label, layer_order
from ..warmup import AttentionPlan
from .profile import DEFAULT_SAMPLES, DEFAULT_TAUS, CalibrationProfile, profile_attention


def eligibility_plan(cfg: XAttnConfig, num_layers: int, num_heads: int) -> AttentionPlan:
    """The plan's warmup and dense layers, with the thresholds ignored (any layer may get a τ < 1)."""
    import dataclasses

    return AttentionPlan(dataclasses.replace(cfg, threshold=0.5), num_layers, num_heads)


class Collector:
    """Profiles every sparse-eligible (step, layer) call into a ``CalibrationProfile``.

    ``on_observe(step, layer)`` is called after each profiled call (a progress bar hangs there).
    ``plans``: eligibility plans per expert ({0: ..., 1: ...}, see ``eligibility_plan``) for pipelines with a
    second expert; by default one plan of ``num_layers`` × ``num_heads`` from ``cfg``.
    """

    run_dense = True  # the profiling run follows the dense trajectory

    def __init__(self, cfg: XAttnConfig, num_layers: int, num_heads: int, *, taus: Sequence[float] = DEFAULT_TAUS,
                 samples: int = DEFAULT_SAMPLES, seed: int = 0,
                 on_observe: Callable[[int | None, Label], None] | None = None,
                 plans: dict[int, AttentionPlan] | None = None):
        self.cfg = cfg
        self.plans = plans if plans is not None else {0: eligibility_plan(cfg, num_layers, num_heads)}
        self.plan = self.plans[0]
        self.profile = CalibrationProfile(taus)
        self.samples = samples
        self.generator = torch.Generator().manual_seed(seed)
        self.on_observe = on_observe
        self.enabled = True

    def eligible(self, step: int | None, layer: Label) -> bool:
        expert, index = layer_order(layer)
        plan = self.plans.get(expert)
        return self.enabled and plan is not None and plan.is_sparse(step, index)

    @torch.no_grad()
    def observe(self, step: int | None, layer: Label, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                kv_len: torch.Tensor | int | None, text_start: int | None) -> None:
        if not self.eligible(step, layer):
            return
        cfg = self.cfg
        call = profile_attention(q, k, v, taus=self.profile.taus, samples=self.samples, generator=self.generator,
                                 kv_len=kv_len, text_start=text_start, stride=cfg.stride, block_size=cfg.block_size,
                                 keep_diagonal=cfg.keep_diagonal, max_density=cfg.max_density, backend=cfg.backend)
        self.profile.add(layer, call)
        if self.on_observe is not None:
            self.on_observe(step, layer)
