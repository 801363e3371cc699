"""diffusers' step caches (``transformer.enable_cache``) together with XAttention: composition and accounting.

The caches themselves are diffusers' hooks; this package only chooses and configures them per family
(``apply``), makes them correct next to XAttention, true CFG, two experts and context parallelism
(``compose``), records per denoising step whether each transformer call was computed, skipped, predicted or had
its attention reused (``ledger``), captures MagCache's calibration (``magcache``) and turns measured step times
into per-video times (``schedule``). ``params`` is the config section, importable without torch.
"""

import importlib

_LAZY = {
    "CACHE_NAMES": "params",
    "CacheConfig": "params",
    "CacheHandle": "apply",
    "CacheNotApplicable": "apply",
    "enable_step_cache": "apply",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'xattn_video.caches' has no attribute {name!r}")
