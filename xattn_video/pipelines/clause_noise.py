"""Starting noise for clause composition: of K seeded noises, the one whose clauses keep their objects apart.

Clause composition (:mod:`.clauses`) predicts each clause of "A and B" alone in the first denoising steps. Each clause
puts its one object where the noise suggests, without knowing about the other, and when the two clauses choose the
same place or paths that meet, the plain steps after the composition settle the collision by fading one object (the
mini model never saw objects overlap). How much the two clauses' objects share the frame is readable in the
composition itself: a clause's object map is where its prediction differs from the empty prompt's (the norm over
latent channels of ``v(clause) − v(∅)``, per latent frame a distribution over the frame's cells), and two maps
overlap by the mass they share (``Σ min(p_a, p_b)``: 0 apart, 1 the same place).

At the first step every noise gives the same central blob (overlaps 0.74–0.86 whatever the outcome), so the choice
is scored at the *last composed step* (step 3 of the mini presets, σ 0.97), where pairs that go on to lose an
object overlap more (README, "Choosing the noise"). The choice, as initial-noise selection does for neglected objects
in text-to-image models (InitNO, Guo et al., CVPR 2024):

1. draw K noises one after another from a CPU generator seeded with the run's seed (candidate 0 is the pipeline's own
   noise, so K = 1 is plain sampling);
2. sample each with the composition up to its last composed step (the pipeline itself, interrupted there; dense,
   before XAttention or a step cache is installed, so dense and sparse runs of one seed start from the same noise);
3. keep the noise whose clauses overlap least at that step.

It costs K × (composed steps) transformer calls of (2 + clauses) rows before the generation.
"""

from __future__ import annotations

from typing import Any

import torch

from .clauses import clause_composition, transformers_of


def candidate_noises(pipe: Any, count: int, num_frames: int, height: int, width: int, seed: int,
                     device: torch.device | str) -> torch.Tensor:
    """``count`` starting noises [count, C, F, h, w] float32, drawn one after another from one CPU generator seeded
    with ``seed`` as the pipeline draws its own (so candidate 0 is the pipeline's own noise)."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    channels = transformers_of(pipe)[0].config.in_channels
    return torch.cat([pipe.prepare_latents(1, channels, height, width, num_frames, torch.float32, device, generator)
                      for _ in range(count)])


def scored_step(steps: int, clause_steps: int | None, clause_start: int = 0) -> int:
    """The denoising step whose composed prediction scores the candidates: the window's last composed step (4 steps
    in when the composition runs on every step), within the generation's ``steps``."""
    end = clause_steps if clause_steps is not None else clause_start + 4
    return max(0, min(end, steps) - 1)


@torch.no_grad()
def choose_clause_noise(pipe: Any, call: dict[str, Any], candidates: int, seed: int, weight: float,
                        max_sequence_length: int, device: torch.device | str, clause_steps: int | None,
                        clause_start: int = 0) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The noise [1, C, F, h, w] whose clauses overlap least at :func:`scored_step` and its candidate index (a 0-d
    tensor on ``device``), or None when there is nothing to choose (K < 2, or a prompt the composition leaves
    alone). ``call``: the keyword arguments of the generation's pipeline call (prompt, size, steps, guidance; its
    latents, generator, callback and output type are replaced here). Run it with the sampler set as the generation
    will use it (size, shift) and without XAttention or a step cache installed."""
    if candidates < 2:
        return None
    prompt, steps = call["prompt"], call["num_inference_steps"]
    stop = scored_step(steps, clause_steps, clause_start)
    overlaps: list[tuple[int | None, torch.Tensor]] = []
    with clause_composition(pipe, prompt, weight, max_sequence_length, device, clause_steps, clause_start,
                            overlaps=overlaps) as prompt_embeds:
        if prompt_embeds is None:
            return None
        noises = candidate_noises(pipe, candidates, call["num_frames"], call["height"], call["width"], seed, device)

        def interrupt_after_scored_step(p: Any, i: int, _t: Any, _kwargs: dict) -> dict:
            if i >= stop:
                p._interrupt = True  # diffusers' own early stop: the loop skips the remaining steps
            return {}

        scores = []
        for k in range(candidates):
            overlaps.clear()
            kwargs = {key: value for key, value in call.items()
                      if key not in ("prompt", "generator", "latents", "output_type", "callback_on_step_end")}
            pipe(**kwargs, prompt_embeds=prompt_embeds, latents=noises[k:k + 1], output_type="latent",
                 callback_on_step_end=interrupt_after_scored_step)
            at_stop = [value for step, value in overlaps if step == stop]
            if not at_stop:  # the step is read from the pipeline as warmup reads it; a pipeline that hides it fails
                raise RuntimeError(f"clause noise choice: no composed prediction was seen at step {stop}")
            scores.append(at_stop[-1])
    best = torch.cat(scores).argmin()  # on the device: no host synchronization
    return noises.index_select(0, best.view(1)), best


__all__ = ["candidate_noises", "choose_clause_noise", "scored_step"]
