"""Does reading the right clause make the mini model move each object the right way? Cross-attention routed by hand.

    python benchmarks/mini_routing_probe.py --pairs 8 --out-dir benchmarks/results

The shipped model's object tokens do not tell a two-object prompt's clauses apart (``mini_grounding_probe.py``:
own-clause share ~0.5). Here, for held-out two-object pairs whose objects move different ways, each pair is sampled
twice from the same noise (Euler, ``--steps``, shift ``--shift``, guidance 1): as is, and with every block's
cross-attention routed — the video tokens inside object i's track (``--regions data``: in the training clip the
pair's seed draws, as in ``mini_motion_probe.py``; ``sample``: where object i's colour is in the unrouted sample,
the model's own blobs) may not read the other object's clause (additive −1e4 on those text positions), while
``--route-sigma`` ≤ σ. ``prompt_match`` then reads each object's direction. If routing makes the directions follow
the prompt, the binding is lost in the routing (training should teach it); if not, the word does not become motion
even when read. CPU: ~1 min per pair.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xattn_video.eval.scorers.prompt_match import colour_labels, read_objects  # noqa: E402
from xattn_video.mini.data import render  # noqa: E402
from xattn_video.mini.euler import decode_frames, euler_sample  # noqa: E402
from xattn_video.mini.grammar import COLOURS, held_out_pairs, parse_prompt  # noqa: E402
from xattn_video.mini.grounding import clause_spans, token_regions  # noqa: E402
from xattn_video.mini.model import TEXT_LEN, load_folder  # noqa: E402
from xattn_video.mini.train import latent_thumbnail  # noqa: E402
from xattn_video.video_io import write_text  # noqa: E402


class RoutedCrossAttention:
    """Wraps a block's ``attn2`` processor: while ``state["on"]``, adds ``state["bias"]`` [B, 1, N, L] to the
    attention logits (through the processor's ``attention_mask``)."""

    def __init__(self, inner: Any, state: dict) -> None:
        self.inner, self.state = inner, state

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.state["on"]:
            attention_mask = self.state["bias"].to(hidden_states.dtype)
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)


def routing_bias(prompt: str, regions: torch.Tensor, threshold: float = 0.3) -> torch.Tensor:
    """[1, 1, N, TEXT_LEN]: −1e4 where a token inside object i (coverage > ``threshold``) meets clause j ≠ i."""
    spans = clause_spans(prompt)
    bias = torch.zeros(1, 1, regions.shape[-1], TEXT_LEN)
    for i in range(2):
        inside = regions[0, i] > threshold
        for j, (start, end) in enumerate(spans[:2]):
            if j != i:
                bias[0, 0, inside, start:end] = -1e4
    return bias


def sample(pipe, prompt: str, seed: int, steps: int, shift: float, shape, state: dict, route_sigma: float):
    routed = state["on"]

    def route(sigma: float) -> None:
        state["on"] = routed and sigma >= route_sigma

    z = euler_sample(pipe, prompt, seed, steps, shift, shape, before_step=route)
    state["on"] = False
    frames = decode_frames(pipe, z)
    return read_objects(frames, parse_prompt(prompt)), frames


def sample_regions(frames: np.ndarray, objects, patch: tuple[int, int]) -> torch.Tensor:
    """[1, 2, N]: where each object's colour is in a finished sample's frames, on the token grid."""
    labels = colour_labels(frames)  # [T, H, W]
    names = list(COLOURS)
    masks = torch.stack([torch.from_numpy(labels == names.index(o.colour)).float() for o in objects])[None]
    return token_regions(latent_thumbnail(masks), patch)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--shift", type=float, default=6.0)
    p.add_argument("--route-sigma", type=float, default=0.0, help="route while σ ≥ this (0: every step)")
    p.add_argument("--regions", choices=("data", "sample"), default="data",
                   help="object i's tokens: its track in the training clip the seed draws, or where its colour is "
                        "in the unrouted sample (the model's own blobs)")
    p.add_argument("--shape", type=int, nargs=3, default=(33, 128, 128))
    p.add_argument("--out-dir", type=Path, default=None)
    args = p.parse_args(argv)
    _, pipe = load_folder()
    state = {"on": False, "bias": None}
    for block in pipe.transformer.blocks:
        block.attn2.set_processor(RoutedCrossAttention(block.attn2.processor, state))
    patch = tuple(pipe.transformer.config.patch_size[1:])
    pairs = [(pr, s) for pr, s in held_out_pairs(200) if len(parse_prompt(pr)) == 2
             and len({o.direction for o in parse_prompt(pr)}) == 2][:args.pairs]
    right = {"as is": [], "routed": []}
    lines = []
    for prompt, seed in pairs:
        objects = parse_prompt(prompt)
        clip = render([objects], *args.shape, random.Random(seed))
        state["bias"] = routing_bias(prompt, token_regions(latent_thumbnail(clip.masks), patch))
        got = {}
        for mode in right:
            state["on"] = mode == "routed"
            readings, frames = sample(pipe, prompt, seed, args.steps, args.shift, tuple(args.shape), state,
                                      args.route_sigma)
            if mode == "as is" and args.regions == "sample":
                state["bias"] = routing_bias(prompt, sample_regions(frames, objects, patch))
            right[mode] += [bool(r.found and r.direction == o.direction) for o, r in zip(objects, readings)]
            got[mode] = ", ".join(f"{o.colour} {r.direction if r.found else 'not found'}"
                                  for o, r in zip(objects, readings))
        line = f"- {prompt!r} seed {seed}: as is {got['as is']}; routed {got['routed']}"
        lines.append(line)
        print(line, flush=True)
    table = ("| sampling | objects moving the asked way |\n|---|---:|\n"
             + "\n".join(f"| {m} | {sum(v)} of {len(v)} ({np.mean(v):.2f}) |" for m, v in right.items()))
    print(table)
    if args.out_dir is not None:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        write_text(f"# Cross-attention routed by hand on the shipped mini model ({len(pairs)} two-object pairs, "
                   f"Euler {args.steps} steps, shift {args.shift:g}, routed while σ ≥ {args.route_sigma:g}, regions: "
                   f"{args.regions}, CPU)\n\n`python benchmarks/mini_routing_probe.py --pairs {args.pairs} "
                   f"--route-sigma {args.route_sigma:g} --regions {args.regions}`\n\n{table}\n\n"
                   + "\n".join(lines) + "\n",
                   args.out_dir / f"mini-routing-probe-{args.regions}-sigma{args.route_sigma:g}-cpu.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
