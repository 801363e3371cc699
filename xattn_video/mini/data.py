"""Procedural training videos for the mini model: one or two coloured balls or squares moving on a plain dark
background, drawn in torch on any device (no dataset, no download).

Sizes, speeds and start positions are drawn at random and are relative to the frame, so one model learns every
resolution it is trained at: an object is 16–28% of the frame side across, moves 25–50% of the frame over the
clip in a straight line at constant speed, and never leaves the frame; two objects never overlap, except in the
share ``cross_prob`` of two-object clips whose paths are drawn to cross (apart in the first and last frames, one
passing over the other in between; the second-named object is drawn on top).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .grammar import COLOURS, DIRECTION_VECTORS, MAX_OBJECTS, ObjectSpec, format_prompt, sample_objects

SIZE_RANGE = (0.16, 0.28)  # object diameter / side, as a fraction of the frame side
TRAVEL_RANGE = (0.25, 0.50)  # distance moved over the clip, as a fraction of the frame side
BACKGROUND_MAX = 0.10  # background RGB channels are drawn in [0, BACKGROUND_MAX]: plain and dark

# Words around the grammar's phrases in some training prompts, so that other words are ignored by the model too.
_PREFIXES = ("", "", "", "a video of ", "animation: ", "simple animation of ", "on a dark background, ")
_SUFFIXES = ("", "", "", ".", " on a dark background", ", smooth motion", " slowly")


@dataclass
class Clip:
    """A batch of rendered clips: ``video`` float32 [B, 3, T, H, W] in [-1, 1], the objects of each clip and where
    each object is: ``masks`` float32 [B, MAX_OBJECTS, T, H, W] in [0, 1] (its anti-aliased coverage; zeros for a
    slot the clip does not use), slot i being the prompt's i-th object."""

    video: torch.Tensor
    objects: list[list[ObjectSpec]]
    masks: torch.Tensor | None = None

    @property
    def prompts(self) -> list[str]:
        return [format_prompt(o) for o in self.objects]


def training_prompt(objects: list[ObjectSpec], rng: random.Random, marker: str = "") -> str:
    """The canonical prompt, sometimes with filler words around it or a capital first letter; ``marker`` follows
    the objects' phrases (a partial caption's :data:`PARTIAL_MARKER`)."""
    text = rng.choice(_PREFIXES) + format_prompt(objects) + marker + rng.choice(_SUFFIXES)
    return text[0].upper() + text[1:] if rng.random() < 0.2 else text


# Ends a partial caption (a prompt naming one object of a clip that has two), so that a lone prompt keeps meaning
# "this object and nothing else" while "<clause>, among others" means "this object, whatever else is there": what
# clause composition adds for each clause (pipelines/clauses.py; generation.clause_suffix, set for weights trained
# with partial captions from their training.json). No "and": clauses are split at that word.
PARTIAL_MARKER = ", among others"


def caption(objects: list[ObjectSpec], rng: random.Random, partial_prob: float = 0.0) -> str:
    """A training clip's prompt: :func:`training_prompt` of all its objects, or, for the share ``partial_prob`` of
    clips with several objects, of one of them followed by :data:`PARTIAL_MARKER` (:func:`named_objects`)."""
    named = named_objects(objects, rng, partial_prob)
    return training_prompt(named, rng, PARTIAL_MARKER if len(named) < len(objects) else "")


def named_objects(objects: list[ObjectSpec], rng: random.Random, partial_prob: float = 0.0) -> list[ObjectSpec]:
    """The objects a clip's prompt names: all of them, or, in the share ``partial_prob`` of clips with several
    objects, one of them at random (a partial caption: "a red ball moving left" also describes a clip where a blue
    square moves too, which is what clause composition assumes of a lone clause). Draws from ``rng`` only when
    ``partial_prob`` > 0 and the clip has several objects, so 0 keeps the shipped weights' random sequence."""
    if partial_prob > 0 and len(objects) > 1 and rng.random() < partial_prob:
        return [objects[rng.randrange(len(objects))]]
    return objects


def _object_track(rng: random.Random, obj: ObjectSpec) -> tuple[float, float, float, float, float]:
    """(size, x0, y0, x1, y1) in frame fractions for one object: it stays inside the frame from start to end."""
    size = rng.uniform(*SIZE_RANGE)
    travel = rng.uniform(*TRAVEL_RANGE)
    half = size / 2
    dx, dy = DIRECTION_VECTORS[obj.direction]
    along = rng.uniform(half, 1 - half - travel)  # start coordinate along the motion, before orienting it
    across = rng.uniform(half, 1 - half)
    if dx:
        x0 = along if dx > 0 else 1 - along
        return size, x0, across, x0 + dx * travel, across
    y0 = along if dy > 0 else 1 - along
    return size, across, y0, across, y0 + dy * travel


def _overlaps(a: tuple[float, ...], b: tuple[float, ...], frames: int) -> Iterator[bool]:
    """Per frame, whether the two tracks' objects overlap (their boxes intersect); lazily, so a caller can stop at
    the first overlap."""
    for i in range(frames):
        f = i / max(1, frames - 1)
        ax, ay = a[1] + (a[3] - a[1]) * f, a[2] + (a[4] - a[2]) * f
        bx, by = b[1] + (b[3] - b[1]) * f, b[2] + (b[4] - b[2]) * f
        yield max(abs(ax - bx), abs(ay - by)) < (a[0] + b[0]) / 2


def _apart(a: tuple[float, ...], b: tuple[float, ...], frames: int) -> bool:
    """Whether two tracks keep the objects apart (no overlap) in every frame."""
    return not any(_overlaps(a, b, frames))


def _crossing(a: tuple[float, ...], b: tuple[float, ...], frames: int) -> bool:
    """Whether two tracks start and end apart and overlap in between (one object passes over the other)."""
    flags = list(_overlaps(a, b, frames))
    return not flags[0] and not flags[-1] and any(flags)


def _draw_track(rng: random.Random, obj: ObjectSpec, tracks: list[tuple[float, ...]], frames: int,
                accept: Callable[..., bool]) -> tuple[tuple[float, ...], bool]:
    """Up to 100 draws of ``obj``'s track until ``accept(track, other, frames)`` holds for every earlier track:
    (the last draw, whether it was accepted)."""
    for _ in range(100):
        track = _object_track(rng, obj)
        if all(accept(track, other, frames) for other in tracks):
            return track, True
    return track, False


def _clip_tracks(rng: random.Random, objects: list[ObjectSpec], frames: int,
                 cross_prob: float = 0.0) -> list[tuple[float, ...]]:
    """Tracks for the objects of one clip; a second object is redrawn (up to 100 times) until the two never
    overlap, so that every object is whole in every frame, or, in the share ``cross_prob`` of two-object clips,
    until their paths cross (whole in the first and last frames)."""
    # the draw only when asked for, so that cross_prob 0 keeps the shipped weights' random sequence
    crossing = len(objects) > 1 and cross_prob > 0 and rng.random() < cross_prob
    tracks = [_object_track(rng, objects[0])]
    for obj in objects[1:]:
        accepted = False
        if crossing:
            track, accepted = _draw_track(rng, obj, tracks, frames, _crossing)
        if not accepted:  # some pairs cannot cross (e.g. two slow objects far apart): drawn apart instead
            track, _ = _draw_track(rng, obj, tracks, frames, _apart)
        tracks.append(track)
    return tracks


def render(objects: list[list[ObjectSpec]], frames: int, height: int, width: int, rng: random.Random,
           device: torch.device | str = "cpu", cross_prob: float = 0.0) -> Clip:
    """Draw one clip per entry of ``objects`` (each a list of 1–2 objects); parameters come from ``rng``;
    ``cross_prob``: the share of two-object clips whose objects' paths cross (see the module docstring).

    Returns float32 [B, 3, frames, height, width] in [-1, 1]. Edges are anti-aliased over one pixel.
    """
    batch = len(objects)
    side = min(height, width)
    t = torch.linspace(0, 1, frames, device=device).view(1, frames, 1, 1)
    ys = ((torch.arange(height, device=device) + 0.5) / height).view(1, 1, height, 1)
    xs = ((torch.arange(width, device=device) + 0.5) / width).view(1, 1, 1, width)
    background = torch.tensor([[rng.uniform(0, BACKGROUND_MAX) for _ in range(3)] for _ in range(batch)],
                              device=device)
    video = background.view(batch, 3, 1, 1, 1).expand(batch, 3, frames, height, width).clone()
    clip_tracks = [_clip_tracks(rng, o, frames, cross_prob) for o in objects]
    masks = torch.zeros(batch, MAX_OBJECTS, frames, height, width, device=device)
    for slot in range(max(len(o) for o in objects)):
        rows = [i for i, o in enumerate(objects) if len(o) > slot]
        tracks = torch.tensor([clip_tracks[i][slot] for i in rows], device=device)
        size, x0, y0, x1, y1 = (tracks[:, k].view(-1, 1, 1, 1) for k in range(5))
        cx = (x0 + (x1 - x0) * t) * width  # [n, T, 1, 1] in pixels
        cy = (y0 + (y1 - y0) * t) * height
        radius = size * side / 2
        dist_x, dist_y = (xs * width - cx).abs(), (ys * height - cy).abs()
        is_ball = torch.tensor([objects[i][slot].shape == "ball" for i in rows], device=device).view(-1, 1, 1, 1)
        dist = torch.where(is_ball, torch.sqrt(dist_x ** 2 + dist_y ** 2), torch.maximum(dist_x, dist_y))
        alpha = (radius - dist + 0.5).clamp(0, 1).unsqueeze(1)  # [n, 1, T, H, W]
        colour = torch.tensor([COLOURS[objects[i][slot].colour] for i in rows], device=device).view(-1, 3, 1, 1, 1)
        index = torch.tensor(rows, device=device)
        video[index] = video[index] * (1 - alpha) + colour * alpha
        masks[index, slot] = alpha[:, 0]
    return Clip(video=video * 2 - 1, objects=objects, masks=masks)


def random_clips(batch: int, frames: int, height: int, width: int, rng: random.Random,
                 device: torch.device | str = "cpu") -> Clip:
    """``batch`` clips with random objects from the grammar (see :func:`render`)."""
    return render([sample_objects(rng) for _ in range(batch)], frames, height, width, rng, device)


def to_frames(video: torch.Tensor) -> np.ndarray:
    """One clip as frames: ``video`` [3, T, H, W] in [-1, 1] (any dtype or device) -> float32 [T, H, W, 3] in [0, 1],
    the layout the frame scorers read (e.g. ``prompt_match``)."""
    return ((video.detach().float().permute(1, 2, 3, 0).cpu().numpy() + 1) / 2).clip(0, 1)


__all__ = ["PARTIAL_MARKER", "Clip", "caption", "named_objects", "random_clips", "render", "to_frames",
           "training_prompt"]
