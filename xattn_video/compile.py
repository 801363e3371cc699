"""Regional compilation (``model.compile: true``): ``torch.compile`` of each repeated transformer block.

Diffusers' ``ModelMixin.compile_repeated_blocks`` compiles every sub-module whose class is listed in the
model's ``_repeated_blocks`` (HunyuanVideo: dual/single blocks, patch embed, token refiner; Wan:
``WanTransformerBlock``; HunyuanVideo 1.5 too), so compile time is that of a few blocks, not of the model.

Recompilation: the blocks of one class share one code object, and dynamo guards on the Python values a block
reads (an attention layer's τ, dense or sparse this step, the valid key lengths, the text start). Each
distinct combination is one more compiled graph of that code object: with per-layer τ, dense warmup steps and
two text lengths (true CFG) that can reach a few dozen, far past dynamo's default ``recompile_limit`` of 8,
after which dynamo silently runs the block eagerly. We raise the limit to cover every layer in every mode
(``recompile_limit = 4 × blocks``) rather than turn τ into a tensor: τ as a Python float keeps the selection
on its fast path (a uniform τ is a constant in the Triton kernel), and the graphs of layers that share their
values are reused, so in practice (one τ for all layers) there are about 2 graphs per block class (dense
warmup, sparse). Whatever runs inside a block must not synchronize the host: the per-forward work (step
lookup, mask prefix check) happens before the blocks, which then read only plain host values.
"""

from __future__ import annotations

from typing import Any

import torch


def repeated_blocks(transformer: Any) -> list[torch.nn.Module]:
    """The sub-modules ``compile_repeated_blocks`` would compile (classes named in ``_repeated_blocks``)."""
    names = set(getattr(transformer, "_repeated_blocks", None) or ())
    return [m for m in transformer.modules() if type(m).__name__ in names]


def raise_recompile_limit(blocks: int) -> int:
    """Let dynamo keep one graph per (block class, layer mode) for ``blocks`` blocks; returns the limit set."""
    cfg = torch._dynamo.config
    limit = max(4 * blocks, 8)
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"  # torch < 2.6: old name
    setattr(cfg, name, max(getattr(cfg, name), limit))
    if hasattr(cfg, "accumulated_recompile_limit"):
        cfg.accumulated_recompile_limit = max(cfg.accumulated_recompile_limit, 2 * limit)
    return limit


def compile_transformer(transformer: Any, *, fullgraph: bool = True, backend: str | None = None,
                        dynamic: bool = False, **kwargs: Any) -> int:
    """Compile the repeated blocks of a diffusers transformer in place; returns how many were compiled.

    ``fullgraph=True``: a graph break inside a block is an error, not a silent slowdown. ``backend``: torch's
    default (inductor) unless given ("eager"/"aot_eager" for tests). Raises ValueError when the model has no
    ``_repeated_blocks``.
    """
    blocks = repeated_blocks(transformer)
    if getattr(transformer, "_xvid_compiled", False):  # idempotent: a second call would wrap twice
        return len(blocks)
    if not blocks or not hasattr(transformer, "compile_repeated_blocks"):
        raise ValueError(f"{type(transformer).__name__} lists no repeated blocks to compile (_repeated_blocks)")
    raise_recompile_limit(len(blocks))
    options: dict[str, Any] = dict(fullgraph=fullgraph, dynamic=dynamic, **kwargs)
    if backend is not None:
        options["backend"] = backend
    transformer.compile_repeated_blocks(**options)
    transformer._xvid_compiled = True
    return len(blocks)


__all__ = ["compile_transformer", "raise_recompile_limit", "repeated_blocks"]
