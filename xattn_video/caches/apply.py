"""``enable_step_cache(pipe, ...)``: one of diffusers' step caches on every transformer of a supported pipeline.

Works before or after ``apply_xattention`` (the two install independent hooks), with ``model.compile``, with
context parallelism and on both experts of Wan 2.2. Returns a :class:`CacheHandle`: its ``ledger`` records each
transformer call (computed / skipped / predicted / reused) per denoising step; ``remove()`` disables the cache and
leaves XAttention as it was (and ``handle.remove()`` of XAttention leaves the cache). Refusals are one line
(:class:`CacheNotApplicable`), before anything is installed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..config import ConfigError
from ..pipelines import dispatch
from ..pipelines.family import EXPERT_ATTRS, detect_family
from ..warmup import StepTracker, calling_pipeline
from . import compose, ledger, window
from .params import CACHES, CacheConfig, cache_params, cache_problem, unknown_cache_message


class CacheNotApplicable(ConfigError):
    """This cache cannot run on this pipeline (or not with these settings); the message says why."""


_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# TaylorSeer hooks attention modules named ``*blocks*.attn``; Wan names them attn1 (self) and attn2 (cross), which
# its default patterns miss (it would hook nothing): all attention of each block, as its default means.
_WAN_TAYLORSEER = [r"^blocks\.\d+\.attn1", r"^blocks\.\d+\.attn2"]


def load_mag_ratios(value: Any) -> list[float] | None:
    """``cache.magcache.mag_ratios``: a list, or a file (the calibration run's YAML config, or JSON)."""
    if value is None or isinstance(value, (list, tuple)):
        return None if value is None else [float(v) for v in value]
    path = Path(value)
    if not path.is_file():
        raise ConfigError(f"config key 'cache.magcache.mag_ratios': file not found: {path}")
    if path.suffix == ".json":
        data = json.loads(path.read_text())
    else:
        from omegaconf import OmegaConf

        data = OmegaConf.to_container(OmegaConf.load(path))
    if isinstance(data, dict):
        data = (data.get("cache", {}).get("magcache", {}) if "cache" in data else data).get("mag_ratios")
    if not isinstance(data, list) or not data:
        raise ConfigError(f"config key 'cache.magcache.mag_ratios': {path} holds no mag_ratios list")
    return [float(v) for v in data]


class _Timestep:
    """``current_timestep_callback`` for PAB / FasterCache: the running pipeline's timestep as a float, read
    once per timestep object (no device synchronization per attention module)."""

    def __init__(self, pipe: Any):
        import weakref

        self._pipe = weakref.ref(pipe)
        self._last: Any = None
        self._value = 0.0

    def __call__(self) -> float:
        pipe = calling_pipeline() or self._pipe()
        t = getattr(pipe, "_current_timestep", None) if pipe is not None else None
        if t is None:
            return self._value
        if t is not self._last:
            self._last, self._value = t, float(t.item() if isinstance(t, torch.Tensor) else t)
        return self._value


class _Served:
    """Attention modules FasterCache served by extrapolation in the running call (its weight callback runs only
    then, once per output tensor)."""

    def __init__(self, weight: float):
        self.weight, self.seen = weight, set()

    @torch.compiler.disable
    def __call__(self, module: torch.nn.Module) -> float:
        self.seen.add(id(module))
        return self.weight


def _experts(pipe: Any) -> list[tuple[int, torch.nn.Module]]:
    return [(i, getattr(pipe, a)) for i, a in enumerate(EXPERT_ATTRS) if getattr(pipe, a, None) is not None]


def _parallel(transformer: torch.nn.Module) -> bool:
    import torch.distributed as dist

    return (getattr(transformer, "_parallel_config", None) is not None and dist.is_available()
            and dist.is_initialized() and dist.get_world_size() > 1)


def _check_blocks(transformer: torch.nn.Module, name: str) -> None:
    from diffusers.hooks._common import _ALL_TRANSFORMER_BLOCK_IDENTIFIERS
    from diffusers.hooks._helpers import TransformerBlockRegistry

    compose.register_blocks(transformer)
    for child_name, child in transformer.named_children():
        if child_name in _ALL_TRANSFORMER_BLOCK_IDENTIFIERS and isinstance(child, torch.nn.ModuleList):
            for block in child:
                try:
                    TransformerBlockRegistry.get(type(block))
                except ValueError:
                    raise CacheNotApplicable(f"cache {name!r} does not apply to {type(transformer).__name__}: diffusers "
                                             f"does not know its block {type(block).__name__}") from None


def _diffusers_config(name: str, params: dict, pipe: Any, family: str, steps: int | None) -> tuple[Any, Any]:
    """(diffusers config, extra) for one transformer; ``extra``: the FasterCache weight counter."""
    from diffusers.hooks import (FasterCacheConfig, FirstBlockCacheConfig, MagCacheConfig,
                                 PyramidAttentionBroadcastConfig, TaylorSeerCacheConfig)

    p = dict(params)
    if name == "firstblock":
        return FirstBlockCacheConfig(**p), None
    if name == "taylorseer":
        p["taylor_factors_dtype"] = _DTYPES[p["taylor_factors_dtype"]]
        if p["cache_identifiers"] is None and family == "wan" and not p["use_lite_mode"]:
            p["cache_identifiers"] = list(_WAN_TAYLORSEER)
        return TaylorSeerCacheConfig(**p), None
    if name == "magcache":
        if steps is None:
            raise CacheNotApplicable("cache 'magcache' needs the number of denoising steps (steps=...)")
        ratios = load_mag_ratios(p.pop("mag_ratios"))
        if ratios is None and not p["calibrate"]:
            raise CacheNotApplicable(
                "cache 'magcache' needs cache.magcache.mag_ratios (they depend on the checkpoint and scheduler): run "
                "the calibration once, e.g. xvid generate --cache magcache --set cache.magcache.calibrate=true "
                "--out calib/magcache.mp4, then --config calib/magcache.yaml")
        return MagCacheConfig(**p, num_inference_steps=steps, mag_ratios=ratios), None
    timestep = _Timestep(pipe)
    for key in [k for k in p if k.endswith("range") and "timestep" in k]:
        p[key] = tuple(p[key])
    if name == "fastercache":
        served = _Served(float(p.pop("attention_weight")))
        # Our pipelines run the two CFG branches as two calls; FasterCache's CFG-Cache needs them batched in one,
        # so that part is off (is_guidance_distilled) and its attention reuse runs per branch (compose.py).
        return FasterCacheConfig(**p, attention_weight_callback=served, current_timestep_callback=timestep,
                                 is_guidance_distilled=True), served
    return PyramidAttentionBroadcastConfig(**p, current_timestep_callback=timestep), None


class CacheHandle:
    """An enabled step cache: ``ledger`` (per-step accounting), ``summary()``, ``remove()``."""

    def __init__(self, pipe: Any, name: str, params: dict, installed: list[tuple[torch.nn.Module, Any]],
                 book: ledger.CacheLedger, window_record: dict | None = None):
        self.pipe, self.name, self.params = pipe, name, params
        self.window = window_record  # {"compute_first": N, "changed": {key: [before, after]}} or None
        self._installed = installed  # (transformer, the diffusers config we enabled)
        self.ledger = book
        self.active = True

    def summary(self) -> dict:
        out = self.ledger.summary()
        out["params"] = {k: v for k, v in self.params.items() if k != "mag_ratios" or not isinstance(v, list)}
        if self.window is not None:
            out["window"] = self.window
        return out

    def reset(self) -> None:
        """Forget the cache state and the ledger (a new generation; pipelines also reset the state at their end)."""
        for transformer, _ in self._installed:
            transformer._reset_stateful_cache()
        self.ledger.clear()

    def mag_ratios(self) -> list[float] | None:
        """After a MagCache calibration run: the measured ratios (mean over the CFG contexts), else None."""
        return getattr(self, "_calibration", None) and self._calibration.ratios()

    def remove(self) -> None:
        """Disable the cache we enabled (if it still is) and remove the ledger; XAttention stays (idempotent)."""
        if not self.active:
            return
        for transformer, config in self._installed:
            if getattr(transformer, "_cache_config", None) is config:
                transformer.disable_cache()
            dispatch.remove_hook(transformer, ledger.LEDGER_HOOK)
        self.active = False

    def __enter__(self) -> "CacheHandle":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def _probe(name: str, transformer: torch.nn.Module, served: _Served | None, pipe: Any = None,
           compute_first: int = 0) -> Any:
    from diffusers.hooks.faster_cache import _FASTER_CACHE_BLOCK_HOOK
    from diffusers.hooks.first_block_cache import _FBC_LEADER_BLOCK_HOOK
    from diffusers.hooks.mag_cache import _MAG_CACHE_LEADER_BLOCK_HOOK
    from diffusers.hooks.pyramid_attention_broadcast import _PYRAMID_ATTENTION_BROADCAST_HOOK
    from diffusers.hooks.taylorseer_cache import _TAYLORSEER_CACHE_HOOK

    if name in ("firstblock", "magcache"):
        leader = _FBC_LEADER_BLOCK_HOOK if name == "firstblock" else _MAG_CACHE_LEADER_BLOCK_HOOK
        if name == "firstblock":
            for hook in ledger._hooks(transformer, leader):
                compose.consensus_decision(hook, lambda t=transformer: _parallel(t))
                if compute_first > 0:
                    window.force_compute_below(hook, pipe, compute_first)
        else:  # MagCache's hooks disable compilation of the whole block: only their own frame, here
            from diffusers.hooks.mag_cache import _MAG_CACHE_BLOCK_HOOK

            compose.untraced_hooks(transformer, leader)
            compose.untraced_hooks(transformer, _MAG_CACHE_BLOCK_HOOK)
        return ledger.whole_call_probe(transformer, leader)
    if name == "taylorseer":
        hooks = ledger._hooks(transformer, _TAYLORSEER_CACHE_HOOK)
        if not hooks:
            raise CacheNotApplicable(f"cache 'taylorseer' hooks no module of {type(transformer).__name__} with these "
                                     f"identifiers; set cache.taylorseer.cache_identifiers")
        return ledger.taylorseer_probe(transformer, _TAYLORSEER_CACHE_HOOK)
    hook_name = _PYRAMID_ATTENTION_BROADCAST_HOOK if name == "pab" else _FASTER_CACHE_BLOCK_HOOK
    first_computes = None if name == "pab" else (lambda hook: {"iteration": hook.block_skip_range})
    hooks = compose.per_context_states(transformer, hook_name, first_computes)
    if not hooks:
        raise CacheNotApplicable(f"cache {name!r} finds no attention module of {type(transformer).__name__} to hook")
    if name == "pab":
        return ledger.counter_probe(lambda: sum(h.state.reused for h in hooks), len(hooks))
    return ledger.counter_probe(lambda: len(served.seen), len(hooks), reset=served.seen.clear)


def enable_step_cache(pipe: Any, cache: CacheConfig | str | dict, params: dict | None = None,
                      steps: int | None = None, compute_first: int = 0) -> CacheHandle:
    """Enable one of diffusers' step caches on every transformer of ``pipe`` (both experts of Wan 2.2).

    ``cache``: a :class:`CacheConfig`, a name (``firstblock``, ``taylorseer``, ``magcache``, ``fastercache``,
    ``pab``) with ``params`` overriding diffusers' defaults, or a dict of the ``cache:`` section. ``steps``: the
    generation's denoising steps (MagCache's ratios are per step). ``compute_first``: the cache computes the first
    N steps in full and predicts or skips none of them (a clause composition's window and two steps after it;
    :mod:`xattn_video.caches.window`). Raises :class:`CacheNotApplicable` /
    ``ConfigError`` (one line) and installs nothing when the cache does not fit.
    """
    if isinstance(cache, str):
        if cache not in CACHES:
            raise ConfigError(unknown_cache_message(cache))
        cache = CacheConfig(name=cache, **{cache: dict(params or {})})
    elif isinstance(cache, dict):
        cache = CacheConfig(**cache)
    problem = cache_problem(cache)
    if problem:
        raise ConfigError(problem)
    if cache.name is None:
        raise ConfigError("config key 'cache.name' is not set: no cache to enable")
    name, params = cache.name, cache_params(cache)
    params, changed = window.window_params(name, params, compute_first, steps)
    window_record = {"compute_first": compute_first, "changed": changed} if compute_first > 0 else None
    family = detect_family(pipe).name
    experts = _experts(pipe)
    if name == "magcache" and len(experts) > 1:
        raise CacheNotApplicable("cache 'magcache' does not apply to two-expert pipelines (Wan 2.2 A14B): its step "
                                 "counter and per-step ratios are per transformer, and each expert runs only part of "
                                 "the steps")
    for _, transformer in experts:
        if getattr(transformer, "_cache_config", None) is not None:
            raise CacheNotApplicable(f"{type(transformer).__name__} already has a cache enabled "
                                     f"({type(transformer._cache_config).__name__}); disable it first")
        if name in ("firstblock", "magcache"):
            _check_blocks(transformer, name)
    book = ledger.CacheLedger(name, StepTracker(pipe))
    installed: list[tuple[torch.nn.Module, Any]] = []
    handle = CacheHandle(pipe, name, params, installed, book, window_record)
    try:
        for expert, transformer in experts:
            config, served = _diffusers_config(name, params, pipe, family, steps)
            transformer.enable_cache(config)
            installed.append((transformer, config))
            compose.lift_parallel_hooks(transformer)
            probe = _probe(name, transformer, served, pipe, compute_first)
            dispatch.add_hook(transformer, ledger.LedgerHook(book, expert, probe), ledger.LEDGER_HOOK)
            # the ledger hook takes the cache context too: the cached list of hooked registries must include it
            transformer._diffusers_hook.invalidate_child_registries_cache()
        if name == "magcache" and params["calibrate"]:
            from .magcache import Calibration

            handle._calibration = Calibration(installed[0][0])
            book.after_call = handle._calibration.capture
    except Exception:
        handle.remove()
        raise
    return handle


__all__ = ["CacheHandle", "CacheNotApplicable", "enable_step_cache", "load_mag_ratios"]
