"""What the prompt_match scorer reads off the mini VAE's round trip of training clips: the ceiling of any generation
through that VAE, and the bounding-box fill of balls and squares that the scorer's ball/square threshold must split.

    python benchmarks/mini_scorer_ceiling.py --clips 128 --seed 900 --out-dir benchmarks/results

Clips are the training data's (``mini.data.random_clips``, seeded), encoded and decoded by the VAE of
``--weights`` (a pipeline folder or its ``vae/``). Prints and writes ``scorer-ceiling-<name>.md|json``: per attribute
the share right on the data clips and on their round trips, the fill range per shape on each, and the prompts of the
round trips that fail.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xattn_video.eval.scorers.prompt_match import BALL_FILL_MAX, read_objects, score_readings  # noqa: E402
from xattn_video.mini import weights_dir  # noqa: E402
from xattn_video.mini.data import random_clips, to_frames  # noqa: E402
from xattn_video.mini.grammar import format_prompt  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, default=None, help="pipeline folder or vae/ folder (default: shipped)")
    p.add_argument("--clips", type=int, default=64, help="clips, drawn 16 at a time")
    p.add_argument("--shape", type=int, nargs=3, default=[33, 128, 128], metavar=("F", "H", "W"))
    p.add_argument("--seed", type=int, default=900, help="clip batch b is drawn with random.Random(seed + b)")
    p.add_argument("--out-dir", type=Path, default=None)
    p.add_argument("--name", default="mini")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from diffusers import AutoencoderKLWan

    args = parse_args(argv)
    folder = Path(os.path.relpath(args.weights or weights_dir()))
    vae = AutoencoderKLWan.from_pretrained(folder / "vae" if (folder / "vae").is_dir() else folder).eval()
    scores: dict[str, dict[str, list[float]]] = {"data clip": {}, "VAE round trip": {}}
    fills: dict[str, dict[str, list[float]]] = {k: {"ball": [], "square": []} for k in scores}
    failures: list[str] = []
    for batch in range((args.clips + 15) // 16):
        clips = random_clips(16, *args.shape, random.Random(args.seed + batch), "cpu")
        with torch.no_grad():
            decoded = vae.decode(vae.encode(clips.video).latent_dist.mode()).sample
        for source, videos in (("data clip", clips.video), ("VAE round trip", decoded)):
            for video, objects in zip(videos, clips.objects):
                readings = read_objects(to_frames(video), objects)
                result = score_readings(readings, objects)
                for key, value in result.items():
                    scores[source].setdefault(key, []).append(value)
                for obj, reading in zip(objects, readings):
                    if reading.found:
                        fills[source][obj.shape].append(reading.fill)
                if source == "VAE round trip" and result["prompt_match"] < 1:
                    failures.append(f"{format_prompt(objects)}: {result}")
        print(f"{min(args.clips, 16 * (batch + 1))}/{args.clips} clips", flush=True)
    record = {"weights": str(folder), "shape": args.shape, "clips": args.clips, "seed": args.seed,
              "ball_fill_max": BALL_FILL_MAX,
              "scores": {s: {k: float(np.mean(v)) for k, v in d.items()} for s, d in scores.items()},
              "fill": {s: {shape: [float(min(v)), float(np.median(v)), float(max(v))] if v else None
                           for shape, v in d.items()} for s, d in fills.items()},
              "failures": failures}
    lines = [f"# prompt_match on the mini VAE's round trip ({args.clips} clips at {'x'.join(map(str, args.shape))})",
             "", f"Weights `{folder}`; clips `random_clips(16, ..., random.Random({args.seed} + batch))`; command: "
             f"`python benchmarks/mini_scorer_ceiling.py {' '.join(argv or sys.argv[1:])}`.", "",
             "| source | all three | colour | shape | direction | ball fill min/median/max "
             "| square fill min/median/max |",
             "|---|---:|---:|---:|---:|---|---|"]
    for source, s in record["scores"].items():
        f = record["fill"][source]
        span = {k: "–" if v is None else " / ".join(f"{x:.3f}" for x in v) for k, v in f.items()}
        lines.append(f"| {source} | {s['prompt_match']:.3f} | {s['prompt_match_colour']:.3f} | "
                     f"{s['prompt_match_shape']:.3f} | {s['prompt_match_direction']:.3f} | {span['ball']} | "
                     f"{span['square']} |")
    lines += ["", f"The scorer calls a region a ball when its fill is at most {BALL_FILL_MAX}.", ""]
    lines += [f"- {x}" for x in failures] or ["No round trip fails."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out_dir is not None:
        from xattn_video.video_io import write_report

        write_report(text, record, args.out_dir, f"scorer-ceiling-{args.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
