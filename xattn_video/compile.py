"""Regional compilation (``model.compile: true``): ``torch.compile`` of each repeated transformer block.

Diffusers' ``ModelMixin.compile_repeated_blocks`` compiles every sub-module whose class is listed in the
model's ``_repeated_blocks`` (HunyuanVideo: dual/single blocks, patch embed, token refiner; Wan:
``WanTransformerBlock``; HunyuanVideo 1.5 too), so compile time is that of a few blocks, not of the model.

With XAttention installed, our attention dispatch is excluded from tracing (one deliberate graph break per
hooked attention call, :mod:`xattn_video.pipelines.dispatch`): dynamo compiles the model's own math around it
(projections, norms, rotary, modulation, MLP) and never sees the step, the layer, τ or our statistics, so the
graphs of one block class serve every layer, step and mode without recompiling. That break is why XAttention and
``fullgraph=True`` exclude each other: :class:`FullgraphError` says so at the compile, at the install or at the
first forward (whichever comes first to know), instead of dynamo's "Skip inlining" error deep in the forward. The kernels are custom ops and
compile with ``fullgraph=True`` when called from user code (``tests/test_kernels_compile.py``).

Recompilation: dynamo still guards on the shapes and on host values a block reads itself. Distinct shapes
(resolution, frame count, the two text lengths of true CFG) each add a graph, and dynamo's default
``recompile_limit`` of 8 would then silently fall back to eager; the limit is raised to ``4 × blocks``.
"""

from __future__ import annotations

from typing import Any

import torch


class FullgraphError(RuntimeError):
    """XAttention and blocks compiled with ``fullgraph=True`` do not go together; the message names the fix."""


FULLGRAPH_FIX = ("compile with fullgraph=False instead (compile_transformer(transformer), or "
                 "transformer.compile_repeated_blocks(fullgraph=False)): XAttention's attention dispatch runs "
                 "eagerly, one deliberate graph break per attention call, and the blocks' own math still compiles")


def compiled_fullgraph(module: torch.nn.Module) -> bool:
    """Whether ``module.compile(fullgraph=True)`` (what ``compile_repeated_blocks`` calls per block) was applied.

    Read from dynamo's wrapper (its ``OptimizeContext`` carries ``fullgraph``); False when it cannot be told.
    """
    wrapper = getattr(module, "_compiled_call_impl", None)
    for cell in getattr(wrapper, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if isinstance(getattr(value, "fullgraph", None), bool):
            return value.fullgraph
    return False


def check_not_fullgraph(transformer: torch.nn.Module, when: str) -> None:
    """``FullgraphError`` (one line) if any sub-module of ``transformer`` was compiled with ``fullgraph=True``.

    ``when`` says what was being done (installing XAttention, a forward with XAttention installed)."""
    for name, module in transformer.named_modules():
        if getattr(module, "_compiled_call_impl", None) is not None and compiled_fullgraph(module):
            raise FullgraphError(f"{when}: {type(transformer).__name__}.{name or '(root)'} was compiled with "
                                 f"fullgraph=True, which XAttention cannot run inside; {FULLGRAPH_FIX}")


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


def compile_transformer(transformer: Any, *, fullgraph: bool = False, backend: str | None = None,
                        dynamic: bool = False, **kwargs: Any) -> int:
    """Compile the repeated blocks of a diffusers transformer in place; returns how many were compiled.

    ``fullgraph=False`` (default): XAttention's dispatch is one deliberate graph break per attention call.
    ``fullgraph=True`` makes any graph break an error: for blocks without XAttention (e.g. checking that a
    block calling our kernels directly compiles whole); with XAttention installed it raises ``FullgraphError``
    at once, and installing XAttention later refuses too. ``backend``: torch's default (inductor) unless given
    ("eager"/"aot_eager" for tests). Raises ValueError when the model has no ``_repeated_blocks``.
    """
    if fullgraph:
        from .pipelines.dispatch import uses_xattention

        if uses_xattention(transformer):
            raise FullgraphError(f"compile_transformer(fullgraph=True): XAttention is installed on this "
                                 f"{type(transformer).__name__}; {FULLGRAPH_FIX}")
    blocks = repeated_blocks(transformer)
    if is_compiled(transformer):  # idempotent: a second call would wrap twice
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


def is_compiled(transformer: Any) -> bool:
    """Whether :func:`compile_transformer` has compiled this transformer's blocks (and not undone it)."""
    return bool(getattr(transformer, "_xvid_compiled", False))


def uncompile_transformer(transformer: Any) -> None:
    """Undo :func:`compile_transformer`: the blocks run eagerly again (dynamo's cache of graphs is kept)."""
    for block in repeated_blocks(transformer):
        block._compiled_call_impl = None  # what nn.Module.compile sets
    transformer.__dict__.pop("_xvid_compiled", None)


__all__ = ["FullgraphError", "check_not_fullgraph", "compile_transformer", "compiled_fullgraph", "is_compiled", "raise_recompile_limit", "repeated_blocks", "uncompile_transformer"]
