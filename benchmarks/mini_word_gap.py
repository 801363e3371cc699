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
from xattn_video.mini.grammar import SWAPS, format_prompt, sample_objects, swap_clip  # noqa: E402
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
    for swap in SWAPS:
        prompts[swap] = [format_prompt(swap_clip(objs, swap)) for objs in objects]
    crossed = torch.tensor([swap_clip(objs, "binding") != objs for objs in objects])  # the clips binding can change
    texts = {name: encode_prompts(pipe.text_encoder, p, "cpu", text_len) for name, p in prompts.items()}
    rows = []
    for sigma in sigmas:
        zt = (1 - sigma) * z0 + sigma * noise
        timestep = torch.full((clips,), sigma * 1000)
        per_clip = {name: F.mse_loss(pipe.transformer(zt, timestep=timestep, encoder_hidden_states=text,
                                                      return_dict=False)[0], noise - z0, reduction="none").mean((1, 2, 3, 4))
                    for name, text in texts.items()}
        right = per_clip.pop("right")
        # each gap relative to the right prompts' loss on the same clips: binding's over the crossed clips only
        gaps = {name: gap_over(value, right, crossed if name == "binding" else None) for name, value in per_clip.items()}
        rows.append({"sigma": sigma, "loss": right.mean().item(), "binding_clips": int(crossed.sum()), **gaps})
        print(f"σ {sigma:g}: " + ", ".join(f"{k} {v:+.3f}" for k, v in gaps.items()), flush=True)
    return rows


def gap_over(loss: torch.Tensor, right: torch.Tensor, clips: torch.Tensor | None) -> float:
    """(mean ``loss`` − mean ``right``) / mean ``right`` over the clips in the boolean mask ``clips`` ([N]; None: all
    clips); NaN when the mask is empty."""
    if clips is not None:
        if not clips.any():
            return float("nan")
        loss, right = loss[clips], right[clips]
    return (loss.mean().item() - right.mean().item()) / right.mean().item()


def main(argv: list[str] | None = None) -> int:
    from xattn_video.mini import trained_generation

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
    rows = word_gaps(pipe, args.clips, args.sigmas, tuple(args.shape), args.seed,
                     trained_generation("mini", folder)["max_sequence_length"])
    lines = [f"# Which words the mini model uses (`{folder}`)", "",
             f"Command: `python benchmarks/mini_word_gap.py {' '.join(argv or sys.argv[1:])}` ({args.clips} clips at "
             f"{'x'.join(map(str, args.shape))}, seed {args.seed}). Relative loss increase when each object's word is "
             "swapped (colour: the next colour; shape: the other; direction: the opposite), and with another clip's "
             "whole prompt; binding: the two-object clips whose objects move different ways "
             f"({rows[0]['binding_clips']} of {args.clips}), the directions "
             "exchanged between their objects. Near 0: the word (or which object it belongs to) is not used at that σ.",
             "",
             "| σ | loss (right prompt) | colour swapped | shape swapped | direction swapped | binding | other clip's prompt |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['sigma']:g} | {r['loss']:.4f} | {r['colour']:+.3f} | {r['shape']:+.3f} | {r['direction']:+.3f} "
              f"| {r['binding']:+.3f} | {r['other prompt']:+.3f} |" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out_dir is not None:
        from xattn_video.video_io import write_report

        write_report(text, {"weights": str(folder), "clips": args.clips, "shape": args.shape, "rows": rows},
                     args.out_dir, f"word-gap-{args.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
