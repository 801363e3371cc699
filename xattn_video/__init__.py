"""xattn-video: XAttention block-sparse attention for diffusers video transformers."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = [
    "BlockSelection",
    "XAttnHunyuanVideoPipeline",
    "__version__",
    "apply_xattention",
    "block_sparse_attention",
    "estimate_block_scores",
    "select_blocks",
    "xattention",
]

_KERNELS = ("BlockSelection", "block_sparse_attention", "estimate_block_scores", "select_blocks", "xattention")
_PIPELINES = ("apply_xattention", "XAttnHunyuanVideoPipeline")


def __getattr__(name: str) -> Any:
    # Everything loads on first use: `xvid --help` must not wait for torch, and importing the kernels must not
    # import diffusers.
    if name in _KERNELS:
        from . import kernels

        return getattr(kernels, name)
    if name in _PIPELINES:
        from . import pipelines

        return getattr(pipelines, name)
    raise AttributeError(f"module 'xattn_video' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
