"""XAttention's quality on the trained mini model: uniform τ with and without the default warmup, and per-layer /
per-head calibrated τ at the density of uniform τ 0.9, each against the dense video from the same noise.

    python benchmarks/quality_mini.py --model mini --pairs 4 --out-dir benchmarks/results        # CPU
    python benchmarks/quality_mini.py --model mini-large --pairs 8 --out-dir $OUT                 # GPU

Per setting, the means over held-out (prompt, seed) pairs (``xattn_video.mini.grammar.held_out_pairs``) of:
PSNR / SSIM / LPIPS (when available) against dense, ``flicker`` and ``prompt_match`` (dense's are on the dense
row), the mean density of the sparse calls and seconds per video (dense and sparse timed in this run, on the same
machine state, after one untimed warm-up of each). Writes ``quality-<model>-<device>.md|json|png`` (the plot:
PSNR against density).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import textwrap
import time
from pathlib import Path

import numpy as np


def _setting_runs(base, taus: list[float], warmups: list[int],
                  precisions: list[str] = ("bf16",)) -> list[tuple[str, object]]:
    """(name, config) per (warmup, τ, precision); the name says the precision only when it is not bf16."""
    from xattn_video.config import xattn_config

    settings = []
    for warmup in warmups:
        for tau in taus:
            for precision in precisions:
                xattn = xattn_config({**dataclasses.asdict(base.xattn), "threshold": tau, "warmup_steps": warmup,
                                      "precision": precision})
                suffix = "" if precision == "bf16" else f", {precision}"
                settings.append((f"τ {tau:g}, warmup {warmup}{suffix}", dataclasses.replace(base, xattn=xattn)))
    return settings


def main(argv: list[str] | None = None) -> int:
    import torch

    from xattn_video.calibrate.run import run_calibration
    from xattn_video.config import load_config
    from xattn_video.eval.compare import warm_up
    from xattn_video.eval.metrics import compare_videos
    from xattn_video.eval.scorers.flicker import temporal_flickering_score
    from xattn_video.eval.scorers.prompt_match import format_attributes, score_video
    from xattn_video.generate import run_pipeline
    from xattn_video.mini.grammar import held_out_pairs, parse_prompt
    from xattn_video.pipelines.loading import load_pipeline
    from xattn_video.video_io import write_json, write_text

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mini", help="mini or mini-large")
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--taus", type=float, nargs="+", default=[0.95, 0.9, 0.8, 0.7, 0.6])
    p.add_argument("--no-warmup-too", action=argparse.BooleanOptionalAction, default=True,
                   help="also every τ with warmup_steps 0")
    p.add_argument("--calibrate", action=argparse.BooleanOptionalAction, default=True,
                   help="per-layer and per-head τ at uniform τ 0.9's density")
    p.add_argument("--metrics", default="psnr,ssim,lpips")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the preset's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precisions", nargs="+", default=["bf16"], choices=["bf16", "fp8", "int8"],
                   help="run every τ setting at each precision (fp8/int8: 8-bit q/k, a GPU with FP8 tensor cores)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every run, e.g. generation.clause_weight=0 (repeatable)")
    p.add_argument("--name", default=None, help="results file stem (default quality-<model>-<device>)")
    p.add_argument("--out-dir", type=Path, required=True)
    args = p.parse_args(argv)

    overrides = [f"model.path={args.model}", f"model.device={args.device}", *args.set]
    base = load_config(None, overrides + ([f"generation.steps={args.steps}"] if args.steps else []))
    pipe = load_pipeline(base.model)
    pairs = held_out_pairs(args.pairs)
    warmups = [base.xattn.warmup_steps] + ([0] if args.no_warmup_too and base.xattn.warmup_steps else [])
    settings = _setting_runs(base, args.taus, warmups, args.precisions)
    metrics = [m for m in args.metrics.split(",") if m]

    def for_pair(run, prompt: str, seed: int):
        g = dataclasses.replace(run.generation, prompt=prompt, seed=seed)
        return dataclasses.replace(run, generation=g)

    # xvid compare's untimed warm-up: each path the timed runs take, once per precision (8-bit kernels compile apart)
    for precision in dict.fromkeys(args.precisions):
        run = next(run for _, run in settings if run.xattn.precision == precision)
        warm_up(pipe, for_pair(run, *pairs[0]))

    rows: dict[str, dict[str, list[float]]] = {}
    dense_frames = []
    started = time.time()

    def record(name: str, frames: np.ndarray, seconds: float, density: float | None, prompt: str, ref) -> None:
        row = rows.setdefault(name, {})
        row.setdefault("seconds", []).append(seconds)
        row.setdefault("density", []).append(1.0 if density is None else density)
        row.setdefault("flicker", []).append(temporal_flickering_score(frames))
        for key, value in score_video(frames, parse_prompt(prompt)).items():
            row.setdefault(key, []).append(value)
        if ref is not None:
            values, _ = compare_videos(frames, ref, metrics)
            for key, value in values.items():
                if value is not None:
                    row.setdefault(key, []).append(value)

    def write_results() -> None:
        """Tables, JSON and plot of what is measured so far (rewritten after every pair: a cut-off run keeps them)."""
        table_rows = []
        for name, row in rows.items():
            mean = {k: float(np.nanmean(v)) for k, v in row.items()}
            mean["setting"] = name
            table_rows.append(mean)
        dense_seconds = table_rows[0]["seconds"]
        header = ("| setting | pairs | density | PSNR dB | SSIM | LPIPS | flicker | prompt_match (colour/shape/dir) | s/video | "
                  "× dense |")
        lines = [header, "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
        for r in table_rows:
            def fmt(key: str, spec: str) -> str:
                return format(r[key], spec) if key in r else "–"
            lines.append(f"| {r['setting']} | {len(rows[r['setting']]['seconds'])} | {r['density']:.3f} | {fmt('psnr', '.2f')} | {fmt('ssim', '.4f')} | "
                         f"{fmt('lpips', '.4f')} | {r['flicker']:.4f} | {r['prompt_match']:.2f} "
                         f"({format_attributes(r)}) | {r['seconds']:.2f} | {dense_seconds / r['seconds']:.2f} |")
        table = "\n".join(lines)
        print(table)

        device = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else "cpu"
        g = base.generation
        from xattn_video.mini.model import tokens_per_call

        title = (f"# XAttention on the mini model: `{args.model}` ({g.frames}x{g.height}x{g.width}, "
                 f"{tokens_per_call(g.frames, g.height, g.width):,} tokens per attention call, {g.steps} steps), {device}")
        note = (f"{len(pairs)} held-out (prompt, seed) pairs; dense and every setting from the same noise; block 128, "
                f"stride {base.xattn.stride}; default warmup {base.xattn.warmup_steps} dense steps; clause composition "
                f"weight {g.clause_weight:g}. Means over the pairs. "
                f"`python benchmarks/quality_mini.py {' '.join(sys.argv[1:] if argv is None else argv)}`.")
        stem = args.name or f"quality-{args.model}-{device.lower().replace(' ', '-')}"
        args.out_dir.mkdir(parents=True, exist_ok=True)
        write_text(f"{title}\n\n{note}\n\n{table}\n", args.out_dir / f"{stem}.md")
        write_json({"model": args.model, "device": device, "pairs": pairs, "generation": dataclasses.asdict(g),
                    "rows": table_rows, "per_pair": rows}, args.out_dir / f"{stem}.json")
        plot(table_rows, args.out_dir / f"{stem}.png", title.lstrip("# "))
        print(f"wrote {args.out_dir / stem}.md|json|png", file=sys.stderr)

    def sparse_rows(named_runs) -> None:
        for i, (prompt, seed) in enumerate(pairs):
            for name, run in named_runs:
                r = for_pair(run, prompt, seed)
                r.dense = False
                result = run_pipeline(pipe, r, show_progress=False)
                record(name, result.frames, result.seconds_total, result.xattn["mean_density_sparse_calls"], prompt,
                       dense_frames[i])
            print(f"  pair {i + 1}/{len(pairs)} done ({time.time() - started:.0f} s)", file=sys.stderr, flush=True)
            write_results()

    print(f"{args.model}: {len(pairs)} pairs, {len(settings)} uniform settings", file=sys.stderr, flush=True)
    for prompt, seed in pairs:
        r = for_pair(base, prompt, seed)
        r.dense = True
        result = run_pipeline(pipe, r, show_progress=False)
        dense_frames.append(result.frames)
        record("dense", result.frames, result.seconds_total, None, prompt, None)
    sparse_rows(settings)

    if args.calibrate:
        tau09 = next((run for name, run in settings if name == f"τ 0.9, warmup {base.xattn.warmup_steps}"), None)
        if tau09 is not None:
            target = float(np.mean(rows[f"τ 0.9, warmup {base.xattn.warmup_steps}"]["density"]))
            calib_prompts = [prompt for prompt, _ in held_out_pairs(2, seed=99)]  # not the evaluation prompts
            calibrated = []
            for per_head in (False, True):
                result = run_calibration(tau09, calib_prompts, steps=2, density=target, per_head=per_head,
                                         pipe=pipe, show_progress=False)
                label = "per-head" if per_head else "per-layer"
                calibrated.append((f"{label} calibrated at τ 0.9's density", result.config))
            sparse_rows(calibrated)

    write_results()
    return 0


def plot(rows: list[dict], path: Path, title: str) -> None:
    """PSNR against density: one line per warmup, calibrated settings as single markers."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot", file=sys.stderr)
        return
    from xattn_video.video_io import write_figure

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if "psnr" not in r:
            continue
        key = r["setting"].split(", ", 1)[1] if r["setting"].startswith("τ") else r["setting"]
        groups.setdefault(key, []).append(r)
    for key, members in groups.items():
        members.sort(key=lambda r: r["density"])
        xs, ys = [r["density"] for r in members], [r["psnr"] for r in members]
        ax.plot(xs, ys, "o-" if len(members) > 1 else "s", label=key)
        if len(members) > 1:
            for r in members:
                ax.annotate(r["setting"].split(",")[0], (r["density"], r["psnr"]), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))
    ax.set_xlabel("mean density of the sparse calls (kept blocks)")
    ax.set_ylabel("PSNR against dense (dB)")
    ax.set_title(textwrap.fill(title, 90), fontsize=8)  # the title names model, shape and GPU: wrap, do not clip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    write_figure(fig, path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
