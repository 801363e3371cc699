"""Does the clauses' overlap in the composed steps predict a lost object? (mini model, defaults, two-object pairs)

For each two-object (prompt, seed) pair this generates the video with the presets' defaults and records, at each
composed step, how much the two clauses' object maps share: a clause's map is the channel norm of
v(clause) − v(∅) per latent cell, normalised to a distribution per latent frame; the overlap is the sum of the two
maps' minimum (0: apart, 1: the same place), averaged over the latent frames. Printed per pair with its
prompt_match; a table by outcome and the rank AUC (how often a pair that lost an object overlapped more at the last
composed step than one that kept both) at the end.

``--candidates K`` also samples each pair from K - 1 other noises (candidate k: seed + k * 100003) and prints what
choosing, per pair, the candidate whose clauses overlap least at a composed step would score against candidate 0
(the pair's own seed) and the best of the K (an oracle). Usage::

    python benchmarks/mini_clause_overlap.py --pairs 12 --pair-seed 77 --out benchmarks/results/mini-clause-overlap-cpu.json
    python benchmarks/mini_clause_overlap.py --pairs 24 --candidates 4 --device cuda --model mini-large --out x.json
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
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides (repeatable)")
    p.add_argument("--candidates", type=int, default=1, help="noises per pair (candidate k: seed + k * 100003)")
    p.add_argument("--out", type=Path, default=None, help="JSON of the rows")
    args = p.parse_args()
    pairs = [pair for pair in held_out_pairs(2 * args.pairs, seed=args.pair_seed, first_seed=20_000)
             if len(clauses.split_clauses(pair[0])) == 2]
    base = [f"model.path={args.model}", f"model.device={args.device}", *args.set]
    pipe = load_pipeline(load_config(None, base).model)
    record: dict[int, float] = {}
    clauses.ClauseCompositionHook = recording_hook(record)  # clause_composition builds the hook by this name
    rows = []
    for prompt, seed in pairs:
        for candidate in range(args.candidates):
            record.clear()
            start = time.perf_counter()
            run = load_config(None, [*base, f"generation.prompt={prompt}",
                                     f"generation.seed={seed + candidate * 100_003}"])
            run.dense = True
            frames = run_pipeline(pipe, run, show_progress=False).frames
            rows.append({"prompt": prompt, "seed": seed, "candidate": candidate,
                         "prompt_match": score_video(frames, parse_prompt(prompt))["prompt_match"],
                         "overlap": {step: round(value, 3) for step, value in sorted(record.items())}})
            print(json.dumps(rows[-1]), f"({time.perf_counter() - start:.0f} s)", flush=True)
            if args.out is not None:  # after every video, so a run cut short keeps what it measured
                args.out.write_text(json.dumps({"pairs": rows}, indent=1) + "\n")
    summarise(rows, args.candidates)


def summarise(rows: list[dict], candidates: int) -> None:
    """The outcome table and AUC at the last composed step; with several candidates, the choice's score by step."""
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
    if candidates < 2:
        return
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["prompt"], r["seed"]), []).append(r)
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    print(f"{len(groups)} pairs; candidate 0: {mean([g[0]['prompt_match'] for g in groups.values()]):.3f}; "
          f"mean of all candidates: {mean([r['prompt_match'] for r in rows]):.3f}")
    for k in range(2, candidates + 1):
        oracle = mean([max(r["prompt_match"] for r in g[:k]) for g in groups.values()])
        chosen = {step: mean([min(g[:k], key=lambda r: r["overlap"][step])["prompt_match"] for g in groups.values()])
                  for step in rows[0]["overlap"]}
        print(f"K {k}: least overlap at step " + ", ".join(f"{s} {v:.3f}" for s, v in chosen.items())
              + f"; best of K (oracle) {oracle:.3f}")


if __name__ == "__main__":
    main()
