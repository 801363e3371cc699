"""Starting noise for clause composition: of several seeded noises, the one whose clauses keep their objects apart.

Clause composition (:mod:`.clauses`) predicts each clause of "A and B" alone. Each clause alone puts its one object
where the noise suggests and moves it the asked way without knowing about the other, so two clauses often pick the
same place, or paths that cross, and the blend merges the two objects into one (on the mini model most two-object
failures are such merges, a lost object or a colour or shape taken from the other one). Which places the noise
suggests is visible in the very first prediction, so the choice of noise can avoid it, as initial-noise selection
does for neglected objects in text-to-image models (InitNO, Guo et al., CVPR 2024):

1. draw ``candidates`` noises from the run's seeded generator, one after another; the first is the noise the
   pipeline would draw itself, so one candidate is plain sampling;
2. predict each noise with the empty prompt and with every clause alone at the first denoising step, one transformer
   call of ``candidates · (1 + clauses)`` rows;
3. each clause's object map is where its prediction differs from the empty prompt's (the norm over latent channels of
   ``v(∅) − v(clause)``, which is ``(x̂0(clause) − x̂0(∅)) / σ`` on the same noise), per latent frame a distribution
   over the frame's cells; two clauses overlap by the mass they share (``Σ min(p_a, p_b)``, 0 apart, 1 the same);
4. keep the noise whose clauses overlap least (averaged over latent frames and clause pairs).

The choice is made on the device (``argmin`` and indexing; no host synchronization) and before any XAttention
or step cache is installed, so dense and sparse runs of one seed start from the same chosen noise.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from .clauses import split_clauses, transformers_of


def candidate_noises(pipe: Any, count: int, num_frames: int, height: int, width: int, seed: int,
                     device: torch.device | str) -> torch.Tensor:
    """``count`` starting noises [count, C, F, h, w] float32, drawn one after another from one CPU generator seeded
    with ``seed`` as the pipeline draws its own (so candidate 0 is the pipeline's own noise)."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    channels = transformers_of(pipe)[0].config.in_channels
    return torch.cat([pipe.prepare_latents(1, channels, height, width, num_frames, torch.float32, device, generator)
                      for _ in range(count)])


def clause_overlap(empty: torch.Tensor, clauses: list[torch.Tensor]) -> torch.Tensor:
    """How much the clauses' objects share the same cells: ``empty`` and each of ``clauses`` [K, C, F, h, w] (the
    predictions of one step on K noises) -> [K] in [0, 1], the mass two clauses' object maps share, averaged over
    latent frames and clause pairs."""
    maps = []
    for clause in clauses:
        energy = (empty.float() - clause.float()).norm(dim=1).flatten(2)  # [K, F, h·w]
        maps.append(energy / energy.sum(-1, keepdim=True).clamp_min(1e-12))
    shared = [torch.minimum(a, b).sum(-1).mean(-1) for i, a in enumerate(maps) for b in maps[i + 1:]]
    return torch.stack(shared).mean(0)


SCORES = ("overlap", "agree")


def clause_disagreement(prompt: torch.Tensor, empty: torch.Tensor, clauses: list[torch.Tensor]) -> torch.Tensor:
    """How far the whole prompt's prediction is from the composition of its clauses: each [K, C, F, h, w] -> [K],
    the mean square of ``v(prompt) − (v(∅) + Σ_i [v(clause_i) − v(∅)])``. Where the clauses put their objects
    where the whole prompt does, the blend adds nothing that fights the prompt's own layout."""
    composed = empty.float() + sum(clause.float() - empty.float() for clause in clauses)
    return (prompt.float() - composed).pow(2).flatten(1).mean(1)


@torch.no_grad()
def choose_clause_noise(pipe: Any, prompt: str, candidates: int, num_frames: int, height: int, width: int,
                        seed: int, steps: int, max_sequence_length: int, device: torch.device | str,
                        weight: float = 0.5, lookahead: int = 0,
                        score: str = "overlap") -> tuple[torch.Tensor, torch.Tensor] | None:
    """The starting noise [1, C, F, h, w] the clauses agree on best (module docstring) and the index of that
    candidate (a 0-d tensor on ``device``), or None when there is nothing to choose (one candidate, or a prompt of
    one clause). ``lookahead``: score after that many composed Euler steps (``weight``: the blend's) instead of on
    the noise itself; ``score``: ``overlap`` (:func:`clause_overlap`) or ``agree`` (:func:`clause_disagreement`).
    Call it with the pipeline's sampler set as the generation will use it."""
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    parts = split_clauses(prompt)
    if candidates < 2 or len(parts) < 2:
        return None
    transformer = transformers_of(pipe)[0]  # Wan 2.2: the first expert takes the first (high-noise) steps
    dtype = transformer.dtype
    embeds, _ = pipe.encode_prompt(prompt=[prompt, "", *parts], do_classifier_free_guidance=False,
                                   max_sequence_length=max_sequence_length, device=device, dtype=dtype)
    noises = candidate_noises(pipe, candidates, num_frames, height, width, seed, device)
    scheduler = copy.deepcopy(pipe.scheduler)
    scheduler.set_timesteps(steps, device=device)
    rows = 2 + len(parts)  # the prompt, ∅, clause 1, ...
    text = embeds.repeat(candidates, 1, 1)
    x = noises
    for step in range(min(lookahead, steps - 1) + 1):
        wide = x.to(dtype).repeat_interleave(rows, dim=0)  # [K·rows, ...]
        timestep = scheduler.timesteps[step:step + 1].expand(wide.shape[0])
        out = transformer(hidden_states=wide, timestep=timestep, encoder_hidden_states=text, return_dict=False)[0]
        out = out.float().unflatten(0, (candidates, rows))
        v_prompt, v_empty, v_clauses = out[:, 0], out[:, 1], [out[:, i] for i in range(2, rows)]
        if step == min(lookahead, steps - 1):
            break
        composed = v_empty + sum(v - v_empty for v in v_clauses)
        velocity = v_prompt + weight * (composed - v_prompt)
        x = x + (scheduler.sigmas[step + 1] - scheduler.sigmas[step]) * velocity
    badness = (clause_overlap(v_empty, v_clauses) if score == "overlap"
               else clause_disagreement(v_prompt, v_empty, v_clauses))
    best = badness.argmin()
    return noises.index_select(0, best.view(1)), best


__all__ = ["SCORES", "candidate_noises", "choose_clause_noise", "clause_disagreement", "clause_overlap"]
