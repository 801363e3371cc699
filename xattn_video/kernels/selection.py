"""Block selection (spec §2): the fewest key blocks per (batch, head, query block) reaching τ.

Plain tensor ops (sort, cumulative sum, scatter) that run on any device without a host sync, so every
backend shares one selection and the Triton and FlexAttention kernels can consume the same lists.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .inputs import (
    KvLen,
    Threshold,
    XAttentionInputError,
    check_max_density,
    check_text_start,
    normalize_kv_len,
    normalize_threshold,
    num_blocks,
    threshold_tensor,
)


@dataclass
class BlockSelection:
    """Kept 128×128 (``block_size``) blocks of the attention matrix.

    counts:  int32 [B, H, nq]      kept key blocks per query block.
    indices: int32 [B, H, nq, nk]  kept key-block indices first (ascending), then the others (ascending).
    mask:    bool  [B, H, nq, nk]  True where a block is kept.
    kv_len:  int32 [B]             valid key count per batch (keys at positions ≥ kv_len are padding).
    """

    counts: torch.Tensor
    indices: torch.Tensor
    mask: torch.Tensor
    block_size: int
    q_len: int
    kv_len: torch.Tensor

    @property
    def num_q_blocks(self) -> int:
        return self.mask.shape[2]

    @property
    def num_kv_blocks(self) -> int:
        return self.mask.shape[3]

    def valid_kv_blocks(self) -> torch.Tensor:
        """int64 [B]: key blocks holding at least one valid key."""
        return (self.kv_len.to(torch.int64) + self.block_size - 1) // self.block_size

    def density_per_head(self) -> torch.Tensor:
        """float32 [H]: kept blocks / (query blocks × valid key blocks), summed over the batch."""
        kept = self.counts.to(torch.float32).sum(dim=(0, 2))
        possible = (self.valid_kv_blocks().to(torch.float32) * self.num_q_blocks).sum()
        return kept / possible.clamp_min(1.0)

    def density(self) -> torch.Tensor:
        """0-d float32 tensor: overall fraction of kept blocks (no host sync; call ``.item()`` to read)."""
        kept = self.counts.to(torch.float32).sum()
        possible = (self.valid_kv_blocks().to(torch.float32) * self.num_q_blocks).sum() * self.mask.shape[1]
        return kept / possible.clamp_min(1.0)

    @staticmethod
    def from_mask(mask: torch.Tensor, *, block_size: int, q_len: int, kv_len: torch.Tensor) -> "BlockSelection":
        """Build counts and index lists from a block mask [B, H, nq, nk] (kept = True).

        Blocks lying wholly at or past kv_len [B] hold only padding and are dropped from the selection.
        """
        kv_len = kv_len.to(device=mask.device, dtype=torch.int32)
        n_valid = (kv_len.to(torch.int64) + block_size - 1) // block_size
        valid = torch.arange(mask.shape[-1], device=mask.device)[None, :] < n_valid[:, None]
        mask = mask & valid[:, None, None, :]
        counts = mask.sum(dim=-1, dtype=torch.int32)
        # Stable sort of the 0/1 "dropped" key: kept blocks first, each group in ascending block order.
        indices = torch.argsort((~mask).to(torch.int8), dim=-1, stable=True).to(torch.int32)
        return BlockSelection(
            counts=counts, indices=indices, mask=mask, block_size=block_size, q_len=q_len, kv_len=kv_len
        )


def select_blocks(
    scores: torch.Tensor,
    threshold: Threshold,
    *,
    block_size: int = 128,
    q_len: int,
    kv_len: KvLen = None,
    keep_diagonal: bool = True,
    text_start: int | None = None,
    max_density: float | None = None,
    backend: str = "auto",
) -> BlockSelection:
    """Select key blocks per (batch, head, query block) from normalized block scores.

    scores: float [B, H, nq, nk] (rows normalized over valid key blocks, as ``estimate_block_scores``
    returns). ``threshold`` is τ as a float or a per-head sequence/tensor [H]; τ ≥ 1 keeps every valid block.
    ``kv_len`` (int or int tensor [B]) is the valid key count; default nk·block_size. See spec §2.
    ``backend``: "triton" runs one fused kernel, "torch" plain tensor ops; "auto" picks by device.
    """
    from .backend import resolve_backend

    if not isinstance(scores, torch.Tensor) or scores.dim() != 4:
        raise XAttentionInputError(
            f"scores must be a 4-D tensor [B, H, nq, nk], got {getattr(scores, 'shape', type(scores))}"
        )
    if not scores.dtype.is_floating_point:
        raise XAttentionInputError(f"scores must be floating point, got {scores.dtype}")
    B, H, nq, nk = scores.shape
    if not isinstance(block_size, int) or block_size < 1:
        raise XAttentionInputError(f"block_size must be a positive int, got {block_size!r}")
    if not isinstance(q_len, int) or q_len < 1:
        raise XAttentionInputError(f"q_len must be a positive int, got {q_len!r}")
    if num_blocks(q_len, block_size) != nq:
        raise XAttentionInputError(
            f"scores have {nq} query blocks but q_len={q_len} with block_size={block_size} "
            f"gives {num_blocks(q_len, block_size)}"
        )
    check_text_start(text_start, q_len)
    check_max_density(max_density)
    device = scores.device
    kv = normalize_kv_len(kv_len, B, nk * block_size, device)
    tau = normalize_threshold(threshold, H)
    return _select(
        scores, tau, kv, block_size=block_size, q_len=q_len, keep_diagonal=keep_diagonal,
        text_start=text_start, max_density=max_density, backend=resolve_backend(backend, device),
    )


def _select(
    scores: torch.Tensor,
    taus: tuple[float, ...],
    kv_len: torch.Tensor,
    *,
    block_size: int,
    q_len: int,
    keep_diagonal: bool,
    text_start: int | None,
    max_density: float | None,
    backend: str = "torch",
) -> BlockSelection:
    """Selection on validated inputs (taus: τ per head; kv_len: int32 [B] on scores' device)."""
    if backend == "triton":
        from .triton_selection import select_blocks_triton

        return select_blocks_triton(scores, threshold_tensor(taus, scores.device), kv_len, block_size=block_size,
                                    q_len=q_len, keep_diagonal=keep_diagonal, text_start=text_start,
                                    max_density=max_density)
    B, H, nq, nk = scores.shape
    device = scores.device
    block_ids = torch.arange(nk, device=device)
    n_valid = (kv_len.to(torch.int64) + block_size - 1) // block_size  # [B]
    valid_k = block_ids[None, :] < n_valid[:, None]  # [B, nk]
    valid_k4 = valid_k[:, None, None, :]

    # Invalid key blocks sort last (valid scores are >= 0) and are never kept.
    s = scores.to(torch.float32).masked_fill(~valid_k4, -1.0)
    sorted_scores, order = torch.sort(s, dim=-1, descending=True, stable=True)
    sorted_mass = sorted_scores.clamp_min(0.0)
    # Exact exclusive prefix: shift the inclusive sum right by one instead of subtracting.
    mass_before = torch.nn.functional.pad(torch.cumsum(sorted_mass, dim=-1)[..., :-1], (1, 0))
    uniform = all(t == taus[0] for t in taus)
    tau = taus[0] if uniform else threshold_tensor(taus, device).view(1, H, 1, 1)
    keep_sorted = (mass_before < tau) & (sorted_scores >= 0.0)
    if max_density is not None:
        cap = torch.ceil(float(max_density) * n_valid.to(torch.float64)).to(torch.int64)  # [B]
        keep_sorted &= block_ids.view(1, 1, 1, nk) < cap.view(B, 1, 1, 1)
    mask = torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)
    # A row with NaN/+inf scores (from a non-finite q or k) carries no ranking: keep all its valid blocks.
    mask |= ~torch.isfinite(sorted_mass.sum(dim=-1, keepdim=True)) & valid_k4

    if any(t >= 1.0 for t in taus):
        dense_heads = (threshold_tensor(taus, device) >= 1.0).view(1, H, 1, 1)
        mask |= dense_heads & valid_k4
    if keep_diagonal:
        q_ids = torch.arange(nq, device=device)
        diag = q_ids[:, None] == block_ids[None, :]  # [nq, nk]
        mask |= diag[None, None] & valid_k4
    if text_start is not None:
        # Key blocks overlapping [text_start, kv_len) and query blocks overlapping [text_start, q_len).
        has_text = (kv_len > text_start)[:, None]  # [B, 1]: the batch has valid text keys
        text_keys = ((block_ids + 1) * block_size > text_start)[None, :] & valid_k & has_text  # [B, nk]
        mask |= text_keys[:, None, None, :]
        q_ids = torch.arange(nq, device=device)
        text_queries = (q_ids + 1) * block_size > text_start  # [nq]
        if text_start < q_len:
            mask |= text_queries[None, None, :, None] & valid_k4
    return BlockSelection.from_mask(mask, block_size=block_size, q_len=q_len, kv_len=kv_len)
