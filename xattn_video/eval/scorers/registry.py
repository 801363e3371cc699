"""The scorer registry: no-reference scorers, built from ``--metrics`` items by name.

A scorer follows :class:`Scorer`: it has a ``name`` and ``score(videos, prompts)`` returns, per sub-metric name, one
float per video (same order as ``videos``). Scorers are built from short specs::

    make_scorers(["flicker", "vbench:subject_consistency,motion_smoothness"])

The part after ``:`` is a comma list handed to the scorer's factory. Users add their own with
:func:`register_scorer`. A scorer that cannot run here raises :class:`~xattn_video.eval.errors.Unavailable`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["Scorer", "ScorerFactory", "ScorerSpecError", "VideoItem", "available_scorers", "check_batch", "make_scorers",
           "register_scorer"]


@dataclass
class VideoItem:
    """One generated video: ``frames`` float32 [T, H, W, 3] in [0, 1]; ``path`` its mp4 if written; its prompt."""

    frames: np.ndarray
    path: Path | None = None
    prompt: str = ""


@runtime_checkable
class Scorer(Protocol):
    """Scores each video on its own: ``score`` returns ``{sub_metric: [one float per video, in order]}``.

    Optional attributes read by ``compare``: ``reads`` (``"frames"`` or ``"mp4"``: what the scores are computed
    from, shown in the report), ``skipped`` (``{name: reason}`` of parts skipped by the last ``score`` call) and
    ``provenance()`` (a dict of what the scores depend on, for resuming).
    """

    name: str

    def score(self, videos: list[VideoItem], prompts: list[str]) -> dict[str, list[float]]: ...


class ScorerSpecError(ValueError):
    """A ``--metrics`` scorer item that cannot be built: unknown name, or arguments its factory refuses."""


ScorerFactory = Callable[[list[str]], Scorer]
_REGISTRY: dict[str, ScorerFactory] = {}
_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


def register_scorer(name: str, factory: ScorerFactory, *, replace: bool = False) -> None:
    """Register ``factory(args) -> Scorer`` under ``name`` (``args`` is the comma list after ``name:``).

    Registering a taken name raises ValueError unless ``replace=True``.
    """
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"scorer name must be non-empty letters, digits, '_', '-' or '.', got {name!r}")
    if not callable(factory):
        raise TypeError(f"scorer factory for {name!r} must be callable, got {type(factory).__name__}")
    if name in _REGISTRY and not replace:
        raise ValueError(f"a scorer named {name!r} is already registered (pass replace=True to override it)")
    _REGISTRY[name] = factory


def available_scorers() -> list[str]:
    """Names of the registered scorers, sorted."""
    return sorted(_REGISTRY)


def _parse_spec_item(item: str) -> tuple[str, list[str]]:
    name, _, arg_text = item.partition(":")
    args = [arg.strip() for arg in arg_text.split(",") if arg.strip()]
    return name.strip(), args


def make_scorers(spec: str | Sequence[str]) -> list[Scorer]:
    """Build scorers from ``spec``: items like ``"flicker"`` or ``"vbench:subject_consistency,motion_smoothness"``.

    ``spec`` is a list of items or one string; a string may hold several items separated by ``;``.
    Unknown names, and arguments a scorer refuses, raise ScorerSpecError (a ValueError; lists registered names).
    """
    items = spec.split(";") if isinstance(spec, str) else list(spec)
    scorers: list[Scorer] = []
    for raw in items:
        if not isinstance(raw, str):
            raise TypeError(f"scorer spec items must be strings, got {raw!r}")
        if not raw.strip():
            continue
        name, args = _parse_spec_item(raw)
        if name not in _REGISTRY:
            raise ScorerSpecError(f"unknown scorer {name!r} (from {raw!r}); registered scorers: {available_scorers()}")
        try:
            scorer = _REGISTRY[name](args)
        except ScorerSpecError:
            raise
        except ValueError as exc:  # the factory refused its arguments: a user mistake, reported in one line
            raise ScorerSpecError(f"{raw}: {exc}") from exc
        if not isinstance(scorer, Scorer):
            raise TypeError(f"factory of scorer {name!r} returned {type(scorer).__name__}, which has no name/score")
        scorers.append(scorer)
    return scorers


def check_batch(videos: Sequence[VideoItem], prompts: Sequence[str]) -> None:
    if len(videos) != len(prompts):
        raise ValueError(f"got {len(videos)} videos but {len(prompts)} prompts")
