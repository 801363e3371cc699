"""Steps a step cache must compute: the clause composition's window and the two plain steps after it.

Why: with the composition schedule (``generation.clause_steps``) the prompt's transformer call is a blend of four
rows in the first steps and the prompt's own row after them. A cache that predicts or skips a step from the
activations of the composed steps carries the blend (or its change at the window's end) into plain steps:
measured on the mini model's two-object prompts, TaylorSeer lost 17 dB of PSNR against dense and MagCache with
XAttention 9 dB (``benchmarks/results/quality-caches-mini-cpu-schedule.md``). Computing the window and two plain
steps after it gives each cache clean history: TaylorSeer's first prediction then differences two plain steps,
MagCache's first skip reuses a plain step's residual, FirstBlockCache compares plain first-block residuals.

``compute_first`` is that step count (the window's end + 2). Per cache:

* TaylorSeer: ``disable_cache_before_step`` raised to it (it computes and records every step below it);
* MagCache: ``retention_ratio`` raised so that ``round(ratio × steps)`` reaches it (it never skips below);
* FirstBlockCache: its skip decision forced to "compute" below it (:func:`force_compute_below`);
* FasterCache, Pyramid Attention Broadcast: unchanged. They reuse attention only inside timestep ranges that
  start well after the window (t < 681 and t < 800 by default; at the mini presets' flow shift the
  window and the two steps after it run at t > 940).

A user's value already past the window is kept. What changed is recorded (``CacheHandle.summary()["window"]``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..warmup import StepTracker


def window_params(name: str, params: dict[str, Any], compute_first: int,
                  steps: int | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(``params`` with the keys that make cache ``name`` compute the first ``compute_first`` steps, the record of
    what changed: ``{key: [before, after]}``; ``{}`` when nothing had to). FirstBlockCache has no such key: its
    decision is forced instead (:func:`force_compute_below`)."""
    out, changed = dict(params), {}
    if compute_first <= 0:
        return out, changed
    if name == "taylorseer" and out["disable_cache_before_step"] < compute_first:
        changed["disable_cache_before_step"] = [out["disable_cache_before_step"], compute_first]
        out["disable_cache_before_step"] = compute_first
    elif name == "magcache" and steps:
        # diffusers: the first int(ratio × steps + 0.5) steps are never skipped
        if int(out["retention_ratio"] * steps + 0.5) < compute_first:
            ratio = min(1.0, math.ceil(compute_first / steps * 1000) / 1000)
            changed["retention_ratio"] = [out["retention_ratio"], ratio]
            out["retention_ratio"] = ratio
    return out, changed


def force_compute_below(hook: Any, pipe: Any, compute_first: int) -> None:
    """Make FirstBlockCache's leader hook compute the remaining blocks in every step below ``compute_first`` (the
    decision has no side effects, so skipping it there leaves the cache's state as a computed step does)."""
    decide = hook._should_compute_remaining_blocks
    tracker = StepTracker(pipe)

    @torch.compiler.disable
    def decision(residual: torch.Tensor) -> bool:
        step = tracker.current()
        return True if step is not None and step < compute_first else decide(residual)

    hook._should_compute_remaining_blocks = decision


__all__ = ["force_compute_below", "window_params"]
