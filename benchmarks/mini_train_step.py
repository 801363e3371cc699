"""Where a mini-model training step's time goes, and which change makes it faster (GPU; one process, one table).

    python benchmarks/mini_train_step.py --out-dir OUT [--variants compile compile-fused ...] [--steps 30]

Times the transformer + text-encoder step of ``python -m xattn_video.mini.train`` (flow loss, backward, clipping,
AdamW, the EMA) on random latents at the ``mini`` shape (batch 32, 2,304 tokens per clip) and the ``mini-large`` shape
(batch 4, 17,424 tokens), untrained weights (the step's time does not depend on them), the steps cycling through 8
batches of training prompts (so the text encoder's length varies as in training), for these variants:

- ``eager``: no compilation;
- ``compile``: ``torch.compile(transformer)`` as ``--compile`` trains (AdamW's default multi-tensor loop);
- ``compile-rope``: ``compile`` with ``mini.train_attention``'s processor (the rotary embedding without strided
  writes; same math);
- ``compile-fused``: + ``AdamW(fused=True)``;
- ``compile-fused-text``: + the text encoder compiled too (``dynamic=False``: one graph per prompt length);
- ``compile-text``: ``compile`` with the text encoder compiled as training would (``dynamic=None``: the prompts'
  longest length varies from batch to batch, so its second length compiles one dynamic graph);
- ``cudagraphs``: the transformer compiled with ``mode="reduce-overhead"`` (CUDA graphs) + fused AdamW;
- ``compile-fused-b64``, ``cudagraphs-b64``: twice the batch at each shape (clips per second is the column to
  compare).

``--encode`` times instead the VAE encoding of fresh clips (``mini.train.encode_video``: --encode-every's grouped
call, 64 clips at ``mini``, 8 at ``mini-large``, and half and double those, or ``--encode-batches``) as ``eager``,
as ``compile`` (the VAE's encoder through ``torch.compile`` with dynamo's recompile limit raised, as
``mini.train --compile`` does on CUDA) and as ``graph`` (the whole call captured once per batch size in a CUDA graph
and replayed, in case the causal encoder's 9 chunks of frames were bound by launches: on an H100 they are not),
checking each against eager. Writes ``mini-encode-<gpu>.md``.

Also profiles a few ``compile`` steps at each shape: the sum of the GPU kernels' times against the wall time says
whether the step is bound by launches (the GPU idles between kernels) or by the kernels themselves. Writes
``mini-train-step-<gpu>.md|json`` in ``--out-dir``. Timings are comparable only within one run.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import record_function

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xattn_video.mini.data import training_prompt  # noqa: E402
from xattn_video.mini.grammar import sample_objects  # noqa: E402
from xattn_video.mini.model import LATENT_CHANNELS, build_components, encode_prompts  # noqa: E402
from xattn_video.mini.train import ema_update, flow_sigmas, transformer_optimizer  # noqa: E402
from xattn_video.mini.train_attention import use_training_attention  # noqa: E402

VARIANTS = ("eager", "compile", "compile-rope", "compile-fused", "compile-fused-text", "compile-text", "cudagraphs",
            "compile-fused-b64", "cudagraphs-b64")
SHAPES = {"mini": ((9, 32, 32), 32, 6.0), "mini-large": ((9, 88, 88), 4, 12.0)}  # latent [F, H, W], batch, shift


def make_step(variant: str, device: str):
    """A fresh model, optimizer and EMA for ``variant``; returns step(latents, prompts) -> loss (a tensor)."""
    parts = build_components(0)
    transformer, text_encoder = parts["transformer"].to(device).train(), parts["text_encoder"].to(device).train()
    if variant == "compile-rope":
        use_training_attention(transformer)
    params = list(transformer.parameters()) + list(text_encoder.parameters())
    fused = variant not in ("eager", "compile", "compile-rope")
    opt = transformer_optimizer(params, 3e-4, fused=fused or None)
    ema_t, ema_e = copy.deepcopy(transformer).eval(), copy.deepcopy(text_encoder).eval()
    forward = transformer
    if variant != "eager":
        mode = "reduce-overhead" if variant.startswith("cudagraphs") else None
        forward = torch.compile(transformer, dynamic=False, mode=mode)
    encoder = text_encoder
    if variant == "compile-fused-text":
        encoder = torch.compile(text_encoder, dynamic=False)
    elif variant == "compile-text":
        encoder = torch.compile(text_encoder, dynamic=None)
    gen = torch.Generator(device=device).manual_seed(0)

    def step(z0: torch.Tensor, prompts: list[str], shift: float) -> torch.Tensor:
        if variant.startswith("cudagraphs"):
            torch.compiler.cudagraph_mark_step_begin()
        noise = torch.randn(z0.shape, generator=gen, device=device)
        sigma = flow_sigmas(z0.shape[0], gen, device, "uniform", shift).view(-1, 1, 1, 1, 1)
        zt = (1 - sigma) * z0 + sigma * noise
        with torch.autocast("cuda", dtype=torch.bfloat16):
            with record_function("step:text"):
                text = encode_prompts(encoder, prompts, device)
            with record_function("step:forward"):
                pred = forward(zt, timestep=sigma.view(-1) * 1000, encoder_hidden_states=text, return_dict=False)[0]
        loss = F.mse_loss(pred.float(), noise - z0)
        opt.zero_grad(set_to_none=True)
        with record_function("step:backward"):
            loss.backward()
        with record_function("step:optimizer"):
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
        with record_function("step:ema"):
            ema_update(ema_t, transformer, 0.999)
            ema_update(ema_e, text_encoder, 0.999)
        return loss.detach()

    return step


def batch_for(shape: str, doubled: bool, rng: random.Random, device: str) -> tuple[torch.Tensor, list[str], float]:
    (frames, height, width), batch, shift = SHAPES[shape]
    batch *= 2 if doubled else 1
    z0 = torch.randn(batch, LATENT_CHANNELS, frames, height, width, device=device)
    return z0, [training_prompt(sample_objects(rng), rng) for _ in range(batch)], shift


def prompt_batches(batch: int, rng: random.Random, count: int = 8) -> list[list[str]]:
    """``count`` batches of training prompts: the steps cycle through them, so the longest prompt (the text
    encoder's sequence length) changes from step to step as in training."""
    return [[training_prompt(sample_objects(rng), rng) for _ in range(batch)] for _ in range(count)]


def time_variant(variant: str, steps: int, device: str, shapes: list[str]) -> list[dict]:
    step = make_step(variant, device)
    rng = random.Random(0)
    rows = []
    for shape in shapes:
        z0, _, shift = batch_for(shape, variant.endswith("-b64"), rng, device)
        prompts = prompt_batches(z0.shape[0], rng)
        started = time.perf_counter()
        for i in range(3):  # compilation (and the CUDA graphs' recording) happen here
            step(z0, prompts[i], shift)
        torch.cuda.synchronize()
        warm = time.perf_counter() - started
        started = time.perf_counter()
        for i in range(steps):
            loss = step(z0, prompts[(3 + i) % len(prompts)], shift)
        torch.cuda.synchronize()
        ms = 1e3 * (time.perf_counter() - started) / steps
        rows.append({"variant": variant, "shape": shape, "batch": z0.shape[0], "ms_per_step": ms,
                     "clips_per_s": z0.shape[0] / ms * 1e3, "warmup_s": warm, "loss": float(loss)})
        print(f"{variant:20s} {shape:10s} batch {z0.shape[0]:3d}: {ms:7.1f} ms/step, "
              f"{rows[-1]['clips_per_s']:7.1f} clips/s (first 3 steps {warm:.1f} s)", flush=True)
    return rows


def profile_busy(device: str, steps: int = 5) -> list[dict]:
    """Per shape: wall ms per ``compile`` step, summed GPU kernel ms per step, and the top kernels' share."""
    from torch.profiler import ProfilerActivity, profile

    step = make_step("compile", device)
    rng = random.Random(1)
    rows = []
    for shape in SHAPES:
        z0, prompts, shift = batch_for(shape, False, rng, device)
        for _ in range(3):
            step(z0, prompts, shift)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            started = time.perf_counter()
            for _ in range(steps):
                step(z0, prompts, shift)
            torch.cuda.synchronize()
            wall = 1e3 * (time.perf_counter() - started) / steps
        # the record_function ranges of step() show up on the GPU's timeline too: kernels only here
        events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA
                  and not e.key.startswith("step:")]
        total = sum(e.self_device_time_total for e in events) / 1e3 / steps
        kernels = sum(e.count for e in events) / steps
        top = sorted(events, key=lambda e: -e.self_device_time_total)[:8]
        host: dict[str, float] = {}  # host ms per step in each part of step() (launches, Python, guards)
        for e in prof.events():
            if e.name.startswith("step:") and e.device_type == torch.autograd.DeviceType.CPU:
                host[e.name] = host.get(e.name, 0.0) + e.cpu_time_total / 1e3 / steps
        host = {k: round(v, 2) for k, v in host.items()}
        rows.append({"shape": shape, "wall_ms": wall, "kernel_ms": total, "busy": total / wall,
                     "kernels_per_step": kernels, "host_ms": host,
                     "top": [(e.key[:60], round(e.self_device_time_total / 1e3 / steps, 2)) for e in top]})
        print(f"profile {shape}: wall {wall:.1f} ms, kernels {total:.1f} ms ({total / wall:.0%} busy), "
              f"{kernels:.0f} kernels/step; host ms {host}; top: {rows[-1]['top']}", flush=True)
    return rows


ENCODE_SHAPES = {"mini": ((33, 128, 128), (32, 64, 128)), "mini-large": ((33, 352, 352), (4, 8, 16))}


def encode_variant(variant: str, vae, mean: torch.Tensor, std: torch.Tensor):
    """``encode(video) -> latents`` for one of ``eager``, ``compile``, ``graph`` (see the module docstring)."""
    from xattn_video.mini.train import compiled_vae_encoder, encode_video

    if variant == "eager":
        return lambda video: encode_video(vae, video, mean, std)
    if variant == "compile":  # the encoder as mini.train --compile runs it on CUDA
        encoder = compiled_vae_encoder(vae)
        return lambda video: encode_video(vae, video, mean, std, encoder)
    graphs: dict[tuple, tuple] = {}

    def replay(video: torch.Tensor) -> torch.Tensor:
        key = tuple(video.shape)
        if key not in graphs:
            static = video.clone()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up outside the capture (cuDNN picks its algorithms here)
                encode_video(vae, static, mean, std)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = encode_video(vae, static, mean, std)
            graphs[key] = (graph, static, out)
        graph, static, out = graphs[key]
        static.copy_(video)
        graph.replay()
        return out.clone()

    return replay


def time_encode(device: str, steps: int, variants: tuple[str, ...] = ("eager", "compile", "graph"),
                batches: dict[str, tuple[int, ...]] | None = None) -> list[dict]:
    """ms per encoding call and per clip, each variant on the same rendered clips, and its largest difference from
    eager's latents (the normalised latents are O(1))."""
    from xattn_video.mini.data import render
    from xattn_video.mini.model import build_vae, latent_norm

    torch.manual_seed(0)
    vae = build_vae().to(device).eval()  # one for all variants: none of them changes the module
    mean, std = latent_norm(vae, device)
    reference = encode_variant("eager", vae, mean, std)
    expected: dict[tuple[str, int], torch.Tensor] = {}  # eager's latents of each (shape, batch): every variant's clips
    rows = []
    for variant in variants:
        encode = encode_variant(variant, vae, mean, std)
        rng = random.Random(0)
        for shape, (size, sizes) in ENCODE_SHAPES.items():
            for batch in (batches or {}).get(shape, sizes):
                video = render([sample_objects(rng) for _ in range(batch)], *size, rng, device).video
                try:
                    started = time.perf_counter()
                    got = encode(video)  # compilation / capture
                    torch.cuda.synchronize()
                    first = time.perf_counter() - started
                    started = time.perf_counter()
                    for _ in range(steps):
                        got = encode(video)
                    torch.cuda.synchronize()
                    ms = 1e3 * (time.perf_counter() - started) / steps
                except Exception as error:  # one variant failing must not lose the others' rows
                    print(f"encode {variant} {shape} {batch}: failed: {type(error).__name__}: "
                          f"{str(error).splitlines()[0][:300]}", flush=True)
                    continue
                if (shape, batch) not in expected:  # each variant renders the same clips (rng seeded alike)
                    expected[shape, batch] = reference(video)
                diff = (got - expected[shape, batch]).abs().max().item()
                rows.append({"variant": variant, "shape": shape, "batch": batch, "ms_per_call": ms,
                             "ms_per_clip": ms / batch, "first_s": first, "max_diff": diff})
                print(f"encode {variant:8s} {shape:10s} {batch:4d} clips: {ms:7.1f} ms/call, {ms / batch:6.2f} ms/clip "
                      f"(first call {first:.1f} s), max |diff| vs eager {diff:.2e}", flush=True)
        torch._dynamo.reset()
    return rows


def encode_table(rows: list[dict], gpu: str, steps: int) -> list[str]:
    base = {(r["shape"], r["batch"]): r["ms_per_call"] for r in rows if r["variant"] == "eager"}
    lines = [f"# Mini-model VAE encoding of fresh clips ({gpu})", "",
             "`mini.train.encode_video` on rendered clips, random VAE weights (the time does not depend on them), "
             f"{steps} timed calls after one (`benchmarks/mini_train_step.py --encode`).", "",
             "| variant | shape | clips | ms/call | ms/clip | × eager | max diff vs eager |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = base.get((r["shape"], r["batch"]), float("nan")) / r["ms_per_call"]
        lines.append(f"| {r['variant']} | {r['shape']} | {r['batch']} | {r['ms_per_call']:.1f} | "
                     f"{r['ms_per_clip']:.2f} | {ratio:.2f} | {r['max_diff']:.1e} |")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--steps", type=int, default=30, help="timed steps per variant and shape")
    p.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--encode", action="store_true", help="time the VAE encoding of fresh clips instead of the step")
    p.add_argument("--encode-variants", nargs="+", choices=("eager", "compile", "graph"),
                   default=["eager", "compile", "graph"])
    p.add_argument("--encode-batches", nargs=2, type=int, metavar=("MINI", "LARGE"), default=None,
                   help="one batch size per shape instead of the three of ENCODE_SHAPES")
    p.add_argument("--out-dir", type=Path, default=Path("."))
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("mini_train_step.py times GPU steps: no CUDA device", file=sys.stderr)
        return 2
    device = "cuda"
    torch.backends.cuda.matmul.allow_tf32 = True
    gpu = torch.cuda.get_device_name()
    slug = gpu.lower().replace(" ", "-")
    if args.encode:
        batches = {"mini": (args.encode_batches[0],), "mini-large": (args.encode_batches[1],)} \
            if args.encode_batches else None
        lines = encode_table(time_encode(device, args.steps, tuple(args.encode_variants), batches), gpu, args.steps)
        name = f"mini-encode-{slug}"
        args.out_dir.mkdir(parents=True, exist_ok=True)
        (args.out_dir / f"{name}.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
        return 0
    rows, busy = [], []
    for variant in args.variants:
        try:
            rows += time_variant(variant, args.steps, device, args.shapes)
        except Exception as error:  # one variant failing (e.g. CUDA graphs) must not lose the others' rows
            print(f"{variant}: failed: {type(error).__name__}: {str(error).splitlines()[0][:300]}", flush=True)
        torch._dynamo.reset()
    if not args.no_profile:
        busy = profile_busy(device)
    base = {r["shape"]: r["clips_per_s"] for r in rows if r["variant"] == "compile"}
    lines = [f"# Mini-model training step ({gpu})", "",
             "Transformer + text-encoder step of `mini.train` (flow loss, backward, clip, AdamW, EMA) on random "
             f"latents, untrained weights, {args.steps} timed steps after 3 warm-up steps "
             "(`benchmarks/mini_train_step.py`).", "",
             "| variant | shape | batch | ms/step | clips/s | × compile |", "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        ratio = r["clips_per_s"] / base[r["shape"]] if r["shape"] in base else float("nan")
        lines.append(f"| {r['variant']} | {r['shape']} | {r['batch']} | {r['ms_per_step']:.1f} | "
                     f"{r['clips_per_s']:.0f} | {ratio:.2f} |")
    if busy:
        lines += ["", "GPU busy (`compile`, profiled): " + "; ".join(
            f"{b['shape']} {b['kernel_ms']:.1f} of {b['wall_ms']:.1f} ms ({b['busy']:.0%}), "
            f"{b['kernels_per_step']:.0f} kernels" for b in busy)]
        for b in busy:
            lines.append(f"- top kernels at {b['shape']} (ms/step): " + ", ".join(f"{k} {v}" for k, v in b["top"]))
            lines.append(f"- host time at {b['shape']} (ms/step): "
                         + ", ".join(f"{k[5:]} {v}" for k, v in b["host_ms"].items()))
    name = f"mini-train-step-{slug}"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{name}.md").write_text("\n".join(lines) + "\n")
    (args.out_dir / f"{name}.json").write_text(json.dumps({"gpu": gpu, "rows": rows, "busy": busy}, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
