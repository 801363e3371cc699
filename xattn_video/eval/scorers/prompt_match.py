"""``prompt_match``: does a mini-model video show what its prompt asks for? Colour, shape and direction of each
object of the grammar in :mod:`xattn_video.mini.grammar`, read off the frames with no model.

Per object named in the prompt: its pixels are those nearest to its colour (and clearly brighter than the dark
background), and in each frame the object is their largest connected region (a VAE's colour fringes, e.g. red
pixels at a yellow edge, leave specks elsewhere; they must not stretch the object's box); the object is *found*
when, in at least half the frames, that region is one compact object: between ``MIN_AREA`` and ``MAX_AREA`` of the
frame, filling at least ``MIN_FILL`` of its bounding box (scattered specks of a colour, as noise has, make no region
that large). Its *shape* is a ball when the region fills about π/4 of its bounding box (a square fills all of
it; the median over the frames where its area is near its largest, so a crossing object does not decide it). Its
*direction* is the larger component of the centroid's travel from the first to the last quarter of the clip, which
must be at least ``MIN_TRAVEL`` of the frame side. Colour is correct when the object is found; shape and direction
count only for found objects (a missing object fails all three).

Sub-metrics, each one float per video in [0, 1] (the fraction of the prompt's objects that pass):
``prompt_match`` (all three attributes right), ``prompt_match_colour``, ``prompt_match_shape``,
``prompt_match_direction``. A prompt with no phrase of the grammar scores NaN and is listed in ``skipped``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ...mini.grammar import COLOURS, DIRECTION_VECTORS, OPPOSITE_DIRECTIONS, ObjectSpec, parse_prompt
from .registry import VideoItem, check_batch

__all__ = ["ObjectReading", "PromptMatchScorer", "largest_regions", "make_prompt_match", "object_checks",
           "read_object", "read_objects", "score_readings", "score_video", "unasked_colours"]

MIN_AREA = 0.004  # of the frame: the smallest object the data draws covers ~2% (16% of the side, a disc)
MAX_AREA = 0.15  # of the frame: the largest covers ~7.8% (a square 28% of the side)
MIN_FILL = 0.55  # of the bounding box: a disc fills π/4 ≈ 0.785; noise specks spread over the frame fill little
MIN_TRAVEL = 0.08  # of the frame side: the data moves objects 25-50%
BALL_FILL_MAX = 0.845  # bounding-box fill: disc π/4 ≈ 0.785, square 1.0; through the mini VAE balls reach 0.843 and
# squares (rounded corners) drop to 0.851 (256 clips at 33×128×128, benchmarks/mini_scorer_ceiling.py): between them
WHOLE_AREA = 0.85  # frames whose area is at least this share of the largest are read for the shape
MIN_BRIGHTNESS = 0.35  # max RGB channel: the background is at most 0.1, every palette colour ≥ 0.95
_PALETTE = np.array(list(COLOURS.values()), dtype=np.float32)  # [C, 3]
_NAMES = list(COLOURS)


@dataclass
class ObjectReading:
    """What the frames show for one object of the prompt."""

    found: bool
    shape: str | None  # "ball" | "square" | None (not found)
    direction: str | None  # "left" | "right" | "up" | "down" | None (not found or not moving)
    fill: float = float("nan")  # median bounding-box fill
    travel: tuple[float, float] = (0.0, 0.0)  # centroid travel (dx, dy) in frame sides, y downwards


def colour_labels(frames: np.ndarray) -> np.ndarray:
    """[T, H, W] int: index of the nearest palette colour, or -1 for background (dark pixels)."""
    pixels = frames.astype(np.float32)
    brightness = pixels.max(-1, keepdims=True)
    # compare hues, not intensities: an anti-aliased edge (half colour, half dark background) keeps its hue
    hue = pixels / np.maximum(brightness, 1e-6)
    dist = ((hue[..., None, :] - _PALETTE / _PALETTE.max(-1, keepdims=True)) ** 2).sum(-1)  # [T, H, W, C]
    labels = dist.argmin(-1)
    labels[brightness[..., 0] < MIN_BRIGHTNESS] = -1
    return labels


_EIGHT_NEIGHBOURS = np.ones((3, 3), dtype=bool)


def largest_regions(mask: np.ndarray) -> np.ndarray:
    """[T, H, W] bool -> the same with, in each frame, only the largest 8-connected region kept."""
    out = np.zeros_like(mask)
    for t in np.flatnonzero(mask.reshape(len(mask), -1).any(1)):
        regions, count = ndimage.label(mask[t], structure=_EIGHT_NEIGHBOURS)
        if count == 1:
            out[t] = mask[t]
        else:
            sizes = np.bincount(regions.ravel(), minlength=count + 1)
            sizes[0] = 0  # background
            out[t] = regions == sizes.argmax()
    return out


def read_object(labels: np.ndarray, colour: str) -> ObjectReading:
    """Find the pixels of ``colour`` in ``labels`` [T, H, W] and read its shape and motion."""
    t_count, height, width = labels.shape
    mask = largest_regions(labels == _NAMES.index(colour))
    area = mask.reshape(t_count, -1).mean(1)
    box_fill = np.zeros(t_count)
    for t in np.flatnonzero(area > 0):
        ys, xs = np.nonzero(mask[t])
        box_fill[t] = len(ys) / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
    present = (area >= MIN_AREA) & (area <= MAX_AREA) & (box_fill >= MIN_FILL)
    if present.sum() < max(1, t_count / 2):
        return ObjectReading(found=False, shape=None, direction=None)
    # the shape is read on frames where the object is (nearly) whole: another object crossing it hides a part
    whole = present & (area >= WHOLE_AREA * area[present].max())
    centroids = []
    for t in np.flatnonzero(present):
        ys, xs = np.nonzero(mask[t])
        centroids.append((t, xs.mean() / width, ys.mean() / height))
    fill = float(np.median(box_fill[whole]))
    track = np.array(centroids)
    quarter = max(1, t_count // 4)
    first = track[track[:, 0] < quarter]
    last = track[track[:, 0] >= t_count - quarter]
    direction = None
    travel = (0.0, 0.0)
    if len(first) and len(last):
        dx, dy = last[:, 1:].mean(0) - first[:, 1:].mean(0)
        travel = (float(dx), float(dy))
        if max(abs(dx), abs(dy)) >= MIN_TRAVEL:
            vector = (int(np.sign(dx)), 0) if abs(dx) >= abs(dy) else (0, int(np.sign(dy)))
            direction = next(name for name, v in DIRECTION_VECTORS.items() if v == vector)
    return ObjectReading(found=True, shape="ball" if fill <= BALL_FILL_MAX else "square", direction=direction,
                         fill=fill, travel=travel)


def read_objects(frames: np.ndarray, objects: list[ObjectSpec]) -> list[ObjectReading]:
    """One reading per object of the prompt, off ``frames`` [T, H, W, 3] in [0, 1]."""
    labels = colour_labels(frames)
    return [read_object(labels, obj.colour) for obj in objects]


def unasked_colours(frames: np.ndarray, objects: list[ObjectSpec]) -> list[str]:
    """The palette colours the prompt does not name that ``frames`` [T, H, W, 3] in [0, 1] show as an object (found
    as :func:`read_object` finds one): extra objects, which ``prompt_match`` itself does not penalise."""
    labels = colour_labels(frames)
    named = {obj.colour for obj in objects}
    return [colour for colour in _NAMES if colour not in named and read_object(labels, colour).found]


_KEYS = ("prompt_match", "prompt_match_colour", "prompt_match_shape", "prompt_match_direction")


def format_attributes(scores: dict[str, float]) -> str:
    """The per-attribute shares of a score dict as ``colour/shape/direction`` (e.g. ``1.00/0.75/1.00``, ``–`` for a
    missing one): the column the benchmark tables print beside ``prompt_match``."""
    return "/".join(format(scores[k], ".2f") if k in scores else "–" for k in _KEYS[1:])


def object_checks(reading: ObjectReading, obj: ObjectSpec) -> tuple[bool, bool, bool]:
    """(colour, shape, direction) right for one object: colour is right when the object is found, and a missing
    object fails all three; the object counts as right when all three are."""
    return reading.found, reading.shape == obj.shape, reading.direction == obj.direction


def score_readings(readings: list[ObjectReading], objects: list[ObjectSpec]) -> dict[str, float]:
    """The four sub-metrics from the readings of :func:`read_objects` (NaN for a prompt with no object)."""
    if not objects:
        return {k: float("nan") for k in _KEYS}
    colour = shape = direction = full = 0
    for reading, obj in zip(readings, objects, strict=True):
        ok = object_checks(reading, obj)
        colour, shape, direction, full = colour + ok[0], shape + ok[1], direction + ok[2], full + all(ok)
    n = len(objects)
    return dict(zip(_KEYS, (full / n, colour / n, shape / n, direction / n)))


DIRECTION_OUTCOMES = ("right", "not found", "not moving", "opposite", "sideways")


def direction_outcome(reading: ObjectReading, obj: ObjectSpec) -> str:
    """Why an object's direction scored as it did, one of ``DIRECTION_OUTCOMES``: read correctly, the object not
    found, moving less than ``MIN_TRAVEL``, moving against the prompt, or across it."""
    if not reading.found:
        return "not found"
    if reading.direction is None:
        return "not moving"
    if reading.direction == obj.direction:
        return "right"
    return "opposite" if reading.direction == OPPOSITE_DIRECTIONS[obj.direction] else "sideways"


def score_video(frames: np.ndarray, objects: list[ObjectSpec]) -> dict[str, float]:
    """The four sub-metrics for one video ``frames`` [T, H, W, 3] in [0, 1] against the prompt's ``objects``."""
    return score_readings(read_objects(frames, objects) if objects else [], objects)


class PromptMatchScorer:
    """``prompt_match``: colour, shape and direction of the mini model's objects against the prompt."""

    name = "prompt_match"
    reads = "frames"

    def __init__(self) -> None:
        self.skipped: dict[str, str] = {}

    def score(self, videos: list[VideoItem], prompts: list[str]) -> dict[str, list[float]]:
        check_batch(videos, prompts)
        out: dict[str, list[float]] = {}
        self.skipped = {}
        for item, prompt in zip(videos, prompts):
            objects = parse_prompt(prompt)
            if not objects:
                self.skipped[prompt] = "no phrase of the mini model's grammar in the prompt"
            for key, value in score_video(item.frames, objects).items():
                out.setdefault(key, []).append(value)
        return out


def make_prompt_match(args: list[str]) -> PromptMatchScorer:
    """Factory for ``prompt_match`` (it takes no arguments)."""
    if args:
        raise ValueError(f"the prompt_match scorer takes no arguments, got {args}")
    return PromptMatchScorer()
