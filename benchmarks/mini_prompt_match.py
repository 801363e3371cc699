"""Dense prompt following of the mini model: generate held-out (prompt, seed) pairs and score ``prompt_match``.

    python benchmarks/mini_prompt_match.py --model mini mini-large --pairs 32 --guidance 1 5 --out-dir OUT

(``XVID_MINI_WEIGHTS=FOLDER`` scores another pipeline folder, e.g. a fresh training run's.)
Prints one table row per (preset, guidance): the share of objects with every attribute right and per attribute
(colour, shape, direction), and seconds per video; writes ``prompt-match-mini-<gpu>.md|json`` in ``--out-dir``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    from xattn_video.config import load_config
    from xattn_video.eval.scorers.prompt_match import score_video
    from xattn_video.generate import run_pipeline
    from xattn_video.mini.grammar import held_out_pairs, parse_prompt
    from xattn_video.pipelines.loading import load_pipeline

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", nargs="+", default=["mini"], help="mini and/or mini-large")
    p.add_argument("--pairs", type=int, default=32)
    p.add_argument("--guidance", type=float, nargs="+", default=[None])
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--out-dir", type=Path, default=None)
    p.add_argument("--name", default=None)
    args = p.parse_args(argv)

    rows = []
    for model in args.model:
        overrides = [f"model.path={model}", f"model.device={args.device}"]
        if args.steps:
            overrides.append(f"generation.steps={args.steps}")
        base = load_config(None, overrides)
        pipe = load_pipeline(base.model)
        for guidance in args.guidance:
            scores: dict[str, list[float]] = {}
            seconds = []
            for prompt, seed in held_out_pairs(args.pairs):
                run = load_config(None, overrides + [f"generation.prompt={prompt}", f"generation.seed={seed}"]
                                  + ([f"generation.guidance_scale={guidance}"] if guidance is not None else []))
                run.dense = True
                result = run_pipeline(pipe, run, show_progress=False)
                seconds.append(result.seconds_total)
                for key, value in score_video(result.frames, parse_prompt(prompt)).items():
                    scores.setdefault(key, []).append(value)
            g = base.generation.guidance_scale if guidance is None else guidance
            row = {"model": model, "guidance": g, "steps": base.generation.steps, "pairs": args.pairs,
                   "size": f"{base.generation.frames}x{base.generation.height}x{base.generation.width}",
                   "seconds_per_video": float(np.median(seconds)),
                   **{k: float(np.mean(v)) for k, v in scores.items()}}
            rows.append(row)
            print(f"{model} guidance {g}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()
                                                         if k.startswith("prompt_match")), flush=True)
    header = "| model | size | steps | guidance | all three | colour | shape | direction | s/video |"
    lines = [header, "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['size']} | {r['steps']} | {r['guidance']:g} | {r['prompt_match']:.3f} | "
                     f"{r['prompt_match_colour']:.3f} | {r['prompt_match_shape']:.3f} | "
                     f"{r['prompt_match_direction']:.3f} | {r['seconds_per_video']:.2f} |")
    table = "\n".join(lines)
    print(table)
    if args.out_dir:
        import torch

        from xattn_video.video_io import write_json, write_text

        gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        name = args.name or f"prompt-match-mini-{gpu.lower().replace(' ', '-')}"
        args.out_dir.mkdir(parents=True, exist_ok=True)
        write_text(f"# prompt_match of dense mini-model generations ({gpu})\n\n{args.pairs} held-out (prompt, seed) "
                   f"pairs (`xattn_video.mini.grammar.held_out_pairs`), dense attention.\n\n{table}\n",
                   args.out_dir / f"{name}.md")
        write_json({"gpu": gpu, "rows": rows}, args.out_dir / f"{name}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
