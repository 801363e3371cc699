"""Which prompt words the mini model uses, and at which noise level: the word-swap loss gap.

    python benchmarks/mini_word_gap.py --clips 16 --sigmas 0.97 0.9 0.75 0.5 0.25 --out-dir benchmarks/results

Fixed training clips (their own seed) are encoded once and noised to each σ with the same noise. For each
attribute, every object's word is swapped (colour: the next colour; shape: the other shape; direction: the
opposite one) and the flow-matching loss is compared with the right prompts': (loss swapped − loss right) /
loss right. Near 0: the model does not use that word at that σ (it predicts the same for a ball as for a square).
The logged "text gap" of training swaps whole prompts; this splits it by word. ``XVID_MINI_WEIGHTS=FOLDER`` or
``--weights`` probes another pipeline folder. CPU: ~1 min at 16 clips and five σ.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xattn_video.mini.data import render  # noqa: E402
from xattn_video.mini.grammar import exchange_directions, format_prompt, sample_objects, swap_word  # noqa: E402
from xattn_video.mini.model import encode_prompts, latent_norm, load_folder  # noqa: E402


@torch.no_grad()
def word_gaps(pipe, clips: int, sigmas: list[float], shape: tuple[int, int, int], seed: int,
              text_len: int) -> list[dict]:
    """One row per σ: the relative loss gap of each attribute's swap (and of a whole other clip's prompt); "binding"
    over the two-object clips whose objects move different ways only, their directions exchanged between them."""
    mean, std = latent_norm(pipe.vae)
    rng = random.Random(seed)
    objects = [sample_objects(rng) for _ in range(clips)]
    z0 = (pipe.vae.encode(render(objects, *shape, rng).video).latent_dist.mode() - mean) / std
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(seed))
    prompts = {"right": [format_prompt(o) for o in objects]}
    prompts["other prompt"] = prompts["right"][1:] + prompts["right"][:1]
    for attribute in ("colour", "shape", "direction"):
        prompts[attribute] = [format_prompt([swap_word(o, attribute) for o in objs]) for objs in objects]
    prompts["binding"] = [format_prompt(exchange_directions(objs)) for objs in objects]
    crossed = torch.tensor([exchange_directions(objs) != objs for objs in objects])
    texts = {name: encode_prompts(pipe.text_encoder, p, "cpu", text_len) for name, p in prompts.items()}
    rows = []
    for sigma in sigmas:
        zt = (1 - sigma) * z0 + sigma * noise
        timestep = torch.full((clips,), sigma * 1000)
        per_clip = {name: F.mse_loss(pipe.transformer(zt, timestep=timestep, encoder_hidden_states=text,
                                                      return_dict=False)[0], noise - z0, reduction="none").mean((1, 2, 3, 4))
                    for name, text in texts.items()}
        loss = {name: value.mean().item() for name, value in per_clip.items() if name != "binding"}
        if crossed.any():  # relative to the right prompts' loss on the same clips
            right = per_clip["right"][crossed].mean().item()
            loss["binding"] = loss["right"] * (1 + (per_clip["binding"][crossed].mean().item() - right) / right)
        rows.append({"sigma": sigma, "loss": loss["right"],
                     **{name: (value - loss["right"]) / loss["right"] for name, value in loss.items() if name != "right"}})
        print(f"σ {sigma:g}: " + ", ".join(f"{k} {v:+.3f}" for k, v in rows[-1].items() if k not in ("sigma", "loss")),
              flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    from xattn_video.mini import trained_text_len

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", type=Path, default=None, help="pipeline folder (default: the mini weights)")
    p.add_argument("--clips", type=int, default=16)
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.97, 0.9, 0.75, 0.5, 0.25])
    p.add_argument("--shape", type=int, nargs=3, default=[33, 128, 128], metavar=("F", "H", "W"))
    p.add_argument("--seed", type=int, default=4321)
    p.add_argument("--out-dir", type=Path, default=None)
    p.add_argument("--name", default="mini")
    args = p.parse_args(argv)
    folder, pipe = load_folder(args.weights)
    rows = word_gaps(pipe, args.clips, args.sigmas, tuple(args.shape), args.seed, trained_text_len(folder))
    lines = [f"# Which words the mini model uses (`{folder}`)", "",
             f"Command: `python benchmarks/mini_word_gap.py {' '.join(argv or sys.argv[1:])}` ({args.clips} clips at "
             f"{'x'.join(map(str, args.shape))}, seed {args.seed}). Relative loss increase when each object's word is "
             "swapped (colour: the next colour; shape: the other; direction: the opposite), and with another clip's "
             "whole prompt; binding: the two-object clips whose objects move different ways "
             f"({sum(exchange_directions(o) != o for o in crossed_objects(args))} of {args.clips}), the directions "
             "exchanged between their objects. Near 0: the word (or which object it belongs to) is not used at that σ.",
             "",
             "| σ | loss (right prompt) | colour swapped | shape swapped | direction swapped | binding | other clip's prompt |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['sigma']:g} | {r['loss']:.4f} | {r['colour']:+.3f} | {r['shape']:+.3f} | {r['direction']:+.3f} "
              f"| {r.get('binding', float('nan')):+.3f} | {r['other prompt']:+.3f} |" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out_dir is not None:
        from xattn_video.video_io import write_report

        write_report(text, {"weights": str(folder), "clips": args.clips, "shape": args.shape, "rows": rows},
                     args.out_dir, f"word-gap-{args.name}")
    return 0


def crossed_objects(args: argparse.Namespace) -> list:
    """The objects of the probe's clips (drawn as ``word_gaps`` draws them)."""
    rng = random.Random(args.seed)
    return [sample_objects(rng) for _ in range(args.clips)]


if __name__ == "__main__":
    raise SystemExit(main())
