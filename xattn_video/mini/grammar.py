"""The mini model's prompt grammar: what it was trained to draw, and how a prompt is read back.

    a {red|green|blue|yellow|white} {ball|square} moving {left|right|up|down}
      [and a <colour> <shape> moving <direction>]

Other words anywhere in a prompt are allowed and ignored (matching is case-insensitive). The training data
gives the two objects of a prompt different colours; the ``prompt_match`` scorer assumes that too.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace

COLOURS: dict[str, tuple[float, float, float]] = {  # RGB in [0, 1], as drawn by data.py
    "red": (0.95, 0.15, 0.12),
    "green": (0.15, 0.85, 0.20),
    "blue": (0.20, 0.40, 1.00),
    "yellow": (0.98, 0.88, 0.12),
    "white": (0.95, 0.95, 0.95),
}
SHAPES = ("ball", "square")
DIRECTIONS = ("left", "right", "up", "down")
# (dx, dy) in image coordinates: y grows downwards, so "up" is -y
DIRECTION_VECTORS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
MAX_OBJECTS = 2

_PHRASE = re.compile(rf"\ba\s+({'|'.join(COLOURS)})\s+({'|'.join(SHAPES)})\s+moving\s+({'|'.join(DIRECTIONS)})\b",
                     re.IGNORECASE)


@dataclass(frozen=True)
class ObjectSpec:
    """One object of a prompt: its colour, shape and direction of motion (names from the grammar)."""

    colour: str
    shape: str
    direction: str

    def phrase(self) -> str:
        return f"a {self.colour} {self.shape} moving {self.direction}"


def parse_prompt(prompt: str) -> list[ObjectSpec]:
    """The objects a prompt asks for, in order (at most two); ``[]`` when no phrase of the grammar is in it."""
    found = [ObjectSpec(c.lower(), s.lower(), d.lower()) for c, s, d in _PHRASE.findall(prompt)]
    return found[:MAX_OBJECTS]


def phrase_spans(text: str) -> list[tuple[int, int]]:
    """[start, end) character spans of the grammar's phrases in ``text``, in order (at most two)."""
    return [m.span() for m in _PHRASE.finditer(text)][:MAX_OBJECTS]


def format_prompt(objects: list[ObjectSpec]) -> str:
    """The canonical prompt for ``objects`` (one or two)."""
    if not 1 <= len(objects) <= MAX_OBJECTS:
        raise ValueError(f"a prompt describes 1 or {MAX_OBJECTS} objects, got {len(objects)}")
    return " and ".join(o.phrase() for o in objects)


def sample_objects(rng: random.Random, two_prob: float = 0.5) -> list[ObjectSpec]:
    """One or two random objects; two objects always have different colours."""
    count = 2 if rng.random() < two_prob else 1
    colours = rng.sample(list(COLOURS), count)
    return [ObjectSpec(c, rng.choice(SHAPES), rng.choice(DIRECTIONS)) for c in colours]


OPPOSITE_DIRECTIONS = {"left": "right", "right": "left", "up": "down", "down": "up"}


def swap_word(obj: ObjectSpec, attribute: str) -> ObjectSpec:
    """``obj`` with one word changed: ``"colour"`` the next colour, ``"shape"`` the other shape, ``"direction"``
    the opposite direction (what changes the clip most)."""
    if attribute == "colour":
        names = list(COLOURS)
        return replace(obj, colour=names[(names.index(obj.colour) + 1) % len(names)])
    if attribute == "shape":
        return replace(obj, shape=SHAPES[1 - SHAPES.index(obj.shape)])
    if attribute == "direction":
        return replace(obj, direction=OPPOSITE_DIRECTIONS[obj.direction])
    raise ValueError(f"attribute must be colour, shape or direction, got {attribute!r}")


def exchange_directions(objects: list[ObjectSpec]) -> list[ObjectSpec]:
    """A two-object clip's objects with their directions exchanged (what a model that binds each direction word to
    the wrong object draws); one object, or two with the same direction, come back unchanged."""
    if len(objects) != 2:
        return list(objects)
    first, second = objects
    return [replace(first, direction=second.direction), replace(second, direction=first.direction)]


SWAPS = ("colour", "shape", "direction", "binding")


def swap_clip(objects: list[ObjectSpec], swap: str) -> list[ObjectSpec]:
    """A clip's objects with one thing changed: ``"colour"`` / ``"shape"`` / ``"direction"`` that word of every
    object (``swap_word``), ``"binding"`` the two objects' directions exchanged (``exchange_directions``)."""
    if swap == "binding":
        return exchange_directions(objects)
    return [swap_word(o, swap) for o in objects]


def held_out_pairs(count: int = 32, seed: int = 1234, first_seed: int = 10_000) -> list[tuple[str, int]]:
    """``count`` (prompt, seed) pairs for evaluation: canonical prompts, half with two objects, and generation
    seeds ``first_seed``, ``first_seed + 1``, ..., far from anything the training run draws (training samples noise
    from its own generator). Another ``seed`` and ``first_seed`` give a tuning set apart from the held-out pairs."""
    rng = random.Random(seed)
    pairs = []
    for i in range(count):
        objects = sample_objects(rng, two_prob=0.0 if i % 2 == 0 else 1.0)
        pairs.append((format_prompt(objects), first_seed + i))
    return pairs


__all__ = ["COLOURS", "DIRECTIONS", "DIRECTION_VECTORS", "MAX_OBJECTS", "OPPOSITE_DIRECTIONS", "SHAPES", "SWAPS",
           "ObjectSpec", "exchange_directions", "format_prompt", "held_out_pairs", "parse_prompt", "sample_objects",
           "phrase_spans", "swap_clip", "swap_word"]
