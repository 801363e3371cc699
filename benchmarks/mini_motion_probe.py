"""Where the mini model decides an object's direction, and whether the prompt takes part.

    python benchmarks/mini_motion_probe.py --pairs 6 --start-sigmas 1 0.99 0.97 0.9 --out-dir benchmarks/results

1. **Start σ.** Each held-out pair's training clip (drawn with the pair's seed) is encoded, noised to σ0 and
   sampled to σ 0 (Euler, ``--steps`` steps evenly spaced in the sampler's time and shifted by ``--shift``, guidance
   ``--guidance``); ``prompt_match`` reads the direction of each object. σ0 = 1 is plain generation; where the share
   of right directions jumps is where the data, not the prompt, fixes the motion.
2. **The prompt at σ 1.** From ``--noises`` fixed noises, the clean video the model predicts in one step for "a
   yellow ball moving {left,right,up,down}": the yellow centroid's travel (first to last quarter of the clip). A
   model that uses the direction word moves the centroid with the word; one that does not moves it with the noise
   only (the same travel for every word).

``XVID_MINI_WEIGHTS=FOLDER`` probes another pipeline folder. CPU: ~20 s per sample at 33x128x128.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xattn_video.eval.scorers.prompt_match import read_objects  # noqa: E402
from xattn_video.mini.data import render, to_frames  # noqa: E402
from xattn_video.mini.grammar import COLOURS, DIRECTION_VECTORS, held_out_pairs, parse_prompt  # noqa: E402
from xattn_video.mini.model import encode_prompts, latent_norm, load_folder  # noqa: E402
from xattn_video.mini.train import shifted_sigma  # noqa: E402


@torch.no_grad()
def sample_from(pipe, z0, noise, text, sigma0: float, steps: int, shift: float, guidance: float) -> torch.Tensor:
    """Euler from z0 noised to ``sigma0`` down to 0; ``text`` [2, L, D] (prompt, empty). Latents [1, C, F, H, W]."""
    u0 = sigma0 / (shift - (shift - 1) * sigma0)  # the sampler time whose shifted σ is sigma0
    sigmas = shifted_sigma(torch.linspace(u0, 0, steps + 1), shift)
    x = (1 - sigmas[0]) * z0 + sigmas[0] * noise
    for i in range(steps):
        v = pipe.transformer(torch.cat([x, x]), timestep=sigmas[i].repeat(2) * 1000, encoder_hidden_states=text,
                             return_dict=False)[0]
        v = v[1:] + guidance * (v[:1] - v[1:])
        x = x + (sigmas[i + 1] - sigmas[i]) * v
    return x


@torch.no_grad()
def start_sigma_rows(pipe, args) -> list[dict]:
    mean, std = latent_norm(pipe.vae)
    right: dict[float, list[bool]] = {s: [] for s in args.start_sigmas}
    for prompt, seed in held_out_pairs(args.pairs):
        objects = parse_prompt(prompt)
        clip = render([objects], *args.shape, random.Random(seed)).video
        z0 = (pipe.vae.encode(clip).latent_dist.mode() - mean) / std
        text = encode_prompts(pipe.text_encoder, [prompt, ""], "cpu")
        noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(seed))
        for sigma0 in args.start_sigmas:
            z = sample_from(pipe, z0, noise, text, sigma0, args.steps, args.shift, args.guidance)
            video = pipe.vae.decode(z * std + mean).sample.clamp(-1, 1)[0]
            for obj, reading in zip(objects, read_objects(to_frames(video), objects)):
                right[sigma0].append(reading.found and reading.direction == obj.direction)
        print(f"{prompt!r}: " + ", ".join(f"σ0 {s:g} {np.mean(v):.2f}" for s, v in right.items()), flush=True)
    return [{"start_sigma": s, "objects": len(v), "direction_right": float(np.mean(v))} for s, v in right.items()]


@torch.no_grad()
def prompt_at_noise_rows(pipe, args) -> list[dict]:
    mean, std = latent_norm(pipe.vae)
    frames, height, width = args.shape
    shape = (args.noises, pipe.vae.config.z_dim, (frames - 1) // 4 + 1, height // 4, width // 4)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    yellow = torch.tensor(COLOURS["yellow"]).view(1, 3, 1, 1, 1)
    rows = []
    for word in DIRECTION_VECTORS:
        text = encode_prompts(pipe.text_encoder, [f"a yellow ball moving {word}"] * args.noises, "cpu")
        v = pipe.transformer(noise, timestep=torch.full((args.noises,), 1000.0), encoder_hidden_states=text,
                             return_dict=False)[0]
        video = (pipe.vae.decode((noise - v) * std + mean).sample.clamp(-1, 1) + 1) / 2  # x0 = x1 - v at σ 1
        weight = (video * yellow).sum(1)
        weight = (weight - weight.mean((2, 3), keepdim=True)).clamp(min=0)  # [N, T, H, W]: above the frame's mean
        total = weight.sum((2, 3)).clamp(min=1e-6)
        cx = (weight * torch.linspace(0, 1, width)).sum((2, 3)) / total
        cy = (weight * torch.linspace(0, 1, height).view(-1, 1)).sum((2, 3)) / total
        q = max(1, frames // 4)
        travel = torch.stack([cx[:, -q:].mean(1) - cx[:, :q].mean(1), cy[:, -q:].mean(1) - cy[:, :q].mean(1)], 1)
        want = torch.tensor(DIRECTION_VECTORS[word], dtype=torch.float32)
        rows.append({"word": word, "travel": travel.tolist(), "along_word": float((travel @ want).mean())})
        print(f"{word:5s}: travel along the word {rows[-1]['along_word']:+.3f}; per noise (dx, dy) "
              + " ".join(f"({x:+.2f},{y:+.2f})" for x, y in travel.tolist()), flush=True)
    words = torch.tensor([r["travel"] for r in rows])  # [4 words, N, 2]
    spread = float((words - words.mean(0)).norm(dim=-1).mean())  # how much the word moves the travel
    by_noise = float((words.mean(0) - words.mean((0, 1))).norm(dim=-1).mean())  # how much the noise does
    rows.append({"word": "summary", "word_spread": spread, "noise_spread": by_noise})
    print(f"travel spread across words {spread:.3f}, across noises {by_noise:.3f}")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", type=Path, default=None, help="pipeline folder (default: the mini weights)")
    p.add_argument("--pairs", type=int, default=6)
    p.add_argument("--start-sigmas", type=float, nargs="+", default=[1.0, 0.99, 0.97, 0.9])
    p.add_argument("--noises", type=int, default=4)
    p.add_argument("--shape", type=int, nargs=3, default=[33, 128, 128], metavar=("F", "H", "W"))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--shift", type=float, default=None, help="default: the folder's scheduler flow_shift")
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--out-dir", type=Path, default=None)
    p.add_argument("--name", default="mini")
    args = p.parse_args(argv)
    folder, pipe = load_folder(args.weights)
    if args.shift is None:
        args.shift = float(pipe.scheduler.config.flow_shift)
    record = {"weights": str(folder), "shift": args.shift, "steps": args.steps, "guidance": args.guidance,
              "shape": args.shape, "prompt_at_noise": prompt_at_noise_rows(pipe, args),
              "start_sigma": start_sigma_rows(pipe, args) if args.pairs else []}
    lines = [f"# Where the mini model decides motion (`{folder}`)", "",
             f"Command: `python benchmarks/mini_motion_probe.py {' '.join(argv or sys.argv[1:])}` (shift {args.shift:g}, "
             f"{args.steps} Euler steps, guidance {args.guidance:g}, {'x'.join(map(str, args.shape))}).", "",
             "| start σ | objects | direction right |", "|---:|---:|---:|"]
    lines += [f"| {r['start_sigma']:g} | {r['objects']} | {r['direction_right']:.3f} |" for r in record["start_sigma"]]
    summary = record["prompt_at_noise"][-1]
    lines += ["", "Predicted clean video at σ 1, \"a yellow ball moving <word>\": yellow centroid travel along the word "
              + ", ".join(f"{r['word']} {r['along_word']:+.3f}" for r in record["prompt_at_noise"][:-1])
              + f"; spread across words {summary['word_spread']:.3f}, across noises {summary['noise_spread']:.3f}."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out_dir is not None:
        from xattn_video.video_io import write_report

        write_report(text, record, args.out_dir, f"motion-probe-{args.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
