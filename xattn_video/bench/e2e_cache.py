"""``xvid bench --e2e --cache NAME``: a step cache on top of each timed setting, as per-video time.

For every timed setting (stock, dense, XAttention ...) one more forward is timed: a step the cache *serves*
(skipped / predicted / attention reused), with diffusers' hooks put in that state from the second call on
(:data:`xattn_video.caches.schedule.SERVED_PARAMS`). The video time is then measured step times × the cache's
schedule (:mod:`xattn_video.caches.schedule`): exact for TaylorSeer, FasterCache and PAB (diffusers' hooks run
through the checkpoint's timesteps on a small transformer of the family), the computed-step fraction measured on
the mini model (``--computed-fraction``) for FirstBlockCache and MagCache. Ratios are against eager stock without
a cache, and against stock with the same cache (compiled rows: stock compiled the same way, with the cache).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from ..caches.params import ADAPTIVE, CACHES
from ..caches.schedule import SERVED_PARAMS, adaptive, describe, simulate, video_seconds
from .e2e_models import ModelSpec, Shape, build_transformer, make_holder


def cache_schedule(spec: ModelSpec, name: str, params: dict, steps: int, warmup: int, fraction: float | None,
                   device: torch.device) -> dict:
    """{"computed": [bool per step], "source": how it was obtained} for ``spec``'s family."""
    if name in ADAPTIVE:
        if fraction is None:
            raise ValueError(f"--cache {name} decides from the latents: give --computed-fraction (measured on the "
                             f"mini model: benchmarks/results/quality-caches-*.md)")
        return {"computed": adaptive(steps, fraction, warmup),
                "source": f"computed-step fraction {fraction:.2f} measured on the mini model (adaptive cache)"}
    small = build_transformer(spec, device, **spec.small_config)
    holder = make_holder(spec.pipeline_class, small)
    inputs = spec.make_inputs(small, Shape("small", 128, 128, 9), device)
    with torch.no_grad():
        computed = simulate(name, params, holder, lambda: small(**inputs), spec.timesteps(steps))
    return {"computed": computed, "source": f"exact: diffusers' hooks over the {steps} timesteps of "
                                            f"{spec.scheduler_note}"}


def time_served(transformer: Any, spec: ModelSpec, inputs: dict, setting: str, cfg: dict | None, name: str,
                params: dict, steps: int, warmup_steps: int, compiled: bool, time_forward: Any) -> dict:
    """One timed forward that the cache serves, under ``setting`` (our attention installed for it)."""
    from ..caches.apply import enable_step_cache

    row: dict[str, Any] = {"model": spec.name, "setting": setting, "cache": name, "compiled": compiled}
    handle = spec.install(transformer, cfg) if cfg is not None else None
    cache = None
    try:
        if handle is not None:
            handle.tracker.manual_step = warmup_steps  # a sparse step
        cache = enable_step_cache(make_holder(spec.pipeline_class, transformer), name,
                                  {**params, **SERVED_PARAMS[name]}, steps=steps)
        with transformer.cache_context("cond"):
            # call 0 computes (the cache's reference), call 1 is served: timed when eager; compiled, calls 1-2
            # compile the served and computed paths (TaylorSeer computes call 2) and served call 3 is timed
            with torch.no_grad():
                for _ in range(3 if compiled else 1):
                    transformer(**inputs)
            if handle is not None:
                handle.reset_stats()
            timed = time_forward(transformer, inputs, handle, time_sdpa=not compiled)
        row["served_ms"] = timed["total_ms"]
        row["cache_status"] = cache.ledger.calls[-1].status
    except torch.cuda.OutOfMemoryError as exc:
        row["skipped"] = f"out of memory: {str(exc).splitlines()[0]}"
        if name == "taylorseer" and not params.get("use_lite_mode"):
            row["skipped"] += (" (TaylorSeer keeps value and derivative of every attention output of every block: "
                               "~88 GB at HunyuanVideo 720p; --cache-set use_lite_mode=true keeps proj_out's only)")
    finally:
        if cache is not None:
            cache.remove()
        if handle is not None:
            handle.remove()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return row


def _runs(results: dict) -> list[dict]:
    """The cache runs of ``results`` (one per ``--cache`` item; results written before several existed: one)."""
    if results.get("cache_runs"):
        return results["cache_runs"]
    return [results] if results.get("cache_rows") else []


def project_cache(results: dict, steps: int, warmup: int) -> None:
    """Per-video seconds and speedups of every cache row (each run's ``cache_rows``), from the setting rows."""
    rows = {(r["model"], r["shape"], r["setting"], bool(r.get("compiled"))): r
            for r in results["rows"] if "total_ms" in r}
    for run in _runs(results):
        _project_run(run, rows, steps, warmup)


def _project_run(run: dict, rows: dict, steps: int, warmup: int) -> None:
    cache_rows = {(r["model"], r["shape"], r["setting"], bool(r.get("compiled"))): r
                  for r in run.get("cache_rows", []) if "served_ms" in r}
    for key, c in cache_rows.items():
        model, shape, setting, compiled = key
        base = rows.get(key)
        schedule = run["cache_schedules"].get(model)
        if base is None or schedule is None:
            continue
        dense = rows.get((model, shape, "dense", compiled)) or rows.get((model, shape, "stock", compiled)) or base
        xattn = setting not in ("stock", "dense")
        c["step_s"], c["served_s"] = base["total_ms"] / 1e3, c["served_ms"] / 1e3
        c["video_s"] = video_seconds(schedule["computed"], warmup if xattn else 0, c["step_s"], c["served_s"],
                                     dense["total_ms"] / 1e3)
        c["computed_steps"] = sum(schedule["computed"])
        eager_stock = rows.get((model, shape, "stock", False))
        if eager_stock is not None:
            c["speedup_video"] = steps * eager_stock["total_ms"] / 1e3 / c["video_s"]
        if base.get("video_s"):
            c["speedup_vs_no_cache"] = base["video_s"] / c["video_s"]
    for key, c in cache_rows.items():
        model, shape, setting, compiled = key
        stock_cache = cache_rows.get((model, shape, "stock", compiled))
        if stock_cache is not None and c.get("video_s") and stock_cache.get("video_s"):
            c["speedup_vs_stock_cache"] = stock_cache["video_s"] / c["video_s"]


def markdown(results: dict) -> str:
    """The cache tables, one per cache (empty without --cache)."""
    return "".join(_markdown_run(run) for run in _runs(results) if run.get("cache_rows"))


def _markdown_run(results: dict) -> str:
    name = results["cache"]
    lines = ["", f"## Step cache `{name}` ({', '.join(f'{k}={v}' for k, v in results['cache_params'].items())})", ""]
    for model, schedule in results["cache_schedules"].items():
        lines.append(f"- {model}: {sum(schedule['computed'])}/{len(schedule['computed'])} steps computed "
                     f"(`{describe(schedule['computed'])}`); schedule: {schedule['source']}")
    lines += ["", "| model | shape | setting | cache step | step s | served step s | video s | vs stock (eager, no "
              "cache) | vs stock + cache | vs same setting, no cache |", "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]

    def f(x: Any, fmt: str, unit: str = "") -> str:
        return "–" if x is None else format(x, fmt) + unit

    for c in results["cache_rows"]:
        label = f"{c['setting']} +compile" if c.get("compiled") else c["setting"]
        if "served_ms" not in c:
            lines.append(f"| {c['model']} | {c.get('shape', '')} | {label} | skipped: {c.get('skipped')} |")
            continue
        lines.append(f"| {c['model']} | {c['shape']} | {label} + {name} | {c['cache_status']} | "
                     f"{f(c.get('step_s'), '.2f')} | {f(c.get('served_s'), '.2f')} | {f(c.get('video_s'), '.0f')} | "
                     f"{f(c.get('speedup_video'), '.2f', '×')} | {f(c.get('speedup_vs_stock_cache'), '.2f', '×')} | "
                     f"{f(c.get('speedup_vs_no_cache'), '.2f', '×')} |")
    if name in ADAPTIVE:
        lines += ["", f"`{name}` is adaptive: its schedule is the computed-step fraction measured on the trained mini "
                      f"model (random weights cannot stand for real latents), not measured on this model."]
    return "\n".join(lines) + "\n"


def cache_runs_from(items: list[str], cache_set: list[str]) -> list[dict]:
    """One run record per ``--cache`` item (``NAME`` or ``NAME:KEY=VALUE,...``): its name, label, parameters and
    empty rows and schedules. ``--cache-set`` items apply to a single cache only."""
    from ..caches.params import CACHES, unknown_cache_message

    if len(items) > 1 and cache_set:
        raise ValueError("--cache-set applies to one --cache; with several, give each its parameters after a colon "
                         "(e.g. taylorseer:cache_interval=2)")
    runs = []
    for item in items:
        name, _, inline = item.partition(":")
        if name not in CACHES:
            raise ValueError(unknown_cache_message(name))
        sets = [kv for kv in re.split(r",(?=\s*\w+\s*=)", inline) if kv.strip()] + list(cache_set)
        runs.append({"cache": name, "label": item, "cache_params": cache_params_from(sets, name), "cache_rows": [],
                     "cache_schedules": {}})
    return runs


def cache_params_from(items: list[str], name: str) -> dict:
    """``--cache-set key=value`` items as that cache's parameters (YAML values); unknown keys are refused."""
    import yaml

    from ..caches.params import CacheConfig, cache_params, cache_problem

    given = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--cache-set expects key=value, got {item!r}")
        given[key] = yaml.safe_load(value)
    cfg = CacheConfig(name=name, **{name: given})
    problem = cache_problem(cfg)
    if problem:
        raise ValueError(problem)
    return cache_params(cfg)


__all__ = ["cache_params_from", "cache_runs_from", "cache_schedule", "markdown", "project_cache", "time_served"]
assert set(CACHES) == set(SERVED_PARAMS)
