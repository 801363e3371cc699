"""Does a lone clause draw the other object as background? (mini model; the premise of clause composition)

Composable diffusion adds v(clause) − v(∅) per clause, as if a lone clause meant "this object, whatever else is
there". A model trained with lone prompts only on one-object clips may read it as "this object and nothing else":
then, on latents that hold two objects, each clause's difference from the empty prompt pulls the *other* object
toward background, and the composition ∅ + Σ(clause − ∅) = c1 + c2 − ∅ keeps an object only as much as the
clause that does not name it keeps it (the 1 of c1 and the 1 of ∅ cancel).

For N two-object clips drawn from the training data (their own objects, sizes and paths, at the preset's shape),
the clean latents are noised to σ with a seeded noise and each prediction's clean video (x̂0 = x − σ·v, decoded)
is read per object: its *retention* is the least-squares coefficient of the prediction on the object's own contrast
over its pixels (the render's mask), ``Σ (pred − bg)·(gt − bg) / Σ (gt − bg)²``: 1 drawn as in the clip, 0
background. Rows: the whole prompt, the empty prompt, the clause naming the object ("own clause"), the clause naming
the other object ("other clause"), and the composition. Usage::

    python benchmarks/mini_clause_erasure.py --clips 8 --out benchmarks/results/mini-clause-erasure-cpu.md
    XVID_MINI_WEIGHTS=/tmp/mini-partial python benchmarks/mini_clause_erasure.py ...   # another folder
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
import torch

from xattn_video.config import load_config
from xattn_video.mini.data import render
from xattn_video.mini.grammar import format_prompt, sample_objects
from xattn_video.mini.model import encode_prompts, latent_norm
from xattn_video.pipelines.clauses import composition, composition_texts, refereed_composition, split_clauses
from xattn_video.pipelines.loading import load_pipeline

ROWS = ("whole prompt", "empty prompt", "own clause", "other clause", "composition", "refereed composition")


def retention(pred: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> float:
    """Least-squares coefficient of ``pred`` on the object's contrast: videos [3, T, H, W] in [-1, 1], ``mask``
    [T, H, W] (the object's coverage; > 0.5 counts); the background is the clip's own (median outside objects)."""
    inside = mask > 0.5
    background = truth.flatten(1).median(1).values.view(3, 1, 1, 1)  # objects cover < 20% of a frame
    contrast = (truth - background)[:, inside]
    return float(((pred - background)[:, inside] * contrast).sum() / contrast.pow(2).sum().clamp_min(1e-8))


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.99, 0.97, 0.9, 0.7, 0.5])
    p.add_argument("--model", default="mini")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="a .md table (and the .json beside it)")
    args = p.parse_args()
    run = load_config(None, [f"model.path={args.model}", "model.device=cpu"])
    g = run.generation
    pipe = load_pipeline(run.model)
    mean, std = latent_norm(pipe.vae)
    rng = random.Random(args.seed)
    objects = [sample_objects(rng, two_prob=1.0) for _ in range(args.clips)]
    clip = render(objects, g.frames, g.height, g.width, rng)
    z0 = (pipe.vae.encode(clip.video).latent_dist.mode() - mean) / std  # [N, C, F, h, w]
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(args.seed))
    decode = lambda z: pipe.vae.decode(z * std + mean).sample.clamp(-1, 1)  # noqa: E731
    # per clip: the whole prompt, the empty prompt, clause 1, clause 2 as the composition reads them (each clause with
    # the weights' generation.clause_suffix); encoded once, used at every σ
    prompts = [format_prompt(pair) for pair in objects]
    texts = [encode_prompts(pipe.text_encoder, composition_texts(prompt, split_clauses(prompt), g.clause_suffix), "cpu")
             for prompt in prompts]
    table: dict[str, dict[str, list[float]]] = {}
    for sigma in args.sigmas:
        per_row: dict[str, list[float]] = {}
        for i, text in enumerate(texts):
            x = (1 - sigma) * z0[i:i + 1] + sigma * noise[i:i + 1]
            v = pipe.transformer(x.expand(len(text), -1, -1, -1, -1), timestep=torch.full((len(text),),
                                 sigma * 1000), encoder_hidden_states=text, return_dict=False)[0]
            whole, empty, first, second = v.split(1)
            composed = composition(empty, [first, second])
            refereed = refereed_composition(whole, empty, [first, second])
            videos = decode(x - sigma * torch.cat([whole, empty, first, second, composed, refereed]))
            for k in range(2):  # object k, named by clause k
                own, other = (2, 3) if k == 0 else (3, 2)
                for row, index in zip(ROWS, (0, 1, own, other, 4, 5)):
                    per_row.setdefault(row, []).append(retention(videos[index], clip.video[i], clip.masks[i, k]))
        table[f"{sigma:g}"] = per_row
        print(f"σ {sigma:g}: " + ", ".join(f"{row} {np.mean(v):.2f}" for row, v in per_row.items()), flush=True)
    lines = ["| prediction | " + " | ".join(f"σ {s}" for s in table) + " |",
             "|---|" + "---:|" * len(table)]
    for row in ROWS:
        lines.append(f"| {row} | " + " | ".join(f"{np.mean(t[row]):.2f}" for t in table.values()) + " |")
    print("\n".join(lines))
    if args.out is not None:
        head = (f"# Object retention per prediction, {args.model} ({len(objects)} two-object training clips, "
                f"{g.frames}x{g.height}x{g.width}, seed {args.seed}; benchmarks/mini_clause_erasure.py)\n\n"
                "Retention: least-squares coefficient of the predicted clean video on the object's contrast over its "
                "pixels (1: drawn as in the clip, 0: background), mean over both objects of every clip.\n\n")
        args.out.write_text(head + "\n".join(lines) + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(
            {"model": args.model, "seed": args.seed, "clips": [format_prompt(o) for o in objects],
             "retention": table}, indent=1) + "\n")


if __name__ == "__main__":
    main()
