"""Does the clauses' overlap in the composed steps predict a lost object? (mini model, defaults, two-object pairs)

For each two-object (prompt, seed) pair this generates the video with the presets' defaults and records, at each
composed step, how much the two clauses' object maps share: a clause's map is the channel norm of
v(clause) − v(∅) per latent cell, normalised to a distribution per latent frame; the overlap is the sum of the two
maps' minimum (0: apart, 1: the same place), averaged over the latent frames. Printed per pair with its
prompt_match; a table by outcome and the rank AUC (how often a pair that lost an object overlapped more at the last
composed step than one that kept both) at the end. Usage::

    python benchmarks/mini_clause_overlap.py --pairs 12 --pair-seed 77 --out benchmarks/results/mini-clause-overlap-cpu.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from xattn_video.config import load_config
from xattn_video.eval.scorers.prompt_match import score_video
from xattn_video.generate import run_pipeline
from xattn_video.mini.grammar import held_out_pairs, parse_prompt
from xattn_video.pipelines import clauses
from xattn_video.pipelines.loading import load_pipeline


def overlap(empty: torch.Tensor, parts: list[torch.Tensor]) -> float:
    """Mean over latent frames of the shared mass of the two clauses' object maps (predictions [1, C, F, H, W])."""
    maps = [(part - empty).float().norm(dim=1)[0] for part in parts]  # [F, H, W]
    maps = [m / m.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-12) for m in maps]
    return torch.minimum(*maps).sum(dim=(-2, -1)).mean().item()


def recording_hook(record: dict[int, float]) -> type:
    """The composition hook, also recording the overlap at each composed step (its blend unchanged)."""

    class Recording(clauses.ClauseCompositionHook):
        def blend(self, prompt, empty, parts, weight):
            step = self.tracker.current()
            if weight != 0 and step is not None:
                record[step] = overlap(empty, parts)
            return super().blend(prompt, empty, parts, weight)

    return Recording


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=12, help="two-object pairs (the tuning set's odd pairs)")
    p.add_argument("--pair-seed", type=int, default=77)
    p.add_argument("--model", default="mini")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=None, help="JSON of the rows")
    args = p.parse_args()
    pairs = [pair for pair in held_out_pairs(2 * args.pairs, seed=args.pair_seed, first_seed=20_000)
             if len(clauses.split_clauses(pair[0])) == 2]
    base = [f"model.path={args.model}", f"model.device={args.device}"]
    pipe = load_pipeline(load_config(None, base).model)
    record: dict[int, float] = {}
    clauses.ClauseCompositionHook = recording_hook(record)  # clause_composition builds the hook by this name
    rows = []
    for prompt, seed in pairs:
        record.clear()
        start = time.perf_counter()
        run = load_config(None, [*base, f"generation.prompt={prompt}", f"generation.seed={seed}"])
        run.dense = True
        frames = run_pipeline(pipe, run, show_progress=False).frames
        rows.append({"prompt": prompt, "seed": seed,
                     "prompt_match": score_video(frames, parse_prompt(prompt))["prompt_match"],
                     "overlap": {step: round(value, 3) for step, value in sorted(record.items())}})
        print(json.dumps(rows[-1]), f"({time.perf_counter() - start:.0f} s)", flush=True)
    last = max(rows[0]["overlap"])
    kept = [r["overlap"][last] for r in rows if r["prompt_match"] == 1.0]
    lost = [r["overlap"][last] for r in rows if r["prompt_match"] == 0.5]
    for label, values in (("both objects right", kept), ("one object lost", lost)):
        if values:
            print(f"{label}: {len(values)} pairs, overlap at step {last} {sum(values) / len(values):.3f} "
                  f"({min(values):.3f}-{max(values):.3f})")
    if kept and lost:
        auc = sum((a > b) + 0.5 * (a == b) for a in lost for b in kept) / (len(lost) * len(kept))
        print(f"AUC (one lost vs both right) at step {last}: {auc:.2f}")
    if args.out is not None:
        args.out.write_text(json.dumps({"pairs": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
