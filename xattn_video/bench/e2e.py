"""End-to-end speed: one transformer forward (= one denoising step) of full-size video models, stock vs ours.

The transformers are built from diffusers' default configs (HunyuanVideo 13B, Wan 2.1 14B — Wan 2.2 A14B's
experts have its shape —, HunyuanVideo 1.5 8.3B) with random bf16
weights directly on the GPU — no download; their outputs are noise, only the time means anything. Per model
and shape it runs one forward per setting:

- ``stock``: diffusers as shipped (HunyuanVideo: SDPA with its ``[B, 1, 1, N]`` key mask);
- ``dense``: our dense path (padded keys dropped, unmasked SDPA, cuDNN first): what warmup steps and dense
  layers run;
- ``cap0.2`` / ``cap0.35`` / ``cap0.5``: XAttention τ 0.9 capped at that density (``max_density``); any
  ``capD`` on the command line times the cap D (e.g. the density a quality setting keeps on the mini model);
- ``tau0.9``: XAttention τ 0.9 uncapped (random weights give near-uniform attention, so this keeps most
  blocks: it is no guide to the density of a trained model);
- ``cap0.35-reuse2``: a step that reuses the selections of the step before (``selection_reuse: 2``); an
  untimed estimating forward runs first.

Breakdown per forward (CUDA events, read after the forward): dense attention (every SDPA call), estimate,
selection and sparse attention (per XAttention call), everything else = forward − those. Projected video time:
``warmup`` dense steps + (steps − warmup) steps of the setting, against ``steps`` stock steps; with
``--reuse N`` also the projection where the estimate and selection run on one sparse step in N.

``--compile``: after the eager pass, every setting runs again with the repeated blocks compiled (regional
``torch.compile``, as ``model.compile`` does), against stock compiled the same way as well as eager stock.

Run: ``xvid bench --e2e`` or ``python benchmarks/bench_e2e.py`` (``--help`` for subsets). Writes
``benchmarks/results/e2e-<gpu>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

# e2e_models.py: what is timed (models, shapes, settings); e2e_report.py: what is shown; here: the timing.
from .e2e_models import MODELS, SETTINGS, ModelSpec, build_transformer, setting_name, xattn_settings
from .e2e_report import markdown, print_table, project, row_line


def gpu_slug() -> str:
    """File-name form of the GPU's name, e.g. nvidia-h100-80gb-hbm3."""
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


# ---------------------------------------------------------------- timing


class SdpaTimer:
    """Times every ``F.scaled_dot_product_attention`` call (diffusers' dense dispatch and ours): CUDA events
    on a GPU (read after the forward, no sync in between), the host clock on the CPU (tests)."""

    def __init__(self, cuda: bool = True) -> None:
        self.cuda = cuda
        self.pairs: list[tuple[Any, Any]] = []
        self._orig = None

    def _mark(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        return ev

    def __enter__(self) -> "SdpaTimer":
        import torch.nn.functional as F

        self._orig = F.scaled_dot_product_attention
        orig, pairs, mark = self._orig, self.pairs, self._mark

        def timed(*args: Any, **kwargs: Any) -> torch.Tensor:
            start = mark()
            out = orig(*args, **kwargs)
            pairs.append((start, mark()))
            return out

        F.scaled_dot_product_attention = timed
        return self

    def __exit__(self, *exc: object) -> None:
        import torch.nn.functional as F

        F.scaled_dot_product_attention = self._orig

    def total_ms(self) -> float:
        if not self.cuda:
            return sum((b - a) * 1e3 for a, b in self.pairs)
        return sum(a.elapsed_time(b) for a, b in self.pairs)


def _warm_kernels(q_len: int, kv_len: int, heads: int, head_dim: int, xattn: dict | None,
                  device: torch.device, text: int = 256) -> None:
    """Compile/plan the attention kernels at this shape outside the timed forward (Triton JIT, cuDNN plans).

    The operator is called with the same optional arguments as the model's calls (``text`` text tokens: a text
    region and a key-padding length; none, as in Wan's self-attention: neither), so the timed forward meets
    no new kernel specialisation."""
    from ..kernels import xattention
    from ..kernels.dense import dense_attention

    q = torch.randn(1, q_len, heads, head_dim, device=device, dtype=torch.bfloat16)
    mask = (torch.arange(q_len, device=device) < kv_len)[None, None, None, :]
    torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), q.transpose(1, 2), q.transpose(1, 2),
                                                     attn_mask=mask)
    precision = (xattn or {}).get("precision", "bf16")
    dense_attention(q, q, q, [kv_len], precision=precision)
    if xattn is not None and xattn["threshold"] < 1:
        xattention(q, q, q, threshold=xattn["threshold"], stride=xattn["stride"], kv_len=kv_len if text else None,
                   text_start=q_len - text if text else None, max_density=xattn.get("max_density"),
                   precision=precision)
    torch.cuda.synchronize()


def time_forward(transformer: Any, inputs: dict, handle: Any | None, time_sdpa: bool = True) -> dict:
    """One forward with CUDA events: total, dense (SDPA) attention, estimate, selection, sparse attention.

    ``time_sdpa=False`` (compiled blocks: SDPA calls inside compiled graphs, e.g. stock attention and the token
    refiner, cannot be wrapped without changing what dynamo traces): no dense-attention time, so ``other`` holds
    every dense SDPA call; estimate, selection and sparse attention are still timed (our dispatch runs eagerly)."""
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    timer = SdpaTimer() if time_sdpa else contextlib.nullcontext()
    with timer, torch.no_grad():
        start.record()
        out = transformer(**inputs)
        end.record()
    torch.cuda.synchronize()
    total = start.elapsed_time(end)
    res = {"total_ms": total, "dense_attention_ms": timer.total_ms() if time_sdpa else 0.0, "estimate_ms": 0.0,
           "selection_ms": 0.0, "sparse_attention_ms": 0.0, "density": None,
           "output_finite": bool(torch.isfinite(out[0]).all())}
    if not time_sdpa:
        res["dense_attention_untimed"] = True
    if handle is not None:
        for layers in handle.state.stats.timing_table().values():
            for t in layers.values():
                res["estimate_ms"] += t.get("estimate_ms", 0.0)
                res["selection_ms"] += t.get("selection_ms", 0.0)
                res["sparse_attention_ms"] += t.get("attention_ms", 0.0)
        summary = handle.state.stats.summary()
        res["density"] = summary["mean_density_sparse_calls"]
        res["sparse_calls"] = summary["sparse_calls"]
    res["other_ms"] = total - res["dense_attention_ms"] - res["estimate_ms"] - res["selection_ms"] \
        - res["sparse_attention_ms"]
    return res


def time_setting(transformer: Any, spec: ModelSpec, inputs: dict, setting: str, cfg: dict | None, warmup_steps: int,
                 compiled: bool, attn_shape: tuple[int, int, int, int, int], device: torch.device) -> dict:
    """One timed forward of ``setting`` (our attention installed for it, removed after) as a result row.

    ``attn_shape``: (q_len, kv_len, heads, head_dim, text tokens) of the self-attention calls, for the kernel
    warm-up. An untimed forward runs first when compiled (it compiles) or with selection reuse (it estimates)."""
    row: dict[str, Any] = {"model": spec.name, "setting": setting, "compiled": compiled}
    if cfg is not None and spec.install is None:
        row["skipped"] = "our attention is not installable on this model yet (needs dispatch.py)"
        return row
    q_len, kv_len, heads, head_dim, text = attn_shape
    _warm_kernels(q_len, kv_len, heads, head_dim, cfg, device, text)
    handle = spec.install(transformer, cfg) if cfg is not None else None
    try:
        if handle is not None:
            handle.tracker.manual_step = warmup_steps  # the first sparse step
        if compiled or (cfg or {}).get("selection_reuse", 0) > 1:
            with torch.no_grad():
                transformer(**inputs)
            torch.cuda.synchronize()
            if handle is not None:
                handle.reset_stats()
                handle.tracker.manual_step = warmup_steps + 1  # with reuse: reuses every layer's selection
        row.update(time_forward(transformer, inputs, handle, time_sdpa=not compiled))
        if handle is not None and cfg.get("selection_reuse", 0) > 1:
            row["reuse_every"] = cfg["selection_reuse"]
            row["reuse_hits"] = handle.state.reuse.hits
    except torch.cuda.OutOfMemoryError as exc:
        row["skipped"] = f"out of memory: {str(exc).splitlines()[0]}"
    finally:
        if handle is not None:
            handle.remove()
        torch.cuda.empty_cache()
    return row


# ---------------------------------------------------------------- the run


def run(args: argparse.Namespace, log: Callable[[str], None], device: torch.device | None = None,
        config_overrides: dict[str, dict] | None = None, checkpoint: Callable[[dict], None] | None = None) -> dict:
    """Every (model, shape, setting) of ``args``; ``config_overrides`` {model name: constructor kwargs} and a
    CPU ``device`` exist for the smoke test (tiny models), the benchmark uses the full-size defaults.
    ``checkpoint(results)`` runs after every row (the CLI rewrites its result files: a run cut short keeps its
    rows)."""
    device = device or torch.device("cuda")
    results: dict[str, Any] = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                               "date": time.strftime("%Y-%m-%d %H:%M"), "steps": args.steps,
                               "warmup_steps": args.warmup_steps, "reuse": args.reuse, "rows": [], "notes": []}
    try:
        import triton

        results["triton"] = triton.__version__
    except ImportError:
        results["triton"] = None
    from ..kernels import sparse_kernel

    results["sparse_kernel"] = sparse_kernel(device, "auto", args.precision)
    settings = xattn_settings(args.warmup_steps, args.precision, args.settings)
    results["precision"] = args.precision
    if args.precision != "bf16":
        results["notes"].append(f"xattn.precision: {args.precision} in every setting but stock (8-bit q/k in the "
                                f"sparse kernel and the dense path)")
    for name in args.settings:  # NAME-fp8 / NAME-int8 beside bf16 settings in the same run
        prec = (settings.get(name) or {}).get("precision", "bf16")
        if prec != args.precision:
            results["notes"].append(f"{name}: xattn.precision {prec} (kernel {sparse_kernel(device, 'auto', prec)})")
    cache_runs: list[dict] = []
    if getattr(args, "cache", None):
        from . import e2e_cache

        cache_runs = e2e_cache.cache_runs_from(args.cache, args.cache_set)
        results["cache_runs"] = cache_runs
        results.update({k: cache_runs[0][k] for k in ("cache", "cache_params", "cache_rows", "cache_schedules")})
        if os.environ.get("PYTORCH_CUDA_ALLOC_CONF"):
            results["notes"].append(f"PYTORCH_CUDA_ALLOC_CONF={os.environ['PYTORCH_CUDA_ALLOC_CONF']}")
    if args.compile:
        from ..compile import compile_transformer, uncompile_transformer

        results["notes"].append("'+compile': regional torch.compile of the repeated blocks (inductor, as "
                                "model.compile does); with our attention each hooked attention call is one graph "
                                "break (dispatch.py runs eagerly). Ratios in 'vs stock' are against eager stock; "
                                "'vs stock +compile' against stock compiled the same way. In '+compile' rows dense "
                                "SDPA calls are not timed apart ('–'): 'other' includes them.")
    for model_name in args.models:
        spec = MODELS[model_name]
        results["notes"] += [f"{spec.name}: {n}" for n in spec.notes]
        t0 = time.perf_counter()
        transformer = build_transformer(spec, device, **(config_overrides or {}).get(spec.name, {}))
        torch.cuda.synchronize()
        params = sum(p.numel() for p in transformer.parameters())
        log(f"{spec.name}: built {params / 1e9:.1f}B parameters (random bf16) in {time.perf_counter() - t0:.1f} s")
        for run_ in cache_runs:
            run_["cache_schedules"][spec.name] = e2e_cache.cache_schedule(
                spec, run_["cache"], run_["cache_params"], args.steps, args.warmup_steps, args.computed_fraction,
                device)
        heads = int(transformer.config.num_attention_heads)
        head_dim = int(transformer.config.attention_head_dim)
        shapes = args.shapes or list(spec.default_shapes)
        for shape_key in shapes:
            if shape_key not in spec.shapes:
                log(f"{spec.name}: no shape {shape_key!r} (known: {', '.join(spec.shapes)}); skipped")
                continue
            shape = spec.shapes[shape_key]
            n_img = spec.image_tokens(transformer, shape)
            text = spec.text_tokens if spec.joint_text else 0  # Wan: text only in cross-attention
            q_len, kv_len = n_img + text, n_img + (spec.text_valid if text else 0)
            inputs = spec.make_inputs(transformer, shape, device)
            with torch.no_grad():  # untimed: the first forward at a shape pays one-time costs (GEMM heuristics,
                transformer(**inputs)  # allocator growth) that would otherwise land in the first setting's time
            torch.cuda.synchronize()
            for compiled in ((False, True) if args.compile else (False,)):
                t0 = time.perf_counter()
                if compiled:
                    compile_transformer(transformer, fullgraph=False)  # as model.compile does (generate.py)
                for setting in args.settings:
                    row = {"model": spec.name, "shape": shape.name, "tokens": q_len,
                           **time_setting(transformer, spec, inputs, setting, settings[setting], args.warmup_steps,
                                          compiled, (q_len, kv_len, heads, head_dim, text), device)}
                    results["rows"].append(row)
                    if checkpoint is not None:
                        checkpoint(results)
                    log(row_line(row))
                for run_ in cache_runs:
                    for setting in args.settings:
                        row = {"shape": shape.name, "tokens": q_len,
                               **e2e_cache.time_served(transformer, spec, inputs, setting, settings[setting],
                                                       run_["cache"], run_["cache_params"], args.steps,
                                                       args.warmup_steps, compiled, time_forward)}
                        run_["cache_rows"].append(row)
                        if checkpoint is not None:
                            checkpoint(results)
                        log(f"  {spec.name} {shape.name} {setting} + {run_['label']}: served step "
                            + (f"{row['served_ms'] / 1e3:.2f} s ({row['cache_status']})" if "served_ms" in row
                               else f"skipped: {row['skipped']}"))
                if compiled:
                    uncompile_transformer(transformer)  # the next shape's eager pass runs eager
                    log(f"  {spec.name} {shape.name}: the compiled pass took {time.perf_counter() - t0:.0f} s "
                        f"(compilation happens in its untimed forwards)")
            del inputs
        del transformer
        torch.cuda.empty_cache()
    project(results["rows"], args.steps, args.warmup_steps, args.reuse)
    if cache_runs:
        e2e_cache.project_cache(results, args.steps, args.warmup_steps)
    return results


def result_files(stem: Path) -> tuple[Path, Path]:
    """The JSON and Markdown paths of a run named ``stem``: the suffix is added, never swapped for one, since names
    hold dots (``...-cap0.49-taylorseer3``)."""
    return stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".md")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xvid bench --e2e", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Budget on an H100: HunyuanVideo stock forward ~32 s at 720p, ~1.4 s at 544p; "
                                       "the default run (both models) takes ~5 min.")
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--shapes", nargs="+", help="shape keys (hunyuan-video: 720p 544p; wan2.1-14b: 720p 480p; hunyuan-video-1.5: 720p 480p); "
                                               "default: each model's presets")
    p.add_argument("--settings", nargs="+", type=setting_name, default=list(SETTINGS),
                   help=f"settings timed: {', '.join(SETTINGS)}, or capD (τ 0.9 capped at density D, e.g. cap0.49); "
                        f"NAME-int8 / NAME-fp8: setting NAME (not stock) in that precision (e.g. cap0.35-int8)")
    p.add_argument("--steps", type=int, default=50, help="denoising steps of the projected video")
    p.add_argument("--warmup-steps", type=int, default=5, help="dense warmup steps of the projected video")
    p.add_argument("--reuse", type=int, default=2, help="also project selection reuse every N sparse steps (<=1: off)")
    p.add_argument("--compile", action="store_true",
                   help="after the eager pass, run every setting again with the repeated blocks compiled (regional "
                        "torch.compile, as model.compile does); each compiled setting runs one untimed forward first "
                        "(it compiles; a 720p stock forward is ~32 s)")
    p.add_argument("--precision", choices=("bf16", "fp8", "int8"), default="bf16",
                   help="xattn.precision of every setting but stock")
    p.add_argument("--cache", nargs="+", metavar="NAME[:KEY=VALUE,...]",
                   help="also time each setting with this diffusers step cache (firstblock, taylorseer, magcache, "
                        "fastercache, pab) serving the step, and give per-video times = measured step times x the "
                        "cache's schedule (exact for taylorseer, fastercache, pab; from --computed-fraction for "
                        "firstblock, magcache). Several caches share one run's step timings, each with its own "
                        "parameters after a colon, e.g. taylorseer:cache_interval=2,use_lite_mode=true magcache")
    p.add_argument("--cache-set", action="append", default=[], metavar="KEY=VALUE",
                   help="a parameter of the cache (as cache.<name>.<key> in configs), repeatable; with one --cache")
    p.add_argument("--computed-fraction", type=float,
                   help="firstblock / magcache: the computed-step fraction measured on the trained mini model "
                        "(benchmarks/quality_caches.py)")
    p.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--name", help="file name stem of the results (default: e2e-<gpu>)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not torch.cuda.is_available():
        print("xvid bench --e2e: needs a CUDA GPU (none is visible to torch)", file=sys.stderr)
        return 2
    try:
        import diffusers  # noqa: F401
    except ImportError:
        print("xvid bench --e2e: needs diffusers (pip install diffusers)", file=sys.stderr)
        return 2
    if not 0 <= args.warmup_steps <= args.steps:
        print(f"xvid bench --e2e: --warmup-steps must be in 0..--steps ({args.steps})", file=sys.stderr)
        return 2
    caches = ""
    if args.cache:
        from ..caches.params import ADAPTIVE
        from .e2e_cache import cache_runs_from

        try:
            runs = cache_runs_from(args.cache, args.cache_set)
        except ValueError as exc:
            print(f"xvid bench --e2e: {exc}", file=sys.stderr)
            return 2
        adaptive = [r["cache"] for r in runs if r["cache"] in ADAPTIVE]
        if adaptive and not (args.computed_fraction or 0) > 0:
            print(f"xvid bench --e2e: --cache {adaptive[0]} is adaptive: give --computed-fraction (measured on the mini "
                  f"model, benchmarks/results/quality-caches-*.md)", file=sys.stderr)
            return 2
        caches = "-".join(dict.fromkeys(r["cache"] for r in runs))
        # caches hold tens of GB of activations between steps: let freed blocks merge (the first TaylorSeer run at
        # 720p beside XAttention failed with 25 GB reserved but unallocated)
        os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    from ..video_io import write_json, write_text

    stem = args.out_dir / (args.name or f"e2e-{gpu_slug()}" + (f"-cache-{caches}" if caches else ""))

    from .e2e_cache import markdown as cache_markdown
    from .e2e_cache import project_cache

    def save(results: dict) -> None:
        project(results["rows"], args.steps, args.warmup_steps, args.reuse)
        if results.get("cache_rows") is not None:
            project_cache(results, args.steps, args.warmup_steps)
        json_path, md_path = result_files(stem)
        write_json(results, json_path)
        write_text(markdown(results) + cache_markdown(results), md_path)

    res = run(args, lambda msg: print(msg, flush=True), checkpoint=save)
    save(res)
    print_table(res)
    print(cache_markdown(res))
    print(f"wrote {stem}.md and .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
