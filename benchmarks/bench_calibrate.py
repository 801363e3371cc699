"""Calibrated vs uniform τ at equal output error, on structured video-like inputs (GPU).

Each synthetic "layer" is one draw of ``xattn_video.bench.synthetic.video_like_qkv`` (24 heads of spatial, temporal
and broad kinds, 119,056 tokens = HunyuanVideo 720p × 129 frames, bf16); its calibration inputs and the held-out
input are that draw plus fresh noise on q and k and fresh values (same structure, new content).

1. Profile the calibration inputs (``profile_attention``: exact recall / error on sampled query blocks).
2. For each uniform τ_u: E = the worst layer output error of τ_u on the calibration profile; calibrate per layer
   and per head for ``target_error=E`` (every layer within E, the same constraint τ_u just meets).
3. On the held-out inputs, for every config: density, output relative error of the whole layer against dense
   SDPA (all rows, bf16 reference), and xattention time (``triton.testing.do_bench``, median), all in one run.

Prints a table and writes ``bench_calibrate.json`` and ``bench_calibrate.md`` into ``--out-dir``.
Run: ``python benchmarks/bench_calibrate.py --out-dir benchmarks/results/calibrate`` (about 2–4 minutes).

``--model-timing`` instead times calibration on the 13B HunyuanVideo transformer with random weights (bf16, built
on the GPU, no download) at 720p × 129 frames: ``--profile-steps`` denoising steps with the calibration hook
(every layer profiled) against the same steps dense, and the solve; writes ``calibrate_model_timing.json|md``.
Random weights: the thresholds it finds mean nothing, only the wall time does.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from xattn_video.calibrate import DEFAULT_TAUS, CalibrationProfile, profile_attention, solve
from xattn_video.kernels import xattention
from xattn_video.bench.synthetic import HUNYUAN_TEXT_TOKENS, grid_for_tokens, video_like_qkv
from xattn_video.video_io import write_text

SHARPNESS = (12.0, 8.0, 16.0, 10.0)  # per synthetic layer, cycled
HEADS, HEAD_DIM, STRIDE, BLOCK = 24, 128, 8, 128


def layer_inputs(layer: int, variant: int, grid: tuple[int, int, int], text: int, heads: int, device: str,
                 perturb: float = 0.3):
    """q, k, v [1, S, H, 128] of synthetic layer ``layer``; ``variant`` picks the content (noise, values)."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    q, k, v, _ = video_like_qkv(grid, text_tokens=text, heads=heads, head_dim=HEAD_DIM,
                                sharpness=SHARPNESS[layer % len(SHARPNESS)], seed=layer, device=device, dtype=dtype)
    g = torch.Generator(device=device).manual_seed(1000 * layer + variant)
    for x in (q, k):
        x.add_((torch.randn(x.shape, generator=g, device=device) * perturb).to(x.dtype))
    v.copy_(torch.randn(v.shape, generator=g, device=device).to(v.dtype))
    return q, k, v


def timer(device: str, rep_ms: int):
    """Median ms of a callable: triton.testing.do_bench on CUDA; a plain clock for the CPU smoke run."""
    if device == "cuda":
        from triton.testing import do_bench

        return lambda fn: float(do_bench(fn, warmup=100, rep=rep_ms, return_mode="median"))

    def clock(fn):
        times = []
        for _ in range(3):
            t = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t))
        return sorted(times)[1]

    return clock


def dense(q, k, v):
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


def per_head(tau, heads: int) -> list[float]:
    return list(tau) if isinstance(tau, (list, tuple)) else [float(tau)] * heads


HUNYUAN_13B_LATENTS = (1, 16, 33, 90, 160)  # 720×1280, 129 frames → 33×45×80 tokens after 2×2 patches
TINY_TRANSFORMER = dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=64, num_layers=2,
                        num_single_layers=2, num_refiner_layers=1, mlp_ratio=2.0, patch_size=2, patch_size_t=1,
                        guidance_embeds=True, text_embed_dim=32, pooled_projection_dim=32, rope_axes_dim=(16, 24, 24))


def _pipe(transformer):
    """Just enough of a HunyuanVideoPipeline for ``apply_xattention`` (family by class): a transformer; the steps
    are set by hand."""
    from diffusers import HunyuanVideoPipeline

    pipe = HunyuanVideoPipeline.__new__(HunyuanVideoPipeline)
    object.__setattr__(pipe, "transformer", transformer)
    return pipe


def model_timing(args) -> int:
    """Wall time of a calibration profile on a random-weight HunyuanVideo transformer vs the same steps dense."""
    from diffusers import HunyuanVideoTransformer3DModel

    from xattn_video.calibrate import Collector
    from xattn_video.config import XAttnConfig
    from xattn_video.pipelines import apply_xattention

    device = args.device
    tiny = device != "cuda"
    dtype = torch.float32 if tiny else torch.bfloat16
    latents_shape = (1, 4, 3, 16, 16) if tiny else HUNYUAN_13B_LATENTS
    t0 = time.perf_counter()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            transformer = HunyuanVideoTransformer3DModel(**(TINY_TRANSFORMER if tiny else {})).eval()
    finally:
        torch.set_default_dtype(previous)
    build_s = time.perf_counter() - t0
    cfg = transformer.config
    g = torch.Generator(device=device).manual_seed(0)
    text = 32 if tiny else 256
    inputs = dict(
        hidden_states=torch.randn(latents_shape, generator=g, device=device, dtype=dtype),
        encoder_hidden_states=torch.randn(1, text, cfg.text_embed_dim, generator=g, device=device, dtype=dtype),
        encoder_attention_mask=(torch.arange(text, device=device) < text - 7)[None].to(dtype),  # 7 padded tokens
        pooled_projections=torch.randn(1, cfg.pooled_projection_dim, generator=g, device=device, dtype=dtype),
        guidance=torch.tensor([6000.0], device=device, dtype=dtype),
    )
    pipe = _pipe(transformer)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    xcfg = XAttnConfig(threshold=0.5, warmup_steps=0, block_size=32 if tiny else 128, backend="auto",
                       collect_stats=False)

    def steps(collector):
        handle = apply_xattention(pipe, xcfg)
        handle.state.observer = collector
        if collector is None:  # dense reference: the same processors, every call dense
            handle.state.plan.dense_layers = frozenset(range(handle.state.plan.num_layers))
        try:
            sync()
            start = time.perf_counter()
            with torch.no_grad():
                for step in range(args.profile_steps):
                    handle.tracker.manual_step = step
                    t = torch.tensor([1000.0 - 20 * step], device=device, dtype=dtype)
                    transformer(timestep=t, return_dict=False, **inputs)
            sync()
            return time.perf_counter() - start, handle.state.plan
        finally:
            handle.remove()

    dense_s, plan = steps(None)
    collector = Collector(xcfg, plan.num_layers, plan.num_heads, samples=args.samples)
    profile_s, _ = steps(collector)
    t1 = time.perf_counter()
    sol = solve(collector.profile, target_recall=0.95, per_head=True)
    solve_s = time.perf_counter() - t1
    tokens = latents_shape[2] * (latents_shape[3] // 2) * (latents_shape[4] // 2) + text
    record = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu smoke run",
              "model": "HunyuanVideo transformer, random weights" + (" (tiny config)" if tiny else " (13B, bf16)"),
              "tokens": tokens, "layers": plan.num_layers, "heads": plan.num_heads, "steps": args.profile_steps,
              "samples": args.samples, "candidates": len(collector.profile.taus), "build_s": build_s,
              "dense_steps_s": dense_s, "calibration_steps_s": profile_s, "solve_s": solve_s,
              "profiled_calls": collector.profile.num_calls,
              "overhead_per_call_s": (profile_s - dense_s) / max(1, collector.profile.num_calls),
              "predicted_density_random_weights": sol.mean_density}
    md = (f"# Calibration wall time ({record['device']})\n\n{record['model']}, {tokens} tokens, "
          f"{plan.num_layers} layers × {plan.num_heads} heads, {args.profile_steps}-step profile "
          f"({record['profiled_calls']} attention calls, {args.samples} query blocks sampled per call, "
          f"{record['candidates']} candidate τ).\n\n| | seconds |\n|---|---|\n"
          f"| {args.profile_steps} steps dense | {dense_s:.1f} |\n| {args.profile_steps} steps with calibration "
          f"profiling | {profile_s:.1f} |\n| solve (per head, recall 0.95) | {solve_s:.2f} |\n"
          f"| profiling overhead per attention call | {record['overhead_per_call_s']:.3f} |\n\n"
          f"A real calibration adds the text encoders and the warmup steps (dense) before the profiled steps. "
          f"Random weights: the thresholds found mean nothing.\n")
    print(md)
    write_text(json.dumps(record, indent=1), args.out_dir / "calibrate_model_timing.json")
    write_text(md, args.out_dir / "calibrate_model_timing.md")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--tokens", type=int, default=119056, help="119056 (720p, 129 f), 67576 or 18616")
    parser.add_argument("--layers", type=int, default=4, help="synthetic layers (structures)")
    parser.add_argument("--calib-inputs", type=int, default=2, help="calibration inputs per layer")
    parser.add_argument("--uniform", default="0.9,0.95", help="uniform τ whose error sets each target")
    parser.add_argument("--samples", type=int, default=16, help="query blocks sampled per profiled call")
    parser.add_argument("--rep-ms", type=int, default=400, help="do_bench time per measurement")
    parser.add_argument("--heads", type=int, default=HEADS)
    parser.add_argument("--grid", help="smoke runs: latent grid T,H,W instead of --tokens (text: 64 tokens)")
    parser.add_argument("--device", default="cuda", help="cuda; cpu only for a smoke run of this script")
    parser.add_argument("--model-timing", action="store_true",
                        help="time a calibration profile on the random-weight 13B HunyuanVideo transformer instead")
    parser.add_argument("--profile-steps", type=int, default=2, help="with --model-timing: profiled steps")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_calibrate needs a CUDA GPU (--device cpu --grid 2,8,16 is a smoke run)", file=sys.stderr)
        return 2
    if args.model_timing:
        return model_timing(args)
    if args.grid:
        grid, text = tuple(int(x) for x in args.grid.split(",")), 64
        args.tokens = grid[0] * grid[1] * grid[2] + text
    else:
        grid, text = grid_for_tokens(args.tokens), HUNYUAN_TEXT_TOKENS
    bench = timer(args.device, args.rep_ms)
    backend = "auto" if args.device == "cuda" else "torch"
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)

    uniform = [float(t) for t in args.uniform.split(",")]
    taus = tuple(sorted(set(DEFAULT_TAUS) | set(uniform)))
    n_img = args.tokens - text
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else "cpu smoke run"
    log = print

    # 1. profile
    prof = CalibrationProfile(taus)
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for layer in range(args.layers):
        for variant in range(args.calib_inputs):
            q, k, v = layer_inputs(layer, variant, grid, text, args.heads, args.device)
            prof.add(layer, profile_attention(q, k, v, taus=taus, samples=args.samples, generator=gen,
                                              text_start=n_img, stride=STRIDE, block_size=BLOCK, backend=backend))
            del q, k, v
    sync()
    profile_s = time.perf_counter() - t0
    log(f"profiled {prof.num_calls} calls at {args.tokens} tokens in {profile_s:.1f} s "
        f"({profile_s / prof.num_calls:.2f} s per call, {args.samples} query blocks, {len(taus)} candidates)")

    # 2. configs: each uniform τ and the calibrations at its worst-layer error
    configs: dict[str, dict] = {}
    for tau_u in uniform:
        t = taus.index(tau_u)
        target = max(float(p.layer_stats()[2][t]) for p in prof.layers.values())
        configs[f"uniform τ={tau_u:g}"] = {"group": tau_u, "target_error": target,
                                          "thresholds": {layer: tau_u for layer in prof.layers}}
        for mode in (False, True):
            sol = solve(prof, target_error=target, per_head=mode)
            configs[f"calibrated per {'head' if mode else 'layer'} at τ={tau_u:g}'s error (≤{target:.4f})"] = {
                "group": tau_u, "target_error": target, "thresholds": dict(sol.thresholds),
                "predicted_density": sol.mean_density, "notes": sol.notes}

    # 3. held-out evaluation, all configs in the same run
    rows: dict[str, dict] = {name: {"density": [], "error": [], "ms": []} for name in configs}
    dense_ms = []
    for layer in range(args.layers):
        # a content never profiled
        q, k, v = layer_inputs(layer, args.calib_inputs, grid, text, args.heads, args.device)
        ref = dense(q, k, v)
        dense_ms.append(bench(lambda q=q, k=k, v=v: dense(q, k, v)))  # bound now: the loop deletes them
        for name, cfg in configs.items():
            tau = per_head(cfg["thresholds"][layer], args.heads)

            def call(q=q, k=k, v=v, tau=tau):
                return xattention(q, k, v, threshold=tau, stride=STRIDE, block_size=BLOCK, text_start=n_img,
                                  backend=backend, return_selection=True)

            out, sel = call()
            rows[name]["density"].append(float(sel.density()))
            rows[name]["error"].append(float((out.float() - ref.float()).norm() / ref.float().norm()))
            rows[name]["ms"].append(bench(call))
            del out, sel
        del q, k, v, ref
        if args.device == "cuda":
            torch.cuda.empty_cache()
        log(f"layer {layer}: evaluated {len(configs)} configs")

    table = []
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    for name, cfg in configs.items():
        r = rows[name]
        base = rows[f"uniform τ={cfg['group']:g}"]
        table.append({
            "config": name, "uniform_group": cfg["group"], "target_error": cfg["target_error"],
            "thresholds": {str(k): v for k, v in cfg["thresholds"].items()},
            "density": mean(r["density"]), "error_mean": mean(r["error"]), "error_max": max(r["error"]),
            "ms_per_call": mean(r["ms"]), "dense_ms_per_call": mean(dense_ms),
            "speedup_vs_dense": mean(dense_ms) / mean(r["ms"]),
            "time_saved_vs_uniform": 1.0 - mean(r["ms"]) / mean(base["ms"]),
            "density_saved_vs_uniform": 1.0 - mean(r["density"]) / mean(base["density"]),
            "predicted_density": cfg.get("predicted_density"), "notes": cfg.get("notes", []),
            "per_layer": r,
        })
    head = ("| config | density | held-out error mean / max | xattention ms/call | vs dense | "
            "time saved vs uniform | density saved vs uniform |")
    lines = [f"# Calibrated vs uniform τ at equal output error ({gpu})", "",
             f"{args.tokens} tokens (structured video-like, {args.heads} heads × {HEAD_DIM}, bf16), "
             f"{args.layers} synthetic "
             f"layers, calibration on {args.calib_inputs} inputs per layer, evaluation on a held-out input; "
             f"stride {STRIDE}, block {BLOCK}; dense SDPA {mean(dense_ms):.1f} ms/call; times are medians of "
             f"triton.testing.do_bench in one run. Error: ‖O − O_dense‖/‖O_dense‖ over all rows, bf16 reference.",
             f"Profiling: {prof.num_calls} calls in {profile_s:.1f} s ({profile_s / prof.num_calls:.2f} s/call, "
             f"{args.samples} query blocks sampled, {len(taus)} candidate τ).", "", head,
             "|---|---|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['config']} | {r['density']:.3f} | {r['error_mean']:.4f} / {r['error_max']:.4f} | "
                     f"{r['ms_per_call']:.1f} | {r['speedup_vs_dense']:.2f}× | "
                     f"{100 * r['time_saved_vs_uniform']:.1f}% | "
                     f"{100 * r['density_saved_vs_uniform']:.1f}% |")
    lines += ["", "Thresholds:", ""] + [f"- {r['config']}: {json.dumps(r['thresholds'])}" for r in table]
    md = "\n".join(lines) + "\n"
    print(md)
    out = args.out_dir
    write_text(json.dumps({"gpu": gpu, "torch": torch.__version__, "tokens": args.tokens, "layers": args.layers,
                           "profile_seconds": profile_s, "profiled_calls": prof.num_calls, "samples": args.samples,
                           "taus": list(taus), "dense_ms": dense_ms, "rows": table}, indent=1),
               out / "bench_calibrate.json")
    write_text(md, out / "bench_calibrate.md")
    print(f"wrote {out / 'bench_calibrate.md'} and bench_calibrate.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
