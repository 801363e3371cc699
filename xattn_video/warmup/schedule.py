"""Which denoising step a transformer call belongs to, and whether a layer runs dense or sparse in it."""

from __future__ import annotations

import sys
import weakref
from typing import Any

import torch

from ..config import ConfigError, XAttnConfig, layer_thresholds

Tau = float | tuple[float, ...]


def timestep_index(t: Any, timesteps: torch.Tensor) -> int | None:
    """Index of the current timestep ``t`` in the scheduler's ``timesteps``.

    Pipelines iterate ``for t in timesteps``, so ``t`` is normally a view into the same storage and its
    offset is the index: no device synchronization. Otherwise the value is matched (one synchronization).
    """
    if isinstance(t, torch.Tensor) and t.dim() == 0 and timesteps.dim() == 1 and timesteps.numel() > 0:
        same_storage = (t.device == timesteps.device
                        and t.untyped_storage().data_ptr() == timesteps.untyped_storage().data_ptr())
        if same_storage and timesteps.stride(0) > 0:
            offset = t.storage_offset() - timesteps.storage_offset()
            if offset % timesteps.stride(0) == 0 and 0 <= offset // timesteps.stride(0) < timesteps.numel():
                return offset // timesteps.stride(0)
    value = float(t.item() if isinstance(t, torch.Tensor) else t)
    diffs = (timesteps.detach().to("cpu", torch.float64) - value).abs()
    if diffs.numel() == 0:
        return None
    return int(torch.argmin(diffs))


def calling_pipeline(max_depth: int = 64) -> Any | None:
    """The diffusers pipeline whose code is on the call stack (innermost first), or None.

    A denoising loop runs inside ``pipeline.__call__``, whose frame holds the pipeline as ``self``; walking up
    from the transformer's forward finds it in a few frames. This is what makes warmup follow the pipeline
    that actually runs the transformer (``from_pipe``, a pipeline built from ``pipe.components``), not the one
    XAttention was applied to.
    """
    from diffusers import DiffusionPipeline

    frame = sys._getframe(1)
    depth = 0
    while frame is not None and depth < max_depth:
        candidate = frame.f_locals.get("self") if "self" in frame.f_code.co_varnames else None
        if isinstance(candidate, DiffusionPipeline):
            return candidate
        frame = frame.f_back
        depth += 1
    return None


class StepTracker:
    """The denoising step of the running pipeline, read from its own state on every transformer call.

    The pipeline is the one on the call stack (:func:`calling_pipeline`); outside any pipeline it is the one
    given at construction. The step is the index of ``pipe.current_timestep`` in ``pipe.scheduler.timesteps``
    (for flow-matching Euler schedulers, the step number). Both transformer calls of a true-CFG step see the
    same step, custom sigmas work, and a new generation starts again at step 0. Outside a denoising loop the
    step is unknown (``None``) unless ``manual_step`` is set.
    """

    def __init__(self, pipe: Any | None):
        self._pipe = weakref.ref(pipe) if pipe is not None else None
        self.manual_step: int | None = None
        self._last_t: Any = None
        self._last_timesteps: Any = None
        self._last_index: int | None = None

    def current(self) -> int | None:
        if self.manual_step is not None:
            return self.manual_step
        pipe = calling_pipeline()
        if pipe is None:
            pipe = self._pipe() if self._pipe is not None else None
        if pipe is None:
            return None
        t = getattr(pipe, "_current_timestep", None)
        if t is None:
            t = getattr(pipe, "current_timestep", None)
        scheduler = getattr(pipe, "scheduler", None)
        if t is None or scheduler is None or getattr(scheduler, "timesteps", None) is None:
            return None
        timesteps = scheduler.timesteps
        if t is self._last_t and timesteps is self._last_timesteps:
            return self._last_index
        index = timestep_index(t, timesteps)
        self._last_t, self._last_timesteps, self._last_index = t, timesteps, index
        return index


class AttentionPlan:
    """Per-layer thresholds, dense layers and warmup: decides dense vs. XAttention for (step, layer)."""

    def __init__(self, cfg: XAttnConfig, num_layers: int, num_heads: int):
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.warmup_steps = cfg.warmup_steps
        self.thresholds: list[Tau] = layer_thresholds(cfg.threshold, num_layers)
        for layer, tau in enumerate(self.thresholds):
            if isinstance(tau, tuple) and len(tau) != num_heads:
                raise ConfigError(
                    f"config key 'xattn.threshold': layer {layer} has a per-head list of {len(tau)} values, "
                    f"the model has {num_heads} heads"
                )
        bad = [layer for layer in cfg.dense_layers if not 0 <= layer < num_layers]
        if bad:
            raise ConfigError(f"config key 'xattn.dense_layers': layers {bad} out of range 0..{num_layers - 1}")
        self.dense_layers = frozenset(cfg.dense_layers)

    def threshold(self, layer: int) -> Tau:
        return self.thresholds[layer]

    def is_sparse(self, step: int | None, layer: int) -> bool:
        """Sparse unless the layer is dense, the step is a warmup step, or τ ≥ 1 on every head.

        An unknown step (transformer called outside a pipeline loop, no manual step) counts as past warmup.
        """
        if layer in self.dense_layers:
            return False
        if step is not None and step < self.warmup_steps:
            return False
        tau = self.thresholds[layer]
        taus = tau if isinstance(tau, tuple) else (tau,)
        return any(t < 1.0 for t in taus)
