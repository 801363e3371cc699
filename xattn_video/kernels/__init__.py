"""The XAttention operator: antidiagonal block scoring, block selection, block-sparse attention.

Layout: ``api.py`` (public entry points, validation, dispatch), ``blocks.py`` (block grid, ``BlockSelection``),
``naive.py`` (the whole torch reference), ``triton_*.py`` (kernels), ``backend.py`` (choice and constraints).

Backends: ``"torch"`` (plain PyTorch reference, any device), ``"triton"`` (CUDA; CPU under
TRITON_INTERPRET=1) and ``"auto"`` (triton for CUDA tensors, torch otherwise; XATTN_BACKEND forces one).
"""

from .api import block_sparse_attention, estimate_block_scores, select_blocks, sparse_kernel, xattention
from .backend import BACKEND_ENV_VAR, resolve_backend
from .blocks import BlockSelection, num_blocks
from .inputs import SUPPORTED_HEAD_DIMS, XAttentionInputError
from .naive import naive_block_sparse_attention, naive_estimate_block_scores, naive_select_blocks

__all__ = [
    "BACKEND_ENV_VAR",
    "BlockSelection",
    "SUPPORTED_HEAD_DIMS",
    "XAttentionInputError",
    "block_sparse_attention",
    "estimate_block_scores",
    "naive_block_sparse_attention",
    "naive_estimate_block_scores",
    "naive_select_blocks",
    "num_blocks",
    "resolve_backend",
    "select_blocks",
    "sparse_kernel",
    "xattention",
]
