"""Guidance on the first steps only, on the mini model: does strong classifier-free guidance where each seed's motion
is fixed (the first step from σ 1) make the objects follow the direction word? Dense prompt_match over held-out pairs.

    python benchmarks/mini_early_guidance.py 4 2 32    # guidance 4 on steps 0-1, none after; 32 pairs

CFG is switched off after STEPS steps by diffusers' dynamic-guidance pattern (a step-end callback that sets the
pipeline's ``_guidance_scale`` to 1; WanPipeline reads it before each step). CPU: ~6 min for 32 pairs. Prints one line;
results of 2026-12-05: ``benchmarks/results/prompt-match-mini-early-guidance-cpu.md``.
"""

from __future__ import annotations

import argparse
import functools

import numpy as np


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("scale", type=float, help="guidance scale of the first steps")
    p.add_argument("steps", type=int, help="how many first steps are guided")
    p.add_argument("pairs", type=int, help="held-out (prompt, seed) pairs")
    args = p.parse_args(argv)

    from xattn_video.config import load_config
    from xattn_video.eval.scorers.prompt_match import (DIRECTION_OUTCOMES, direction_outcome, read_objects,
                                                        score_readings)
    from xattn_video.generate import run_pipeline
    from xattn_video.mini.grammar import held_out_pairs, parse_prompt
    from xattn_video.pipelines.loading import load_pipeline

    pipe = load_pipeline(load_config(None, ["model.path=mini", "model.device=cpu"]).model)
    call = pipe.__class__.__call__

    @functools.wraps(call)  # run_pipeline passes only the arguments __call__'s signature lists
    def guided_first_steps(self, *a, callback_on_step_end=None, **kw):
        def on_step_end(pipe_, i, t, kwargs):
            out = callback_on_step_end(pipe_, i, t, kwargs) if callback_on_step_end else {}
            if i + 1 >= args.steps:
                pipe_._guidance_scale = 1.0
            return out
        return call(self, *a, callback_on_step_end=on_step_end, **kw)

    pipe.__class__.__call__ = guided_first_steps
    scores: dict[str, list[float]] = {}
    outcomes = dict.fromkeys(DIRECTION_OUTCOMES, 0)
    for prompt, seed in held_out_pairs(args.pairs):
        run = load_config(None, ["model.path=mini", "model.device=cpu", f"generation.prompt={prompt}",
                                 f"generation.seed={seed}", f"generation.guidance_scale={args.scale}"])
        run.dense = True
        objects = parse_prompt(prompt)
        readings = read_objects(run_pipeline(pipe, run, show_progress=False).frames, objects)
        for key, value in score_readings(readings, objects).items():
            scores.setdefault(key, []).append(value)
        for reading, obj in zip(readings, objects):
            outcomes[direction_outcome(reading, obj)] += 1
    print(f"guidance {args.scale} on the first {args.steps} steps, {args.pairs} pairs:",
          {k: round(float(np.mean(v)), 3) for k, v in scores.items()}, outcomes, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
