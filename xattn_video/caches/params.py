"""The ``cache:`` config section: which diffusers step cache to enable, and the parameters we expose for each.

Pure Python (no torch, no diffusers), so a bad name or key is refused before anything heavy loads. The defaults
are diffusers' own (the dataclass defaults of ``FirstBlockCacheConfig``, ``TaylorSeerCacheConfig``,
``MagCacheConfig``, ``FasterCacheConfig``, ``PyramidAttentionBroadcastConfig`` in diffusers 0.42; PAB's
``spatial_attention_block_skip_range: 2`` is what diffusers falls back to when none is set).
``tests/test_caches.py`` checks that every key here is a field of the diffusers dataclass (or one we translate).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Optional

# name -> {key: default}; keys are the diffusers dataclass fields we expose (or ours, see TRANSLATED)
CACHES: dict[str, dict[str, Any]] = {
    "firstblock": {"threshold": 0.05},
    "taylorseer": {"cache_interval": 5, "disable_cache_before_step": 3, "disable_cache_after_step": None,
                   "max_order": 1, "taylor_factors_dtype": "bfloat16", "use_lite_mode": False,
                   "cache_identifiers": None},
    "magcache": {"threshold": 0.06, "max_skip_steps": 3, "retention_ratio": 0.2, "mag_ratios": None,
                 "calibrate": False},
    "fastercache": {"spatial_attention_block_skip_range": 2, "spatial_attention_timestep_skip_range": [-1, 681],
                    "attention_weight": 0.5, "low_frequency_weight_update_timestep_range": [99, 901],
                    "high_frequency_weight_update_timestep_range": [-1, 301], "alpha_low_frequency": 1.1,
                    "alpha_high_frequency": 1.1},
    "pab": {"spatial_attention_block_skip_range": 2, "spatial_attention_timestep_skip_range": [100, 800],
            "cross_attention_block_skip_range": None, "cross_attention_timestep_skip_range": [100, 800]},
}
# keys that are ours, not a diffusers field: fastercache.attention_weight -> attention_weight_callback
TRANSLATED = {("fastercache", "attention_weight")}
CACHE_NAMES = tuple(CACHES)
# diffusers decides these from the latents (adaptive); the others follow a fixed per-step schedule
ADAPTIVE = ("firstblock", "magcache")
_DTYPES = ("bfloat16", "float16", "float32")


@dataclass
class CacheConfig:
    """``cache.name``: one of :data:`CACHE_NAMES` or null (no cache); ``cache.<name>``: that cache's parameters
    (unset keys take diffusers' defaults)."""

    name: Optional[str] = None
    firstblock: dict[str, Any] = field(default_factory=dict)
    taylorseer: dict[str, Any] = field(default_factory=dict)
    magcache: dict[str, Any] = field(default_factory=dict)
    fastercache: dict[str, Any] = field(default_factory=dict)
    pab: dict[str, Any] = field(default_factory=dict)


def unknown_cache_message(name: str) -> str:
    close = difflib.get_close_matches(str(name), CACHE_NAMES, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown cache {name!r}{hint}; known: {', '.join(CACHE_NAMES)}"


def cache_params(cfg: CacheConfig, name: str | None = None) -> dict[str, Any]:
    """The parameters of cache ``name`` (default ``cfg.name``): diffusers' defaults, then ``cfg.<name>``."""
    name = name or cfg.name
    return {**CACHES[name], **dict(getattr(cfg, name) or {})}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _range(value: Any) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == 2 and all(_number(v) for v in value)
            and value[0] < value[1])


def cache_problem(cfg: CacheConfig) -> str | None:
    """One line saying what is wrong with ``cfg`` (the key named as ``cache.<name>.<key>``), or None."""
    if cfg.name is not None and cfg.name not in CACHES:
        return f"config key 'cache.name': {unknown_cache_message(cfg.name)}"
    for name, defaults in CACHES.items():
        given = dict(getattr(cfg, name) or {})
        for key in given:
            if key not in defaults:
                close = difflib.get_close_matches(key, defaults, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                return (f"config key 'cache.{name}.{key}' is not a {name} parameter{hint}; known: "
                        f"{', '.join(defaults)}")
        params = {**defaults, **given}
        for key, value in given.items():
            problem = _value_problem(name, key, value, params)
            if problem:
                return f"config key 'cache.{name}.{key}' {problem}"
    return None


def _value_problem(name: str, key: str, value: Any, params: dict[str, Any]) -> str | None:
    if key.endswith("_skip_range") and not key.endswith("timestep_skip_range") or key in (
            "cache_interval", "max_skip_steps", "max_order"):
        if value is None and key == "cross_attention_block_skip_range":
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            return f"must be an integer >= 1, got {value!r}"
    elif key.endswith("timestep_skip_range") or key.endswith("timestep_range"):
        if not _range(value):
            return f"must be [low, high] timesteps with low < high, got {value!r}"
    elif key in ("disable_cache_before_step", "disable_cache_after_step"):
        if value is None and key == "disable_cache_after_step":
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return f"must be an integer >= 0, got {value!r}"
    elif key in ("threshold", "retention_ratio", "attention_weight", "alpha_low_frequency", "alpha_high_frequency"):
        if not _number(value) or value < 0 or (key == "retention_ratio" and value > 1):
            return f"must be a number >= 0{' and <= 1' if key == 'retention_ratio' else ''}, got {value!r}"
    elif key in ("use_lite_mode", "calibrate"):
        if not isinstance(value, bool):
            return f"must be true or false, got {value!r}"
    elif key == "taylor_factors_dtype":
        if value not in _DTYPES:
            return f"must be one of {', '.join(_DTYPES)}, got {value!r}"
    elif key == "cache_identifiers":
        if value is not None and (not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value)):
            return f"must be a list of regular expressions (module names) or null, got {value!r}"
    elif key == "mag_ratios":
        ok = value is None or isinstance(value, str) or (
            isinstance(value, (list, tuple)) and len(value) > 0 and all(_number(v) and v > 0 for v in value))
        if not ok:
            return f"must be a list of positive numbers, a file written by the calibration run, or null, got {value!r}"
    return None


__all__ = ["ADAPTIVE", "CACHES", "CACHE_NAMES", "CacheConfig", "cache_params", "cache_problem",
           "unknown_cache_message"]
