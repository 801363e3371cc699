"""Per-video time with a step cache: measured step times × the cache's schedule (``xvid bench --e2e --cache``).

A video's time is the sum over its denoising steps of the time of what runs in that step:

* a *computed* step costs a full forward of the setting (a dense forward in XAttention's warmup steps);
* a step the cache *serves* (skipped, predicted, attention reused) costs the measured forward in that state:
  :data:`SERVED_PARAMS` put the cache in it from the second call on, with diffusers' real hooks.

Which steps are computed is the *schedule*. Fixed-schedule caches (TaylorSeer, FasterCache, PAB) decide from the
call count and the timestep only: :func:`simulate` runs diffusers' hooks on a small transformer of the same
family through the model's own timesteps and reads our ledger, so the schedule is exact, not re-derived.
Adaptive ones (FirstBlockCache, MagCache) decide from the latents, which random weights cannot stand for: their
schedule takes the computed-step fraction measured on the trained mini model (:func:`adaptive`), and reports say
so.
"""

from __future__ import annotations

from typing import Any, Callable

from .params import ADAPTIVE, CACHES

# parameters that make calls 1 and 3 served, to time a served forward (TaylorSeer computes calls 0 and 2)
SERVED_PARAMS: dict[str, dict[str, Any]] = {
    "firstblock": {"threshold": 1e9},
    "taylorseer": {"disable_cache_before_step": 1, "cache_interval": 1000},  # (step - 2) % 1000 == 0 computes
    "magcache": {"mag_ratios": [1.0] * 64, "retention_ratio": 0.0, "threshold": 1e9, "max_skip_steps": 1000},
    "fastercache": {"spatial_attention_block_skip_range": 1000, "spatial_attention_timestep_skip_range": [-1, 1001]},
    "pab": {"spatial_attention_block_skip_range": 1000, "spatial_attention_timestep_skip_range": [-1, 1001]},
}


def adaptive(steps: int, fraction: float, warmup: int = 0) -> list[bool]:
    """A schedule with ``round(fraction × steps)`` computed steps (at least one): the first ones, so XAttention's
    dense warmup steps are computed (the costlier assumption); where served steps fall does not change the sum."""
    if not 0 < fraction <= 1:
        raise ValueError(f"the computed-step fraction must be in (0, 1], got {fraction}")
    n = max(1, min(steps, round(fraction * steps)))
    return [i < n for i in range(steps)]


def simulate(name: str, params: dict, holder: Any, run_step: Callable[[], None], timesteps: list[float]) -> list[bool]:
    """The computed/served schedule of a fixed-schedule cache, from diffusers' own hooks.

    ``holder``: a pipeline object of the family holding a small transformer; ``run_step()``: one forward of it.
    The hooks read the timestep from ``holder._current_timestep`` (as in a pipeline's loop)."""
    if name in ADAPTIVE:
        raise ValueError(f"{name} decides from the latents: use adaptive() with a measured fraction")
    from .apply import enable_step_cache

    cache = enable_step_cache(holder, name, params, steps=len(timesteps))
    transformer = holder.transformer
    try:
        for i, t in enumerate(timesteps):
            cache.ledger.tracker.manual_step = i
            object.__setattr__(holder, "_current_timestep", float(t))  # a bare holder has no config
            with transformer.cache_context("cond"):
                run_step()
        by_step = {c.step: c.status == "computed" for c in cache.ledger.calls}
    finally:
        cache.remove()
        object.__setattr__(holder, "_current_timestep", None)
    return [by_step[i] for i in range(len(timesteps))]


def video_seconds(schedule: list[bool], warmup: int, step_s: float, served_s: float,
                  warmup_step_s: float | None = None) -> float:
    """Σ over steps: computed → ``warmup_step_s`` (steps < ``warmup``) or ``step_s``; served → ``served_s``."""
    warm = step_s if warmup_step_s is None else warmup_step_s
    return sum((warm if i < warmup else step_s) if computed else served_s for i, computed in enumerate(schedule))


def describe(schedule: list[bool]) -> str:
    """``c``/``·`` per step, e.g. ``ccc·c·c·``."""
    return "".join("c" if c else "·" for c in schedule)


__all__ = ["SERVED_PARAMS", "adaptive", "describe", "simulate", "video_seconds"]
assert set(SERVED_PARAMS) == set(CACHES)
