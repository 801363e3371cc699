"""xattn-video: XAttention block-sparse attention for diffusers video transformers."""

from .kernels import BlockSelection, block_sparse_attention, estimate_block_scores, select_blocks, xattention

__version__ = "0.1.0"

__all__ = [
    "BlockSelection",
    "XAttnHunyuanVideoPipeline",
    "__version__",
    "apply_xattention",
    "block_sparse_attention",
    "estimate_block_scores",
    "select_blocks",
    "supported_pipelines",
    "xattention",
]


def __getattr__(name: str):
    # The diffusers integration loads lazily, so importing the kernels does not import diffusers.
    if name in ("apply_xattention", "XAttnHunyuanVideoPipeline", "supported_pipelines"):
        from . import pipelines

        return getattr(pipelines, name)
    raise AttributeError(f"module 'xattn_video' has no attribute {name!r}")
