"""Reusing each layer's block selection across neighbouring denoising steps (``xattn.selection_reuse``).

Attention patterns change little from one denoising step to the next, so the estimate + selection (about 9%
of a dense call at 119k tokens, stride 8) can run on one sparse step and its ``BlockSelection`` serve the
next ``every - 1`` sparse steps of the same layer. The cache only compares host values (step numbers, shapes,
host key lengths), never reads the device, so it adds no synchronization.

A selection is reused only for the same *signature*: batch, query/key length, heads, block size, the valid
key counts and the text start. A new resolution, frame count or prompt length therefore re-estimates. A step
number at or below the one the selection was estimated on (a new generation, or the second transformer call
of a true-CFG step) re-estimates too. Entries are kept per (layer, signature), so the conditional and the
unconditional call of true CFG, whose text lengths differ, each keep their own.

Memory: a selection holds int32 indices and a bool mask of [B, H, nq, nk]; at 119,056 tokens (nq = nk = 931,
H = 24) that is ~104 MB per layer, ~6.2 GB for HunyuanVideo's 60 layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable

from ..kernels.blocks import BlockSelection

Signature = tuple[Hashable, ...]


def selection_signature(batch: int, q_len: int, kv_tokens: int, heads: int, block_size: int,
                        kv_lens: list[int] | tuple[int, ...] | None, text_start: int | None) -> Signature:
    """The host values a reusable selection must match (kv_lens: host ints from the forward's mask check)."""
    return (batch, q_len, kv_tokens, heads, block_size, None if kv_lens is None else tuple(kv_lens), text_start)


@dataclass
class _Entry:
    step: int
    selection: BlockSelection


class SelectionCache:
    """Per-layer cache: ``get(layer, step, signature)`` → a selection to reuse or None; ``put`` after estimating.

    every: estimate on one sparse step, reuse on the next ``every - 1`` steps (0 or 1: never reuse).
    max_signatures: entries kept per layer (oldest dropped), e.g. 2 for true CFG.
    """

    def __init__(self, every: int, max_signatures: int = 2):
        if every < 0:
            raise ValueError(f"selection_reuse must be >= 0, got {every}")
        self.every = every
        self.max_signatures = max_signatures
        self._entries: dict[Hashable, dict[Signature, _Entry]] = {}  # layer label -> entries
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.every > 1

    def get(self, layer: Hashable, step: int | None, signature: Signature) -> BlockSelection | None:
        """The selection estimated for this layer and signature on one of the ``every - 1`` steps before."""
        if not self.enabled or step is None:
            return None
        entry = self._entries.get(layer, {}).get(signature)
        if entry is None or not entry.step < step < entry.step + self.every:
            self.misses += 1
            return None
        self.hits += 1
        return entry.selection

    def put(self, layer: Hashable, step: int | None, signature: Signature, selection: BlockSelection) -> None:
        """Remember a freshly estimated selection (unknown steps are not cached: they cannot be matched)."""
        if not self.enabled or step is None:
            return
        entries = self._entries.setdefault(layer, {})
        entries.pop(signature, None)
        entries[signature] = _Entry(step, selection)
        while len(entries) > self.max_signatures:
            entries.pop(next(iter(entries)))  # dicts keep insertion order: the oldest goes

    def clear(self) -> None:
        """Forget every selection (frees their device memory)."""
        self._entries.clear()
        self.hits = self.misses = 0


__all__ = ["SelectionCache", "selection_signature"]
