"""Selection reuse across denoising steps: output error against dense attention, next to the time per step.

A sequence of correlated inputs stands in for the denoising steps: video-like q/k/v (xattn_video.bench.synthetic)
at step 0, then q_t = q_{t-1} + ε·rms(q_0)·z (same for k and v, fresh Gaussian z per step). For each reuse
period N the estimate + selection runs on steps 0, N, 2N, ... and the other steps attend over the last
selection (what ``xattn.selection_reuse: N`` does per layer); N = 1 is a fresh selection every step.
Reported per (ε, N): relative L2 error of the output against dense attention on the same step (mean and
max over steps), the mean density, the overlap of the reused selection with the fresh one (blocks kept by
both ÷ blocks kept by the fresh one) and the mean time per step.

CPU (seconds, torch backend): python benchmarks/bench_reuse.py
GPU, HunyuanVideo 720p×129f size: python benchmarks/bench_reuse.py --full --out-dir $OUT
These are synthetic inputs, not a model's activations: the error shows how sensitive the output is to a
stale selection for a given drift, not what a real video looks like.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from xattn_video.kernels import block_sparse_attention, estimate_block_scores, select_blocks
from xattn_video.kernels.dense import dense_attention
from xattn_video.bench.synthetic import HUNYUAN_GRIDS, video_like_qkv
from xattn_video.video_io import write_text


def _rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.float() - ref.float()).norm() / ref.float().norm())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def steps_inputs(args, device, dtype, seed: int):
    """Generator of (q, k, v) per step: video-like at step 0, then drift by ε·rms·z per step."""
    q, k, v, _ = video_like_qkv(tuple(args.grid), text_tokens=args.text, heads=args.heads, head_dim=args.head_dim,
                                seed=seed, device=device, dtype=dtype)
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    rms = [float(x.float().pow(2).mean().sqrt()) for x in (q, k, v)]
    return q, k, v, gen, rms


def run(args) -> dict:
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n_img = args.grid[0] * args.grid[1] * args.grid[2]
    S = n_img + args.text
    kv_len = n_img + args.text_valid
    backend = "auto"
    rows = []
    for eps in args.drift:
        # The dense outputs and the fresh selections of every step, computed once per drift.
        q0, k0, v0, gen, rms = steps_inputs(args, device, dtype, args.seed)
        seq = []
        q, k, v = q0, k0, v0
        for t in range(args.steps):
            if t:
                q, k, v = (x + (eps * r) * torch.randn(x.shape, generator=gen, device=device).to(dtype)
                           for x, r in zip((q, k, v), rms))
            seq.append((q, k, v))
        lens = [kv_len]
        refs = [dense_attention(q, k, v, lens).float() for q, k, v in seq]

        def select(q, k):
            scores = estimate_block_scores(q, k, stride=args.stride, block_size=args.block, kv_len=kv_len,
                                           backend=backend)
            return select_blocks(scores, args.tau, block_size=args.block, q_len=S, kv_len=kv_len,
                                 text_start=n_img, max_density=args.max_density, backend=backend)

        fresh = [select(q, k) for q, k, _ in seq]
        for every in args.every:
            errs, dens, overlap, times = [], [], [], []
            for rep in range(2 if device.type == "cuda" else 1):  # the first pass on a GPU compiles kernels
                errs, dens, overlap, times = [], [], [], []
                sel = None
                for t, (q, k, v) in enumerate(seq):
                    _sync(device)
                    t0 = time.perf_counter()
                    if sel is None or t % max(every, 1) == 0:
                        sel = select(q, k)
                    out = block_sparse_attention(q, k, v, sel, backend=backend)
                    _sync(device)
                    times.append((time.perf_counter() - t0) * 1e3)
                    errs.append(_rel(out, refs[t]))
                    dens.append(float(sel.density()))
                    both = (sel.mask & fresh[t].mask).sum().item()
                    overlap.append(both / max(1, fresh[t].mask.sum().item()))
            row = {"drift": eps, "every": every, "err_mean": sum(errs) / len(errs), "err_max": max(errs),
                   "err_per_step": errs, "density": sum(dens) / len(dens),
                   "overlap_with_fresh": sum(overlap) / len(overlap),
                   "ms_per_step": sum(times) / len(times)}
            rows.append(row)
            print(f"drift {eps:<5} reuse {every:>2}: rel err mean {row['err_mean']:.4f} max {row['err_max']:.4f}  "
                  f"density {row['density']:.3f}  overlap {row['overlap_with_fresh']:.3f}  "
                  f"{row['ms_per_step']:.2f} ms/step", flush=True)
        del seq, refs, fresh
    return {"tokens": S, "grid": list(args.grid), "heads": args.heads, "head_dim": args.head_dim,
            "block": args.block, "stride": args.stride, "tau": args.tau, "max_density": args.max_density,
            "steps": args.steps, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "dtype": str(dtype), "rows": rows}


def markdown(res: dict) -> str:
    lines = [f"# Selection reuse on synthetic video-like inputs ({res['device']})", "",
             f"{res['tokens']:,} tokens (grid {res['grid']}), H={res['heads']}, D={res['head_dim']}, block "
             f"{res['block']}, stride {res['stride']}, τ {res['tau']}, max density {res['max_density']}, "
             f"{res['steps']} steps of drift q_t = q_(t-1) + ε·rms·z. Synthetic inputs, not model activations.", "",
             "| drift ε | reuse every | rel. err mean | rel. err max | density | overlap with fresh | ms/step |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        lines.append(f"| {r['drift']} | {r['every']} | {r['err_mean']:.4f} | {r['err_max']:.4f} | {r['density']:.3f} | "
                     f"{r['overlap_with_fresh']:.3f} | {r['ms_per_step']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true", help="HunyuanVideo 720p×129f size (119,056 tokens, H=24, D=128)")
    p.add_argument("--grid", type=int, nargs=3, default=[4, 12, 16], metavar=("T", "H", "W"))
    p.add_argument("--text", type=int, default=64, help="text tokens appended (the first --text-valid are valid)")
    p.add_argument("--text-valid", type=int, default=10)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--block", type=int, default=64)
    p.add_argument("--stride", type=int, default=8)
    p.add_argument("--tau", type=float, default=0.9)
    p.add_argument("--max-density", type=float, default=None)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--every", type=int, nargs="+", default=[1, 2, 3, 5])
    p.add_argument("--drift", type=float, nargs="+", default=[0.1, 0.3])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out-dir", type=Path, help="write reuse-<device>.json/.md there")
    args = p.parse_args(argv)
    if args.full:
        args.grid, args.text, args.text_valid = list(HUNYUAN_GRIDS[119056]), 256, 40
        args.heads, args.head_dim, args.block = 24, 128, 128
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench_reuse: --device cuda but no CUDA GPU is available", file=sys.stderr)
        return 2
    res = run(args)
    md = markdown(res)
    print(md)
    if args.out_dir:
        stem = "reuse-" + ("cpu" if res["device"] == "cpu" else res["device"].lower().replace(" ", "-"))
        write_text(json.dumps(res, indent=1), args.out_dir / f"{stem}.json")
        write_text(md, args.out_dir / f"{stem}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
