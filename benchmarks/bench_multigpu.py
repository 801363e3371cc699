"""Per-step transformer time of full-size HunyuanVideo (13B, random weights) on 1 and N GPUs.

One denoising step = one transformer forward at 720p x 129 frames (118,800 image tokens + 256 text tokens, 40 of
them valid; 119,056 in all), bf16, with Ulysses context parallelism of degree = GPU count (diffusers' engine and
our HunyuanVideo plan). Variants: ``dense`` (the stock processor, diffusers' default attention backend) and
``xattn`` (XAttention, ``max_density`` 0.35, no warmup steps). The 1-GPU baseline runs in the same invocation.

    python benchmarks/bench_multigpu.py --gpus 1 2 --out-dir /tmp/out      # spawns the ranks itself
    torchrun --nproc_per_node 2 benchmarks/bench_multigpu.py --out-dir /tmp/out   # one phase, this world size
    python benchmarks/bench_multigpu.py --device cpu --gpus 1 2 --height 64 --width 64 --frames 5 \
        --text-tokens 16 --valid-text 5 --layers 1 --iters 1 --warmup 0 --out-dir /tmp/check   # logic check, ~1 min

Weights are random, initialised directly on each GPU in bf16 (no download, seconds); the output is noise, only
the time is meaningful. Writes ``multigpu-<gpu>.md`` and ``.json`` to the out dir and prints the table. Every
process it starts has NVLink multicast off (NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1,
NVSHMEM_DISABLE_NVLS=1).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from xattn_video.launch import NO_MULTICAST_ENV, in_rank, launch  # noqa: E402

os.environ.update(NO_MULTICAST_ENV)  # also for a torchrun-started rank, before any NCCL communicator exists

VARIANTS = ("dense", "xattn")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--gpus", type=int, nargs="+", default=[1, 2], help="GPU counts to measure (default: 1 2)")
    p.add_argument("--variants", default="dense,xattn", help="comma list of: dense, xattn")
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--frames", type=int, default=129)
    p.add_argument("--text-tokens", type=int, default=256)
    p.add_argument("--valid-text", type=int, default=40, help="valid (unpadded) text tokens")
    p.add_argument("--max-density", type=float, default=0.35)
    p.add_argument("--warmup", type=int, default=1, help="untimed forwards per variant")
    p.add_argument("--iters", type=int, default=2, help="timed forwards per variant")
    p.add_argument("--layers", type=int, default=None,
                   help="dual/single-stream layers as 'D' (single = 2*D); default: the full 20/40 model")
    p.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                   help="cpu: a logic check of the script over gloo (tiny sizes and --layers 1; times meaningless)")
    p.add_argument("--phase", type=int, default=None, help=argparse.SUPPRESS)  # internal: a rank of one phase
    args = p.parse_args(argv)
    bad = [v for v in args.variants.split(",") if v not in VARIANTS]
    if bad:
        p.error(f"unknown variant(s) {bad}; choose from {VARIANTS}")
    return args


# ----------------------------------------------------------------------------------------------- one phase


def build_transformer(device, layers: int | None):
    """The diffusers-default HunyuanVideo transformer (13B), random bf16 weights created on ``device``."""
    import torch
    from diffusers import HunyuanVideoTransformer3DModel

    kwargs = {} if layers is None else {"num_layers": layers, "num_single_layers": 2 * layers}
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # parameters born in bf16: fp32 first would need 52 GB
    try:
        with torch.device(device):
            model = HunyuanVideoTransformer3DModel(**kwargs)
    finally:
        torch.set_default_dtype(previous)
    torch.manual_seed(0)  # same weights on every rank
    with torch.no_grad():
        for name, param in model.named_parameters():
            # Small weights keep 60 random layers finite in bf16 (default init overflows the residual stream).
            if param.dim() >= 2:
                param.normal_(0.0, 0.02)
            elif name.endswith("bias"):
                param.zero_()
    return model.eval()


def make_inputs(args, device):
    import torch

    g = torch.Generator(device="cpu").manual_seed(0)
    frames = (args.frames - 1) // 4 + 1
    bf16 = torch.bfloat16
    mask = torch.zeros(1, args.text_tokens, dtype=torch.int64)
    mask[:, : args.valid_text] = 1
    return {
        "hidden_states": torch.randn(1, 16, frames, args.height // 8, args.width // 8, generator=g).to(device, bf16),
        "timestep": torch.tensor([500.0], device=device, dtype=bf16),
        "encoder_hidden_states": torch.randn(1, args.text_tokens, 4096, generator=g).to(device, bf16),
        "encoder_attention_mask": mask.to(device),
        "pooled_projections": torch.randn(1, 768, generator=g).to(device, bf16),
        "guidance": torch.tensor([6000.0], device=device, dtype=bf16),
        "return_dict": False,
    }


def transformer_only_pipeline(transformer):
    """A stock ``HunyuanVideoPipeline`` holding only ``transformer``: what ``apply_xattention`` (family by pipeline
    class) and ``enable_context_parallel`` need. No scheduler: the step is unknown, so every call is sparse."""
    from diffusers import HunyuanVideoPipeline

    return HunyuanVideoPipeline(text_encoder=None, tokenizer=None, transformer=transformer, vae=None,
                                scheduler=None, text_encoder_2=None, tokenizer_2=None)


def time_forwards(model, inputs, warmup: int, iters: int, device) -> list[float]:
    import torch

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times = []
    for i in range(warmup + iters):
        sync()
        start = time.perf_counter()
        out = model(**inputs)[0]
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    if not torch.isfinite(out).all():
        raise RuntimeError("the transformer output is not finite (random weights overflowed?)")
    return times


def run_phase(args) -> None:
    """One rank of one phase: every variant at this world size; rank 0 writes phase-<N>gpu.json."""
    import torch
    import torch.distributed as dist

    from xattn_video import apply_xattention
    from xattn_video.config import GenerationConfig
    from xattn_video.launch import init_process_group
    from xattn_video.pipelines.parallel import check_heads, check_sequence, enable_context_parallel

    world = int(os.environ.get("WORLD_SIZE", "1"))
    on_gpu = args.device == "cuda"
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if on_gpu else torch.device("cpu")
    if on_gpu:
        torch.cuda.set_device(device)
    rank = 0
    if world > 1:
        rank, _ = init_process_group(device)
        # the checks xvid generate makes: heads and token counts divide by the degree (24 heads by default)
        gen = GenerationConfig(height=args.height, width=args.width, frames=args.frames,
                               max_sequence_length=args.text_tokens)
        check_heads(24, world)
        check_sequence("HunyuanVideoTransformer3DModel", {"patch_size": 2, "patch_size_t": 1}, gen, world)
    model = build_transformer(device, args.layers)
    holder = transformer_only_pipeline(model)
    if world > 1:
        enable_context_parallel(holder, world)
    inputs = make_inputs(args, device)
    results = []
    for variant in args.variants.split(","):
        row = {"variant": variant, "gpus": world}
        handle = None
        if variant == "xattn":
            handle = apply_xattention(holder, {"max_density": args.max_density, "warmup_steps": 0,
                                               "threshold": 0.9, "stride": 8})
        if on_gpu:
            torch.cuda.reset_peak_memory_stats(device)
        try:
            with torch.inference_mode():
                times = time_forwards(model, inputs, args.warmup, args.iters, device)
            if handle is not None:
                summary = handle.summary()
                row["density"] = summary["mean_density_sparse_calls"]
                row["sparse_calls"] = summary["sparse_calls"]
        finally:
            if handle is not None:
                handle.remove()
        row["seconds"] = times
        row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30 if on_gpu else 0.0
        results.append(row)
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, results)
    else:
        gathered = [results]
    if rank == 0:
        rows = []
        for i, row in enumerate(gathered[0]):
            merged = dict(row)
            if "seconds" in row:
                # a step ends when the slowest rank ends
                per_iter = [max(r[i]["seconds"][k] for r in gathered) for k in range(len(row["seconds"]))]
                merged["seconds"] = per_iter
                merged["median_s"] = statistics.median(per_iter)
                merged["peak_gib_per_gpu"] = [r[i]["peak_gib"] for r in gathered]
                if "density" in row:
                    merged["density_per_rank"] = [r[i].get("density") for r in gathered]
                    merged["density"] = statistics.fmean(d for d in merged["density_per_rank"] if d is not None)
            rows.append(merged)
        from xattn_video.video_io import write_json

        write_json({"gpus": world, "gpu": torch.cuda.get_device_name(device) if on_gpu else "cpu", "rows": rows},
                   args.out_dir / f"phase-{world}gpu.json")
    if world > 1:
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------------ the table


def table(phases: list[dict], args) -> tuple[str, dict]:
    rows = [row for phase in phases for row in phase["rows"]]
    base = {row["variant"]: row["median_s"] for row in rows if row["gpus"] == 1 and "median_s" in row}
    lines = [
        f"HunyuanVideo {'13B' if args.layers is None else f'{args.layers}+{2 * args.layers}-layer'} transformer "
        f"(random bf16 weights), {args.width}x{args.height}x{args.frames}: "
        f"one forward = one denoising step; Ulysses degree = GPUs; median of {args.iters} after {args.warmup} warmup",
        "",
        "| variant | GPUs | s/step | scaling vs 1 GPU | vs 1-GPU dense | density | peak GiB per GPU |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in sorted(rows, key=lambda r: (VARIANTS.index(r["variant"]), r["gpus"])):
        if "median_s" not in row:
            lines.append(f"| {row['variant']} | {row['gpus']} | — | — | — | — | {row.get('skipped', 'failed')} |")
            continue
        s = row["median_s"]
        scaling = f"{base[row['variant']] / s:.2f}×" if row["variant"] in base else "—"
        vs_dense = f"{base['dense'] / s:.2f}×" if "dense" in base else "—"
        density = f"{row['density']:.3f}" if row.get("density") is not None else "1 (dense)"
        peak = ", ".join(f"{p:.1f}" for p in row["peak_gib_per_gpu"])
        lines.append(f"| {row['variant']} | {row['gpus']} | {s:.2f} | {scaling} | {vs_dense} | {density} | {peak} |")
    return "\n".join(lines) + "\n", {"phases": phases, "table_rows": rows}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.phase is not None:  # a rank of a phase we launched
        run_phase(args)
        return 0
    if in_rank():  # a user's torchrun: one phase at this world size; rank 0 prints its table
        run_phase(args)
        path = args.out_dir / f"phase-{os.environ['WORLD_SIZE']}gpu.json"
        if os.environ.get("RANK") == "0" and path.exists():
            print(table([json.loads(path.read_text())], args)[0])
        return 0
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_multigpu: needs CUDA GPUs (or --device cpu for a logic check)", file=sys.stderr)
        return 2
    if args.device == "cuda" and max(args.gpus) > torch.cuda.device_count():
        print(f"bench_multigpu: --gpus {max(args.gpus)} but {torch.cuda.device_count()} GPU(s) visible",
              file=sys.stderr)
        return 2
    phases, failed = [], []
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:])]
    for n in args.gpus:
        print(f"=== {n} GPU(s) {time.strftime('%T')}", flush=True)
        (args.out_dir / f"phase-{n}gpu.json").unlink(missing_ok=True)
        rc = launch(n, [__file__, *passthrough, "--phase", str(n)])
        path = args.out_dir / f"phase-{n}gpu.json"
        if rc != 0 or not path.exists():
            failed.append(n)
            continue
        phases.append(json.loads(path.read_text()))
    if not phases:
        return 1
    text, data = table(phases, args)
    gpu = phases[0]["gpu"].lower().replace(" ", "-")
    from xattn_video.video_io import write_json, write_text

    data["args"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    write_text(text, args.out_dir / f"multigpu-{gpu}.md")
    write_json(data, args.out_dir / f"multigpu-{gpu}.json")
    print(text)
    if failed:
        print(f"bench_multigpu: the {failed} GPU phase(s) failed (see above)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
