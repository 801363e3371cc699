"""Clause composition: a prompt of several clauses, each clause's own prediction steering the video.

"a red ball moving left and a white square moving down" asks a model to bind each direction to its object. A small
model may read both clauses with every object's tokens and move the objects at random (the mini model: 13–16 of 32
two-object directions right), while it follows a lone clause (15 of 16). Composable diffusion (Liu et al., 2022,
"Compositional Visual Generation with Composable Diffusion Models") predicts with each clause alone and adds the
clauses' differences from the empty prompt; here that composition is blended with the whole prompt's prediction:

    v = v(prompt) + w · (v(∅) + Σ_i [v(clause_i) − v(∅)] − v(prompt))

``w`` = 0 is plain sampling, 1 the pure composition (which, on every step, loses objects more often: two
single-object predictions compete for one place). The empty prompt's and the clauses' predictions ride in the
prompt's own transformer call (batch × (2 + clauses)), so a step of a two-clause prompt costs one call of 4× the
batch. Prompts of one clause and the unconditional call of classifier-free guidance run unchanged. ``steps`` limits
the composition to the first denoising steps (where a small model decides each object's colour and motion), the rest
run plain: the mini presets compose at ``w`` = 1 in the first 4 of 20 steps, which beat ``w`` = 0.5 on every step at
both sizes (README, "Composition schedule"; our reading: on later steps each clause alone keeps its one object and
draws background where the other one is, so composing there pulls both toward erasure). ``start`` runs the first
steps plain, so that the whole prompt lays out its objects before the clauses steer them (each clause alone puts its
one object where the noise suggests, often the same place for every clause, and the blend then merges
them). On the mini model that does not pay: composing from step 2 on lost more than it kept apart (README).

The composition reads a clause alone as "this object, whatever else is there". A model trained with lone prompts
only on one-object clips reads it as "this object and nothing else", so on latents that hold two objects each
clause's difference from the empty prompt also pulls the *other* object toward background
(``benchmarks/mini_clause_erasure.py``). Weights trained with partial captions (``mini.train --partial-prob``: some
two-object clips captioned with one object and a marker) learn the composition's meaning for the marked text;
``suffix`` (``generation.clause_suffix``, set from such weights' ``training.json``) appends the marker to each
clause, while the whole prompt and lone prompts keep their own meaning.

Wan-family pipelines (``WanPipeline``, its I2V pipeline, Wan 2.2's second expert): their transformer takes the
text as ``encoder_hidden_states`` alone. The hook is a diffusers ``ModelHook`` on the transformer, installed for one
generation by :func:`clause_composition`, which also encodes the texts; the pipeline then gets ``prompt_embeds``
instead of ``prompt`` and the hook recognises the prompt's call by that tensor.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import torch
from diffusers.hooks import ModelHook

from ..config import ConfigError
from ..warmup.schedule import StepTracker
from .dispatch import add_hook, remove_hook

CLAUSE_HOOK = "xattn_video.clause_composition"


def composition(empty: torch.Tensor, clauses: list[torch.Tensor]) -> torch.Tensor:
    """Composable diffusion's ∅ + Σ_i [v(clause_i) − v(∅)] of predictions [B, C, F, H, W]."""
    return empty + sum(clause - empty for clause in clauses)


def refereed_composition(prompt: torch.Tensor, empty: torch.Tensor, clauses: list[torch.Tensor]) -> torch.Tensor:
    """∅ + Σ_i d_i, each clause's difference d_i = v(clause_i) − v(∅) kept only in the latent cells where it
    points the way the whole prompt's does (Σ over channels of d_i · (v(prompt) − v(∅)) ≥ 0): a clause alone
    erases the objects it does not name (benchmarks/mini_clause_erasure.py), and there its difference opposes the
    prompt's, which draws every object. Predictions [B, C, F, H, W]."""
    empty = empty.float()
    towards = prompt.float() - empty
    out = empty
    for clause in clauses:
        d = clause.float() - empty
        out = out + d * ((d * towards).sum(1, keepdim=True) >= 0)
    return out.to(prompt.dtype)


def composition_texts(prompt: str, clauses: list[str], suffix: str = "") -> list[str]:
    """The texts one composed prediction reads, in the hook's order: the whole prompt, the empty prompt, then each
    clause with ``suffix`` (``generation.clause_suffix``) appended."""
    return [prompt, "", *[clause + suffix for clause in clauses]]


def split_clauses(prompt: str) -> list[str]:
    """The prompt's clauses, its parts between the word "and": ``["a red ball moving left", "a white square moving
    down"]``; one clause for a prompt without "and"."""
    parts = [part.strip(" ,.;") for part in re.split(r"\band\b", prompt)]
    return [part for part in parts if part]


class ClauseCompositionHook(ModelHook):
    """On the transformer call whose ``encoder_hidden_states`` is ``prompt_embeds`` [B, L, C], also predicts with
    ``part_embeds`` [1 + n, L, C] (the empty prompt, then the n clauses) in the same call and returns the blend in the
    module docstring, in the denoising steps ``start`` ≤ step < ``steps`` (None: to the last step; the step is read
    from the running pipeline as warmup reads it); every other call runs as is. ``steady_batch``: the prompt's calls
    outside that window are widened all the same and return the prompt's own prediction, because a step cache
    (xattn_video.caches) keeps activations of the batch it saw and breaks when it changes (4 -> 1 rows).
    ``referee``: compose with :func:`refereed_composition` instead of ∅ + Σ(clause − ∅)."""

    def __init__(self, prompt_embeds: torch.Tensor, part_embeds: torch.Tensor, weight: float,
                 steps: int | None = None, tracker: StepTracker | None = None, start: int = 0,
                 steady_batch: bool = False, referee: bool = False):
        super().__init__()
        self.prompt_embeds, self.part_embeds, self.weight = prompt_embeds, part_embeds, float(weight)
        self.steps, self.start, self.tracker = steps, int(start), tracker or StepTracker(None)
        self.steady_batch, self.referee = steady_batch, referee

    def _is_prompt(self, text: Any) -> bool:
        p = self.prompt_embeds
        return isinstance(text, torch.Tensor) and (text is p or (text.data_ptr() == p.data_ptr()
                                                                 and text.shape == p.shape))

    def blend(self, prompt: torch.Tensor, empty: torch.Tensor, clauses: list[torch.Tensor],
              weight: float) -> torch.Tensor:
        """The module docstring's blend of the predictions [B, C, F, H, W] of the prompt, the empty prompt and each
        clause; ``weight`` 0 (outside the window, widened only for a step cache): the prompt's own."""
        if weight == 0:
            return prompt
        composed = refereed_composition(prompt, empty, clauses) if self.referee else composition(empty, clauses)
        return prompt + weight * (composed - prompt)

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        forward = self.fn_ref.original_forward
        text = kwargs.get("encoder_hidden_states")
        if args or not self._is_prompt(text):  # Wan pipelines call the transformer with keywords only
            return forward(*args, **kwargs)
        weight = self.weight
        if self.steps is not None or self.start:
            step = self.tracker.current()
            if step is not None and (step < self.start or (self.steps is not None and step >= self.steps)):
                if not self.steady_batch:
                    return forward(*args, **kwargs)
                weight = 0.0  # the widened call all the same, so that a step cache sees one batch size
        batch = kwargs["hidden_states"].shape[0]
        copies = 1 + self.part_embeds.shape[0]
        parts = self.part_embeds.repeat_interleave(batch, dim=0)  # [(1 + n) B, L, C], B rows per part
        wide = {key: (torch.cat([value] * copies) if isinstance(value, torch.Tensor) and value.ndim > 0
                      and value.shape[0] == batch else value) for key, value in kwargs.items()}
        wide["encoder_hidden_states"] = torch.cat([text, parts])
        out = forward(**wide)
        sample = out[0] if isinstance(out, tuple) else out.sample
        prompt, empty, *clauses = sample.split(batch)
        blended = self.blend(prompt, empty, clauses, weight)
        if isinstance(out, tuple):
            return (blended, *out[1:])
        out.sample = blended
        return out


def transformers_of(pipe: Any) -> list[torch.nn.Module]:
    """The pipeline's denoising transformers (Wan 2.2 A14B has two experts)."""
    return [m for m in (getattr(pipe, "transformer", None), getattr(pipe, "transformer_2", None)) if m is not None]


def composed_clauses(prompt: str, weight: float) -> list[str]:
    """The clauses a composition at ``weight`` composes for ``prompt``: none when the weight is 0 or the prompt has
    one clause."""
    clauses = split_clauses(prompt)
    return clauses if weight != 0 and len(clauses) >= 2 else []


def cache_compute_first(prompt: str, weight: float, steps: int | None = None, start: int = 0) -> int:
    """How many first denoising steps a step cache must compute in full for this composition: two past the last
    step where the prompt's call switches between composed and plain (``steps``, the window's end; else ``start``,
    its beginning), so that no prediction or skip reads the other kind of step (:mod:`xattn_video.caches.window`).
    0 when the composition does not run or runs on every step."""
    if not composed_clauses(prompt, weight):
        return 0
    last_switch = steps if steps is not None else start
    return last_switch + 2 if last_switch else 0


@contextlib.contextmanager
def clause_composition(pipe: Any, prompt: str, weight: float, max_sequence_length: int,
                       device: torch.device | str, steps: int | None = None,
                       start: int = 0, steady_batch: bool = False,
                       suffix: str = "", referee: bool = False) -> Iterator[torch.Tensor | None]:
    """Install :class:`ClauseCompositionHook` for one generation; yields the ``prompt_embeds`` [1, L, C] to pass
    to the pipeline instead of ``prompt``, or None (nothing installed) when ``weight`` is 0 or the prompt has one
    clause. ``steady_batch``: one batch size in every step (set it when a step cache runs); ``suffix``: appended to
    each clause's text (``generation.clause_suffix``); ``referee``: the hook's (``generation.clause_referee``).
    Raises ``ConfigError`` for pipelines outside the Wan family."""
    clauses = composed_clauses(prompt, weight)
    if not clauses:
        yield None
        return
    from .family import detect_family
    from .wan import WAN  # the family whose transformer takes the text as encoder_hidden_states alone

    try:
        family = detect_family(pipe)
    except TypeError:
        family = None
    if family is not WAN:
        raise ConfigError(f"config key 'generation.clause_weight' works with Wan-family pipelines "
                          f"({', '.join(sorted(WAN.pipeline_classes))}), not {type(pipe).__name__}")
    modules = transformers_of(pipe)
    dtype = modules[0].dtype
    with torch.no_grad():
        embeds, _ = pipe.encode_prompt(prompt=composition_texts(prompt, clauses, suffix),
                                       do_classifier_free_guidance=False,
                                       max_sequence_length=max_sequence_length, device=device, dtype=dtype)
    prompt_embeds, part_embeds = embeds[:1].contiguous(), embeds[1:]
    for module in modules:
        add_hook(module, ClauseCompositionHook(prompt_embeds, part_embeds, weight, steps, StepTracker(pipe), start,
                                                 steady_batch, referee),
                 CLAUSE_HOOK)
    try:
        yield prompt_embeds
    finally:
        for module in modules:
            remove_hook(module, CLAUSE_HOOK)

