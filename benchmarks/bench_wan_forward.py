"""One forward of a full-size Wan 2.1 14B transformer (random bf16 weights, diffusers' default config, no download)
at 720p × 81 frames: stock attention vs XAttention capped at ~0.35 density, in the same run, on one GPU.

    python benchmarks/bench_wan_forward.py --out-dir "$OUT"          # full size: ~29 GB of weights, H100/H200
    python benchmarks/bench_wan_forward.py --layers 4 --out-dir /tmp  # quicker check with 4 of the 40 blocks

720×1280, 81 frames -> latents 21 × 90 × 160 (VAE 4× time, 8× space) -> patches 1×2×2 -> 21 × 45 × 80 = 75,600
video tokens per self-attention call (40 heads of 128); cross-attention to 512 text tokens stays dense.
The weights are built on the meta device, materialized directly in bf16 on the GPU and filled with scaled
normal noise there (seconds, no 56 GB fp32 detour). Timings: CUDA events, warm-up forwards first (Triton
compilation and autotuning excluded), the order of stock and XAttention alternated, median over ``--reps``.
Prints a table and writes ``wan_forward.json`` / ``wan_forward.md`` under ``--out-dir``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

WAN21_14B_TOKENS_720P_81F = 21 * 45 * 80


def build_wan_transformer(layers: int | None = None, device: str = "cuda", dtype: torch.dtype = torch.bfloat16,
                          seed: int = 0, **overrides: Any) -> torch.nn.Module:
    """``WanTransformer3DModel`` with diffusers' default (Wan 2.1 14B) config and random weights on ``device``.

    ``layers`` keeps only that many of the 40 blocks; ``overrides`` change other config keys (tests use a tiny
    config). Linear/conv weights ~ N(0, 1/fan_in), norms 1, biases 0, modulation tables N(0, 0.02²).
    """
    from diffusers import WanTransformer3DModel

    config = dict(overrides)
    if layers is not None:
        config["num_layers"] = layers
    with torch.device("meta"):
        model = WanTransformer3DModel(**config)
    model = model.to(dtype=dtype).to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 and "scale_shift_table" not in name:
                p.normal_(0.0, 1.0 / math.sqrt(p[0].numel()), generator=gen)
            elif "scale_shift_table" in name:
                p.normal_(0.0, 0.02, generator=gen)
            elif name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.zero_()
        # non-persistent buffers (rotary tables) were left empty by to_empty: rebuild them
        fresh = type(model.rope)(model.rope.attention_head_dim, model.rope.patch_size, model.rope.max_seq_len)
        for name, buf in fresh.named_buffers():
            setattr(model.rope, name, buf.to(device))
    return model.eval()


def wan_inputs(height: int, width: int, frames: int, device: str, dtype: torch.dtype, text_dim: int = 4096,
               in_channels: int = 16, text_tokens: int = 512, seed: int = 0) -> dict:
    gen = torch.Generator(device=device).manual_seed(seed)
    latent_frames = (frames - 1) // 4 + 1
    shape = (1, in_channels, latent_frames, height // 8, width // 8)
    return {
        "hidden_states": torch.randn(shape, generator=gen, device=device, dtype=dtype),
        "timestep": torch.tensor([500.0], device=device),
        "encoder_hidden_states": torch.randn(1, text_tokens, text_dim, generator=gen, device=device, dtype=dtype),
        "return_dict": False,
    }


def wrap_in_pipeline(transformer: torch.nn.Module) -> Any:
    """A ``WanPipeline`` holding only the transformer, so ``apply_xattention`` detects the Wan family."""
    from diffusers import WanPipeline

    return WanPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=None, transformer=transformer)


def time_forward(fn: Any, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        out.append(start.elapsed_time(end))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--layers", type=int, default=None, help="blocks to keep (default: all 40)")
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--max-density", type=float, default=0.35)
    ap.add_argument("--stride", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out-dir", type=Path, default=Path("."))
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_wan_forward: needs a CUDA GPU", file=sys.stderr)
        return 2

    from xattn_video.pipelines.family import apply_xattention
    from xattn_video.video_io import write_json, write_text

    dtype = torch.bfloat16
    model = build_wan_transformer(args.layers, "cuda", dtype)
    pipe = wrap_in_pipeline(model)
    inputs = wan_inputs(args.height, args.width, args.frames, "cuda", dtype)
    _, _, t, h, w = inputs["hidden_states"].shape
    tokens = t * (h // 2) * (w // 2)
    cfg = {"threshold": args.threshold, "stride": args.stride, "block_size": 128, "warmup_steps": 0,
           "max_density": args.max_density}
    handle = apply_xattention(pipe, cfg)
    handle.remove()

    def stock() -> Any:
        with torch.inference_mode():
            return model(**inputs)[0]

    def sparse() -> Any:
        with torch.inference_mode():
            return model(**inputs)[0]

    print(f"Wan 2.1 14B config, {len(model.blocks)} blocks, {tokens} tokens per self-attention call, "
          f"{torch.cuda.get_device_name()}", flush=True)
    times: dict[str, list[float]] = {"stock": [], "xattention": []}
    density = None
    ref = out = None
    for rep in range(args.reps + 1):  # rep 0 warms up (compilation, autotuning) and is not counted
        order = ["stock", "xattention"] if rep % 2 == 0 else ["xattention", "stock"]
        for variant in order:
            if variant == "stock":
                ms = time_forward(stock, 1)[0]
                if rep == 0:
                    ref = stock().float()
            else:
                handle = apply_xattention(pipe, cfg)
                try:
                    ms = time_forward(sparse, 1)[0]
                    if rep == 0:
                        out = sparse().float()
                    density = handle.summary()["mean_density_sparse_calls"]
                finally:
                    handle.remove()
            if rep > 0:
                times[variant].append(ms)
    stock_ms, sparse_ms = statistics.median(times["stock"]), statistics.median(times["xattention"])
    rel = float((out - ref).norm() / ref.norm())
    rows = [("stock (diffusers attention)", stock_ms, 1.0, 1.0),
            (f"XAttention τ={args.threshold} max_density={args.max_density}", sparse_ms, stock_ms / sparse_ms,
             density)]
    lines = ["| variant | forward ms | speedup | density |", "|---|---|---|---|"]
    lines += [f"| {name} | {ms:.1f} | {ratio:.2f}× | {d:.3f} |" for name, ms, ratio, d in rows]
    table = "\n".join(lines)
    print(table)
    print(f"relative L2 difference of the output (XAttention vs stock): {rel:.4f}")
    result = {"gpu": torch.cuda.get_device_name(), "tokens": tokens, "blocks": len(model.blocks),
              "config": cfg, "ms": times, "median_ms": {"stock": stock_ms, "xattention": sparse_ms},
              "speedup": stock_ms / sparse_ms, "mean_density": density, "relative_l2": rel,
              "note": "random bf16 weights: speed only; the output difference is not a quality measure"}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_json(result, args.out_dir / "wan_forward.json")
    write_text(f"# Wan 2.1 14B forward, {tokens} tokens, {result['gpu']}\n\n{table}\n", args.out_dir / "wan_forward.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
