"""How diffusable a mini-model VAE's latent space is: colour geometry and robustness to latent errors.

    python benchmarks/mini_vae_latents.py xattn_video/mini/weights /tmp/run/folder --pairs 16 --out-dir OUT

Each argument is a pipeline folder (its ``vae/``) or a ``vae/`` folder. Per VAE, on held-out clips at the mini size
(``mini.grammar.held_out_pairs``, the data renderer) and in the latent units the transformer sees
(``(z - latents_mean) / latents_std``):
- recon: mean |decode(encode(x)) - x| in [-1, 1] pixel units;
- PC1 share: the share of the latent variance on its first principal component (over every latent position of
  frames 1..k; near 1 means the latent is effectively one-dimensional);
- colour gap: the smallest distance between the mean codes of two colours at object centres (latent frames 1..k;
  larger means a transformer error must be larger to turn one colour into another), and the largest
  frame-0-to-later distance of one colour's code (the causal first latent frame's own code);
- prompt_match of decode(z + ε·n) for each ε of ``--noise``, n ~ N(0, 1) drawn once per (clip, channel) and
  added at every latent position: colour, shape and direction read back after a coherent latent error of that size,
  the kind a transformer makes when it draws a consistent but slightly wrong code (independent noise per position
  averages out over an object's cells and barely changes its colour). ε 0 is the VAE's round-trip ceiling.
Writes ``vae-latents-<name>.md|json`` in ``--out-dir``.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np


def load_vae(folder: Path):
    from diffusers import AutoencoderKLWan

    sub = folder / "vae"
    return AutoencoderKLWan.from_pretrained(sub if sub.is_dir() else folder).eval()


def colour_codes(vae, mean, std, frames: int, size: int, seed: int):
    """Mean normalised code of each colour at object centres: {colour: [latent frames, C]}."""
    import torch

    from xattn_video.mini.data import render
    from xattn_video.mini.grammar import COLOURS, ObjectSpec

    rng = random.Random(seed)
    codes = {}
    for colour in COLOURS:
        objects = [[ObjectSpec(colour, shape, d)] for shape in ("ball", "square") for d in ("left", "right")]
        video = render(objects, frames, size, size, rng).video
        with torch.no_grad():
            z = (vae.encode(video).latent_dist.mode() - mean) / std  # [B, C, k+1, size/4, size/4]
        pixels = (video + 1) / 2
        background = pixels[:, :, :1, :2, :2].mean((2, 3, 4), keepdim=True)
        inside = ((pixels - background).abs().sum(1) > 0.3).float()  # [B, T, H, W]
        groups = [inside[:, :1]] + [inside[:, 1 + 4 * i: 5 + 4 * i] for i in range((frames - 1) // 4)]
        # latent cells whose 4x4 pixels are inside the object in every frame they cover
        full = torch.stack([torch.nn.functional.avg_pool2d(g.amin(1), 4) for g in groups], 1) > 0.99
        per_frame = []
        for f in range(full.shape[1]):
            w = full[:, f].unsqueeze(1).float()
            per_frame.append((z[:, :, f] * w).sum((0, 2, 3)) / w.sum().clamp(min=1))
        codes[colour] = torch.stack(per_frame)
    return codes


def measure(folder: Path, pairs: int, noise: list[float], frames: int, size: int) -> dict:
    import torch

    from xattn_video.eval.scorers.prompt_match import score_video
    from xattn_video.mini.data import render, to_frames
    from xattn_video.mini.grammar import held_out_pairs, parse_prompt
    from xattn_video.mini.model import latent_norm

    vae = load_vae(folder)
    mean, std = latent_norm(vae)
    codes = colour_codes(vae, mean, std, frames, size, seed=0)
    later = {c: v[1:].mean(0) for c, v in codes.items()}
    names = list(later)
    gaps = {f"{a}-{b}": float((later[a] - later[b]).norm()) for i, a in enumerate(names) for b in names[i + 1:]}
    frame0 = {c: float((v[0] - later[c]).norm()) for c, v in codes.items()}

    scores: dict[float, dict[str, list[float]]] = {e: {} for e in noise}
    recon, latents_all = [], []
    gen = torch.Generator().manual_seed(0)
    for prompt, seed in held_out_pairs(pairs):
        objects = parse_prompt(prompt)
        video = render([objects], frames, size, size, random.Random(seed)).video
        with torch.no_grad():
            z = (vae.encode(video).latent_dist.mode() - mean) / std
            latents_all.append(z[:, :, 1:].permute(0, 2, 3, 4, 1).reshape(-1, z.shape[1]))
            for eps in noise:
                offset = torch.randn(z.shape[0], z.shape[1], 1, 1, 1, generator=gen)  # one per (clip, channel)
                decoded = vae.decode((z + eps * offset) * std + mean).sample
                decoded = decoded.float().clamp(-1, 1)
                if eps == 0:
                    recon.append(float((decoded - video).abs().mean()))
                for key, value in score_video(to_frames(decoded[0]), objects).items():
                    scores[eps].setdefault(key, []).append(value)
    x = torch.cat(latents_all)
    s = torch.linalg.svdvals(x - x.mean(0)) ** 2
    return {"vae": str(folder), "pairs": pairs, "size": f"{frames}x{size}x{size}",
            "recon_l1": float(np.mean(recon)) if recon else None,
            "pc_share": [round(float(v), 4) for v in (s / s.sum())],
            "colour_gap_min": min(gaps.values()), "colour_gap_min_pair": min(gaps, key=gaps.get),
            "colour_gaps": gaps, "frame0_distance_max": max(frame0.values()), "frame0_distance": frame0,
            "noise": {str(e): {k: float(np.mean(v)) for k, v in by_key.items()} for e, by_key in scores.items()}}


def table(rows: list[dict], noise: list[float]) -> str:
    head = ("| VAE | recon L1 | PC1 share | colour gap (pair) | frame-0 distance | "
            + " | ".join(f"prompt_match c/s/d at ε {e:g}" for e in noise) + " |")
    lines = [head, "|" + "---|" * (5 + len(noise))]
    for r in rows:
        cells = [f"{r['noise'][str(e)]['prompt_match_colour']:.2f} / {r['noise'][str(e)]['prompt_match_shape']:.2f}"
                 f" / {r['noise'][str(e)]['prompt_match_direction']:.2f}" for e in noise]
        lines.append(f"| {r.get('label', r['vae'])} | {r['recon_l1']:.4f} | {r['pc_share'][0]:.3f} | {r['colour_gap_min']:.2f} "
                     f"({r['colour_gap_min_pair']}) | {r['frame0_distance_max']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", type=Path, nargs="+", help="pipeline folders or vae/ folders")
    p.add_argument("--pairs", type=int, default=16)
    p.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.25, 0.5])
    p.add_argument("--frames", type=int, default=33)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--out-dir", type=Path, default=None)
    p.add_argument("--name", default="cpu")
    p.add_argument("--labels", nargs="+", default=None, help="one table label per folder (default: the paths)")
    args = p.parse_args(argv)
    if args.labels is not None and len(args.labels) != len(args.folders):
        print(f"mini_vae_latents: {len(args.labels)} --labels for {len(args.folders)} folders", file=sys.stderr)
        return 2
    for folder in args.folders:
        if not folder.is_dir():
            print(f"mini_vae_latents: no such folder: {folder}", file=sys.stderr)
            return 2
    rows = []
    for i, folder in enumerate(args.folders):
        rows.append(measure(folder, args.pairs, args.noise, args.frames, args.size))
        rows[-1]["label"] = args.labels[i] if args.labels else str(folder)
        print(table(rows[-1:], args.noise).splitlines()[-1], flush=True)
    text = (f"# Latent geometry of mini-model VAEs ({args.pairs} held-out clips, {args.frames}x{args.size}x{args.size})"
            f"\n\n{table(rows, args.noise)}\n\nc/s/d: prompt_match colour / shape / direction of decode(z + ε·n), "
            "z in the normalised units the transformer denoises, n one N(0, 1) offset per (clip, channel).\n")
    print(text)
    if args.out_dir is not None:
        from xattn_video.video_io import write_report

        write_report(text, rows, args.out_dir, f"vae-latents-{args.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
