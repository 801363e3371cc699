"""xattn-video: XAttention block-sparse attention for diffusers video transformers."""

from .kernels import BlockSelection, block_sparse_attention, estimate_block_scores, select_blocks, xattention

__version__ = "0.1.0"

__all__ = [
    "BlockSelection",
    "__version__",
    "block_sparse_attention",
    "estimate_block_scores",
    "select_blocks",
    "xattention",
]
