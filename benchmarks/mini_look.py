"""A picture of what the mini model draws: for a few held-out prompts, every 4th frame of the dense video in a row.

    python benchmarks/mini_look.py --out look.png [--model mini] [--pairs 6] [--guidance 1] [--seeds 10009 10025]
        [--set generation.clause_weight=0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def select_pairs(count: int, seeds: list[int] | None = None) -> list[tuple[str, int]]:
    """The first ``count`` held-out (prompt, seed) pairs, or with ``seeds`` those pairs whose generation seed is listed."""
    from xattn_video.mini.grammar import held_out_pairs

    if not seeds:
        return held_out_pairs(count)
    first = held_out_pairs(1)[0][1]
    if min(seeds) < first:
        raise ValueError(f"--seeds: held-out generation seeds start at {first}, got {sorted(seeds)}")
    return [pair for pair in held_out_pairs(max(seeds) - first + 1) if pair[1] in seeds]


def main(argv: list[str] | None = None) -> int:
    from PIL import Image, ImageDraw

    from xattn_video.config import load_config
    from xattn_video.generate import run_pipeline
    from xattn_video.pipelines.loading import load_pipeline

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="a .png")
    p.add_argument("--model", default="mini")
    p.add_argument("--pairs", type=int, default=6)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="only the held-out pairs with these generation seeds (10000 + the pair's index)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every video (repeatable)")
    args = p.parse_args(argv)
    try:
        pairs = select_pairs(args.pairs, args.seeds)
    except ValueError as e:
        p.error(str(e))
    overrides = [f"model.path={args.model}", f"model.device={args.device}"]
    if args.guidance is not None:
        overrides.append(f"generation.guidance_scale={args.guidance}")
    overrides += args.overrides
    pipe = load_pipeline(load_config(None, overrides).model)
    rows = []
    for prompt, seed in pairs:
        run = load_config(None, overrides + [f"generation.prompt={prompt}", f"generation.seed={seed}"])
        run.dense = True
        frames = run_pipeline(pipe, run, show_progress=False).frames  # [T, H, W, 3] in [0, 1]
        strip = np.concatenate(list(frames[::4]), axis=1)
        label = np.zeros((14, strip.shape[1], 3), dtype=strip.dtype)
        image = Image.fromarray((np.concatenate([label, strip]) * 255).clip(0, 255).astype(np.uint8))
        ImageDraw.Draw(image).text((2, 1), f"seed {seed}: {prompt}", fill=(255, 255, 255))
        rows.append(np.asarray(image))
    width = max(r.shape[1] for r in rows)
    grid = np.concatenate([np.pad(r, ((0, 2), (0, width - r.shape[1]), (0, 0))) for r in rows])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
