"""Prompt following of the mini model: generate held-out (prompt, seed) pairs and score ``prompt_match``.

    python benchmarks/mini_prompt_match.py --model mini mini-large --pairs 32 --guidance 1 5 --out-dir OUT

(``XVID_MINI_WEIGHTS=FOLDER`` scores another pipeline folder, e.g. a fresh training run's; ``--set KEY=VALUE``
changes the config of every run, e.g. ``--set generation.frames=9 --set generation.height=32`` for a model trained
at a small shape.)
Prints one table row per (preset, guidance): the share of objects with every attribute right and per attribute
(colour, shape, direction), and seconds per video; writes ``prompt-match-mini-<gpu>.md|json`` in ``--out-dir``.
``--reference`` adds two rows per preset that need no transformer: the training data's own clips for the same
prompts (the scorer's ceiling, 1.0) and those clips after the VAE's encode/decode round trip (the ceiling of
any generation, since every generated video is a VAE decode). ``--guided-steps N`` applies ``--guidance`` to the
first N denoising steps only (diffusers' dynamic-guidance pattern: a step-end callback sets the pipeline's
``_guidance_scale`` to 1, which WanPipeline reads before each step): strong guidance where each seed's motion is fixed.
``--attention dense xattn`` adds, per row, the same pairs with XAttention (the config's τ and warmup; ``--set
xattn.threshold=0.95`` changes them) from the same noise, and a paired count against dense: objects right in both,
lost (right in dense only), gained, wrong in both. Sparse sampling near a fork can flip an object either way, so the
paired count says whether XAttention costs prompt following where a difference of means over few pairs cannot.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Any

import numpy as np


def guide_first_steps(pipe: Any, steps: int) -> None:
    """Make ``pipe`` (a diffusers pipeline with classifier-free guidance) guide its first ``steps`` steps only."""
    call = pipe.__class__.__call__

    @functools.wraps(call)  # run_pipeline passes only the arguments __call__'s signature lists
    def guided(self, *a, callback_on_step_end=None, **kw):
        def on_step_end(pipe_, i, t, kwargs):
            out = callback_on_step_end(pipe_, i, t, kwargs) if callback_on_step_end else {}
            if i + 1 >= steps:
                pipe_._guidance_scale = 1.0
            return out
        return call(self, *a, callback_on_step_end=on_step_end, **kw)

    # a subclass for this pipeline only: Python calls ``type(pipe).__call__``, never an instance attribute
    pipe.__class__ = type(pipe.__class__.__name__, (pipe.__class__,), {"__call__": guided})


SWAPPED_WORD = {"opposite": "direction", "shapes": "shape"}  # negatives that swap one word of every object
NEGATIVES = ("empty", "exchange", *SWAPPED_WORD)


def contrast_prompt(prompt: str, negative: str) -> str:
    """The negative prompt ``--negative`` names for ``prompt`` ("" = the pipeline's empty one)."""
    from xattn_video.mini.grammar import exchange_directions, format_prompt, parse_prompt, swap_clip

    objects = parse_prompt(prompt)
    if negative == "exchange" and len(objects) == 2 and objects[0].direction != objects[1].direction:
        return format_prompt(exchange_directions(objects))
    if negative in SWAPPED_WORD:
        return format_prompt(swap_clip(objects, SWAPPED_WORD[negative]))
    return ""


def guidance_label(row: dict) -> str:
    """A row's guidance as the table shows it: ``4`` on every step, ``4 (first 2 steps)``, ``4, negative exchange``."""
    steps = row.get("guided_steps")
    negative = row.get("negative", "empty")
    return (f"{row['guidance']:g}" + (f" (first {steps} steps)" if steps is not None else "")
            + (f", negative {negative}" if negative != "empty" else ""))


def paired_objects(dense: list[dict], sparse: list[dict]) -> dict[str, int]:
    """Per object, dense against sparse from the same noise: {"both", "lost", "gained", "neither"} over the pairs of
    two rows, each pair's ``right`` a list of bools (all three attributes right) per object of its prompt."""
    counts = dict.fromkeys(("both", "lost", "gained", "neither"), 0)
    for d, s in zip(dense, sparse, strict=True):
        if (d["prompt"], d["seed"]) != (s["prompt"], s["seed"]):
            raise ValueError(f"pairs differ: {d['prompt']!r} seed {d['seed']} against {s['prompt']!r} seed {s['seed']}")
        for a, b in zip(d["right"], s["right"], strict=True):
            counts["both" if a and b else "lost" if a else "gained" if b else "neither"] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    from xattn_video.config import load_config
    from xattn_video.eval.scorers.prompt_match import (DIRECTION_OUTCOMES, direction_outcome, object_checks,
                                                        read_objects, score_readings, unasked_colours)
    from xattn_video.generate import run_pipeline
    from xattn_video.mini.grammar import held_out_pairs, parse_prompt
    from xattn_video.pipelines.loading import load_pipeline

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", nargs="+", default=["mini"], help="mini and/or mini-large")
    p.add_argument("--pairs", type=int, default=32)
    p.add_argument("--guidance", type=float, nargs="+", default=[None])
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every run, e.g. generation.height=32 (repeatable)")
    p.add_argument("--out-dir", type=Path, default=None)
    p.add_argument("--name", default=None)
    p.add_argument("--reference", action="store_true",
                   help="also score the data's clips and their VAE round trip (the ceiling of generation)")
    p.add_argument("--no-generate", action="store_true", help="only the --reference rows")
    p.add_argument("--guided-steps", type=int, default=None, metavar="N",
                   help="apply --guidance to the first N denoising steps only (default: every step)")
    p.add_argument("--negative", choices=NEGATIVES, default="empty",
                   help="the negative prompt of guidance > 1: empty (plain classifier-free guidance); exchange (the "
                        "prompt with its two objects' directions exchanged, where they differ: guidance then pushes "
                        "away from the wrong binding; empty otherwise); opposite (every direction reversed); shapes "
                        "(every ball a square and every square a ball: guidance then pushes each object's shape "
                        "away from the other one)")
    p.add_argument("--skip", type=int, default=0,
                   help="leave out the first N pairs (after --objects): score the rest of a set another run began")
    p.add_argument("--objects", type=int, choices=(1, 2), default=None,
                   help="score only the pairs (of the --pairs held-out ones) whose prompt names this many objects")
    p.add_argument("--variant", action="append", default=[], metavar="LABEL:KEY=VALUE[,KEY=VALUE]",
                   help="a row per variant: these config overrides on top of --set, the pipeline loaded once (e.g. "
                        "steps30:generation.steps=30); repeatable; default one row with --set alone")
    p.add_argument("--pair-seed", type=int, default=None,
                   help="draw the pairs from this grammar seed, generation seeds from 20,000: a tuning set apart from "
                        "the held-out pairs (choose settings on it, report them on the held-out pairs)")
    p.add_argument("--attention", nargs="+", choices=("dense", "xattn"), default=["dense"],
                   help="rows per attention: dense, and/or XAttention at the config's τ and warmup from the same noise "
                        "(with both, each xattn row gets a paired count of objects lost and gained against dense)")
    p.add_argument("--why", action="store_true",
                   help="also count, per row, why directions scored as they did (right, object not found, not "
                        "moving, opposite, sideways) and the median travel of the objects found")
    args = p.parse_args(argv)
    if args.guided_steps is not None and args.guided_steps < 1:
        p.error(f"--guided-steps must be >= 1, got {args.guided_steps}")
    variants = [("", [])]
    if args.variant:
        variants = []
        for spec in args.variant:
            label, _, overrides = spec.partition(":")
            if not label or "=" not in overrides:
                p.error(f"--variant {spec!r}: expected LABEL:KEY=VALUE[,KEY=VALUE]")
            variants.append((label, overrides.split(",")))
    pairs = (held_out_pairs(args.pairs) if args.pair_seed is None
             else held_out_pairs(args.pairs, seed=args.pair_seed, first_seed=20_000))

    rows = []
    for model in args.model:
        overrides = [f"model.path={model}", f"model.device={args.device}", *args.set]
        if args.steps:
            overrides.append(f"generation.steps={args.steps}")
        base = load_config(None, overrides)
        pipe = load_pipeline(base.model)
        if args.guided_steps is not None:
            guide_first_steps(pipe, args.guided_steps)
        if args.reference:
            rows.extend(reference_rows(pipe, base, model, args.pairs))
        attentions = sorted(set(args.attention), key=("dense", "xattn").index)  # dense first: xattn rows pair with it
        grid = [(v, g, a) for v in variants for g in ([] if args.no_generate else args.guidance) for a in attentions]
        for (label, variant), guidance, attention in grid:
            config = load_config(None, overrides + variant)
            g = config.generation.guidance_scale if guidance is None else guidance
            scores: dict[str, list[float]] = {}
            outcomes = dict.fromkeys(DIRECTION_OUTCOMES, 0)
            travels = []
            seconds = []
            densities = []
            per_pair = []
            todo = [(p, s) for p, s in pairs if args.objects is None or len(parse_prompt(p)) == args.objects]
            todo = todo[args.skip:]
            for index, (prompt, seed) in enumerate(todo, 1):
                negative = contrast_prompt(prompt, args.negative)
                run = load_config(None, overrides + variant + [f"generation.prompt={prompt}", f"generation.seed={seed}"]
                                  + ([f"generation.guidance_scale={guidance}"] if guidance is not None else [])
                                  + ([f"generation.negative_prompt={negative}"] if negative else []))
                run.dense = attention == "dense"
                result = run_pipeline(pipe, run, show_progress=False)
                seconds.append(result.seconds_total)
                if not run.dense:
                    densities.append(result.xattn["mean_density_sparse_calls"])
                objects = parse_prompt(prompt)
                readings = read_objects(result.frames, objects)
                pair_scores = score_readings(readings, objects)
                for key, value in pair_scores.items():
                    scores.setdefault(key, []).append(value)
                print(f"  {model}{' ' + label if label else ''} {attention} guidance {g} [{index}/{len(todo)}] {prompt!r} "
                      f"seed {seed}: prompt_match {pair_scores['prompt_match']:.2f} ({result.seconds_total:.1f} s)",
                      file=sys.stderr, flush=True)  # progress: a CPU run takes minutes
                pair_outcomes = [direction_outcome(reading, obj) for reading, obj in zip(readings, objects)]
                per_pair.append({"prompt": prompt, "seed": seed, "directions": pair_outcomes,
                                 "right": [all(object_checks(r, o)) for r, o in zip(readings, objects)],
                                 "shapes": [[obj.shape, reading.shape] for obj, reading in zip(objects, readings)],
                                 **({"unasked": unasked_colours(result.frames, objects)} if args.why else {})})
                for reading, outcome in zip(readings, pair_outcomes):
                    outcomes[outcome] += 1
                    if reading.found:
                        travels.append(float(np.hypot(*reading.travel)))
            xattn_label = f" xattn τ {config.xattn.threshold:g}" if attention == "xattn" else ""
            row = {"model": model + (f" {label}" if label else "") + xattn_label, "variant": variant, "guidance": g,
                   "attention": attention, "density": float(np.mean(densities)) if densities else 1.0,
                   "guided_steps": args.guided_steps, "negative": args.negative, "steps": config.generation.steps,
                   "pairs": len(per_pair),
                   "size": f"{base.generation.frames}x{base.generation.height}x{base.generation.width}",
                   "seconds_per_video": float(np.median(seconds)),
                   **{k: float(np.mean(v)) for k, v in scores.items()}, "per_pair": per_pair}
            if attention == "xattn" and rows and rows[-1].get("attention") == "dense":
                row["vs_dense"] = paired_objects(rows[-1]["per_pair"], per_pair)  # grid order: dense just before
            if args.why:
                row["direction_outcomes"] = outcomes
                row["median_travel"] = float(np.median(travels)) if travels else float("nan")
                row["right_by_objects"] = right_by_object_count(per_pair)
                row["shape_readings"] = shape_readings(per_pair)
                row["unasked"] = sum(bool(pair["unasked"]) for pair in per_pair)
            rows.append(row)
            print(f"{row['model']} guidance {g}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()
                                                         if k.startswith("prompt_match")), flush=True)
    header = "| model | size | steps | guidance | all three | colour | shape | direction | s/video |"
    lines = [header, "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "video" in r:  # a reference row
            lines.append(f"| {r['model']}: {r['video']} | {r['size']} | – | – | {r['prompt_match']:.3f} | "
                         f"{r['prompt_match_colour']:.3f} | {r['prompt_match_shape']:.3f} | "
                         f"{r['prompt_match_direction']:.3f} | – |")
            continue
        lines.append(f"| {r['model']} | {r['size']} | {r['steps']} | {guidance_label(r)} | {r['prompt_match']:.3f} | "
                     f"{r['prompt_match_colour']:.3f} | {r['prompt_match_shape']:.3f} | "
                     f"{r['prompt_match_direction']:.3f} | {r['seconds_per_video']:.2f} |")
    if args.why:
        lines += ["", "Directions (objects): " + ", ".join(DIRECTION_OUTCOMES) + "; median centroid travel of the objects "
                  "found, in frame sides (the data moves objects 0.25-0.5).", ""]
        lines += [f"- {r['model']}, guidance {guidance_label(r)}: " + ", ".join(
            f"{name} {count}" for name, count in r["direction_outcomes"].items()) + f"; travel {r['median_travel']:.2f}"
            for r in rows if "direction_outcomes" in r]
        lines += [f"- {r['model']}, guidance {guidance_label(r)}, shapes (asked: read as ball / square / not found): "
                  + "; ".join(f"{asked} {c['ball']} / {c['square']} / {c['not found']}"
                              for asked, c in r["shape_readings"].items())
                  for r in rows if "shape_readings" in r]
        lines += [f"- {r['model']}, guidance {guidance_label(r)}, right directions by objects in the prompt: " + ", ".join(
            f"{n} object(s) {right}/{total}" for n, (right, total) in r["right_by_objects"].items())
            for r in rows if "right_by_objects" in r]
        lines += [f"- {r['model']}, guidance {guidance_label(r)}, videos with an object of a colour the prompt does not "
                  f"name: {r['unasked']}/{r['pairs']}" for r in rows if "unasked" in r]
    paired = [r for r in rows if "vs_dense" in r]
    if paired:
        lines += ["", "XAttention against dense from the same noise, per object (all three attributes right): right in "
                  "both, lost (dense only), gained (XAttention only), wrong in both.", ""]
        lines += [f"- {r['model']}, guidance {guidance_label(r)}: density {r['density']:.3f}; both {r['vs_dense']['both']}, "
                  f"lost {r['vs_dense']['lost']}, gained {r['vs_dense']['gained']}, neither {r['vs_dense']['neither']}"
                  for r in paired]
    table = "\n".join(lines)
    print(table)
    if args.out_dir:
        import torch

        from xattn_video.video_io import write_report

        gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        name = args.name or f"prompt-match-mini-{gpu.lower().replace(' ', '-')}"
        which = ("held-out" if args.pair_seed is None
                 else f"tuning (grammar seed {args.pair_seed}, generation seeds from 20,000)")
        attention_words = ("XAttention" if set(args.attention) == {"xattn"}
                           else "dense attention" + (" and XAttention" if "xattn" in args.attention else ""))
        write_report(f"# prompt_match of mini-model generations ({gpu})\n\n{args.pairs} {which} (prompt, seed) "
                     f"pairs (`xattn_video.mini.grammar.held_out_pairs`)"
                     + (f", only those naming {args.objects} object(s)" if args.objects else "")
                     + (f", the first {args.skip} of them left out" if args.skip else "")
                     + (f": {rows[0]['pairs']} pairs scored" if (args.objects or args.skip) and rows else "")
                     + f", {attention_words}"
                     + (f"; config overrides: {', '.join(f'`{o}`' for o in args.set)}" if args.set else "") + ".\n\n"
                     + (REFERENCE_NOTE if args.reference else "") + f"{table}\n",
                     {"gpu": gpu, "rows": rows}, args.out_dir, name)
    return 0


def shape_readings(per_pair: list[dict]) -> dict[str, dict[str, int]]:
    """{asked shape: {read as "ball" / "square" / "not found": objects}} over the pairs of one row: which way the
    shape errors go."""
    counts = {asked: {"ball": 0, "square": 0, "not found": 0} for asked in ("ball", "square")}
    for pair in per_pair:
        for asked, read in pair["shapes"]:
            counts[asked][read or "not found"] += 1
    return counts


def right_by_object_count(per_pair: list[dict]) -> dict[int, tuple[int, int]]:
    """{objects in the prompt: (objects moving the prompt's way, objects)} over the pairs of one row."""
    counts: dict[int, list[int]] = {}
    for pair in per_pair:
        c = counts.setdefault(len(pair["directions"]), [0, 0])
        c[0] += sum(o == "right" for o in pair["directions"])
        c[1] += len(pair["directions"])
    return {n: (c[0], c[1]) for n, c in sorted(counts.items())}


REFERENCE_NOTE = ("'data clip': the training data's own clip for each pair's prompt (drawn with the pair's seed); "
                  "'VAE round trip': that clip encoded and decoded by the model's VAE. Every generated video is a VAE "
                  "decode, so the round trip is the ceiling of generation at that size.\n\n")


def reference_rows(pipe, base, model: str, pairs: int) -> list[dict]:
    """Scores of the training data's clips for the held-out prompts (drawn with each pair's seed) and of their
    VAE round trip (encode, decode), at the preset's size: what a perfect transformer could reach."""
    import random

    import torch

    from xattn_video.eval.scorers.prompt_match import score_video
    from xattn_video.mini.data import render, to_frames
    from xattn_video.mini.grammar import held_out_pairs, parse_prompt

    gen = base.generation
    scores: dict[str, dict[str, list[float]]] = {"data clip": {}, "VAE round trip": {}}
    vae = pipe.vae
    for prompt, seed in held_out_pairs(pairs):
        objects = parse_prompt(prompt)
        video = render([objects], gen.frames, gen.height, gen.width, random.Random(seed), pipe.device).video
        with torch.no_grad():
            latents = vae.encode(video.to(vae.dtype)).latent_dist.mode()
            decoded = vae.decode(latents).sample.float().clamp(-1, 1)
        for name, clip in (("data clip", video), ("VAE round trip", decoded)):
            for key, value in score_video(to_frames(clip[0]), objects).items():
                scores[name].setdefault(key, []).append(value)
    rows = []
    for name, by_key in scores.items():
        rows.append({"model": model, "video": name, "pairs": pairs,
                     "size": f"{gen.frames}x{gen.height}x{gen.width}", **{k: float(np.mean(v)) for k, v in by_key.items()}})
        print(f"{model} {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in rows[-1].items() if k.startswith("prompt_match")),
              flush=True)
    return rows


if __name__ == "__main__":
    sys.exit(main())
