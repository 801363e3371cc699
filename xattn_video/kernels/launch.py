"""Launching a Triton kernel with a tuned shape that may not fit every GPU's shared memory."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Hashable, TypeVar

import triton

T = TypeVar("T")


def launch_with_fallback(cache: dict[Hashable, Any], key: Hashable, config: Any, launch: Callable[[Any], T]) -> T:
    """``launch(config)``; if the GPU lacks shared memory for it, retry with fewer pipeline stages.

    The shape that compiled is remembered under ``key`` (device type, dtype, head_dim, ...), so the fallbacks are
    tried once per problem signature. ``config`` is a dataclass with a ``num_stages`` field.
    """
    if key in cache:
        return launch(cache[key])
    candidates = [config] + [replace(config, num_stages=s) for s in range(config.num_stages - 1, 0, -1)]
    for i, candidate in enumerate(candidates):
        try:
            result = launch(candidate)
        except triton.runtime.errors.OutOfResources:
            if i == len(candidates) - 1:
                raise
            continue
        cache[key] = candidate
        return result
    raise AssertionError("unreachable: the last candidate either returned or raised")
