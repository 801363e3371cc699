"""The XAttention operator: antidiagonal block scoring, block selection, block-sparse attention.

Backends: ``"torch"`` (plain PyTorch reference, any device), ``"triton"`` (CUDA; CPU under
TRITON_INTERPRET=1) and ``"auto"`` (triton for CUDA tensors, torch otherwise; XATTN_BACKEND forces one).
"""

from .api import block_sparse_attention, estimate_block_scores, xattention
from .backend import BACKEND_ENV_VAR, resolve_backend
from .inputs import SUPPORTED_HEAD_DIMS, XAttentionInputError
from .selection import BlockSelection, select_blocks

__all__ = [
    "BACKEND_ENV_VAR",
    "BlockSelection",
    "SUPPORTED_HEAD_DIMS",
    "XAttentionInputError",
    "block_sparse_attention",
    "estimate_block_scores",
    "resolve_backend",
    "select_blocks",
    "xattention",
]
