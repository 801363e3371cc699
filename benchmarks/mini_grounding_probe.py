"""How grounded is the mini model's cross-attention? The grounding loss (``xattn_video.mini.grounding``) of pipeline
folders on fixed two-object clips, per noise level σ and per block.

    python benchmarks/mini_grounding_probe.py --weights xattn_video/mini/weights /tmp/mini-j --out-dir benchmarks/results

Per folder and σ: 1 − (share of each clause's cross-attention mass that comes from the video tokens inside its
object's track), averaged over clauses and clips (0: only the object's tokens read its clause; ~1 − coverage: the
clause is read evenly by all tokens), and the own-clause share: of the attention that object i's tokens put on the
two clauses, the part on clause i (0.5: they do not tell the clauses apart, so they cannot read "their" direction).
Same clips, noise and prompts for every folder. CPU: ~1 min per folder.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xattn_video.mini.data import render  # noqa: E402
from xattn_video.mini.grammar import format_prompt, sample_objects  # noqa: E402
from xattn_video.mini.grounding import CrossAttentionMaps, clause_mass, grounding_loss, token_regions  # noqa: E402
from xattn_video.mini.model import TEXT_LEN, encode_prompts, latent_norm, load_folder  # noqa: E402
from xattn_video.mini.train import encode_video, latent_thumbnail  # noqa: E402
from xattn_video.video_io import write_text  # noqa: E402

SIGMAS = (0.99, 0.97, 0.95, 0.9, 0.6, 0.3)


def own_clause_share(layers: list[torch.Tensor], regions: torch.Tensor, prompts: list[str]) -> float:
    """How much the tokens inside object i read clause i rather than the other clause: region-weighted attention
    mass on clause i / (on clause i + on the other one), averaged over layers, clips with two clauses and the two
    objects (0.5: the object's tokens do not tell the clauses apart)."""
    mass, present = clause_mass(layers, prompts, 2)  # [layers, B, 2 clauses, N]
    read = torch.einsum("kbjn,bin->kbij", mass, regions[:, :2])  # object i's tokens on clause j
    own = read.diagonal(dim1=-2, dim2=-1) / read.sum(-1).clamp_min(1e-12)  # [layers, B, 2]
    return own[:, present.all(-1)].mean().item()


@torch.no_grad()
def probe(folder: str, clips: int, seed: int) -> tuple[float, list[tuple[float, float, float, list[float]]]]:
    """(object coverage per slot, [(σ, loss, own-clause share, loss per block)])."""
    _, pipe = load_folder(folder)
    tr, te, vae = pipe.transformer.eval(), pipe.text_encoder.eval(), pipe.vae.eval()
    mean, std = latent_norm(vae, "cpu")
    rng = random.Random(seed)
    objects = [sample_objects(rng, two_prob=1.0) for _ in range(clips)]
    clip = render(objects, 33, 128, 128, rng, "cpu")
    prompts = [format_prompt(o) for o in objects]
    z0 = encode_video(vae, clip.video, mean, std)
    regions = token_regions(latent_thumbnail(clip.masks), tuple(tr.config.patch_size[1:]))
    text = encode_prompts(te, prompts, "cpu", TEXT_LEN)
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(seed))
    rows = []
    for sigma in SIGMAS:
        with CrossAttentionMaps(tr) as maps:
            tr((1 - sigma) * z0 + sigma * noise, timestep=torch.full((clips,), sigma * 1000),
               encoder_hidden_states=text, return_dict=False)
        rows.append((sigma, grounding_loss(maps.layers, regions, prompts).item(),
                     own_clause_share(maps.layers, regions, prompts),
                     [grounding_loss([m], regions, prompts).item() for m in maps.layers]))
    return regions.sum(-1).mean().item() / regions.shape[-1], rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", nargs="+", default=["xattn_video/mini/weights"], help="pipeline folders")
    p.add_argument("--clips", type=int, default=6)
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--out-dir", type=Path, default=None)
    args = p.parse_args(argv)
    lines = ["| weights | object coverage | σ | grounding loss | own-clause share | loss per block |",
             "|---|---:|---:|---:|---:|---|"]
    for folder in args.weights:
        cover, rows = probe(folder, args.clips, args.seed)
        for sigma, loss, own, per_block in rows:
            lines.append(f"| `{folder}` | {cover:.3f} | {sigma:g} | {loss:.3f} | {own:.3f} | "
                         + " ".join(f"{x:.3f}" for x in per_block) + " |")
        print("\n".join(lines[-len(rows):]), flush=True)
    table = "\n".join(lines)
    if args.out_dir is not None:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        write_text(f"# Cross-attention grounding of mini weights ({args.clips} two-object clips at 33x128x128, "
                   f"seed {args.seed})\n\n{table}\n", args.out_dir / "mini-grounding-probe.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
