"""Triton block selection (spec §2): one program per (batch, head, query block), one launch in all.

The torch version is ~30 small kernel launches, which at 18k tokens costs more than the estimate itself.
Here each program sorts its row of block scores with a bitonic sort on 64-bit keys (score bits above, the
reversed block index below, so ties keep the lower block first, as the stable torch sort does), keeps the
sorted blocks whose preceding mass is below τ, applies the forced blocks, and writes the row's mask, count
and index list (kept blocks ascending, then the dropped ones ascending).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .blocks import BlockSelection, num_blocks


@triton.jit
def _select_kernel(
    SCORES, TAU, KV_LEN, CAP, MASK, COUNTS, INDICES,
    H, NQ, NK, Q_LEN, TEXT_START,
    BLOCK_SIZE: tl.constexpr,
    NK_P2: tl.constexpr,
    KEEP_DIAG: tl.constexpr,
    HAS_TEXT: tl.constexpr,
    HAS_CAP: tl.constexpr,
):
    row = tl.program_id(0)
    b = row // (H * NQ)
    h = (row // NQ) % H
    i = row % NQ
    kv_len = tl.load(KV_LEN + b)
    n_valid = (kv_len + BLOCK_SIZE - 1) // BLOCK_SIZE
    tau = tl.load(TAU + h)
    j = tl.arange(0, NK_P2)
    in_row = j < NK
    valid = j < n_valid
    base = row.to(tl.int64) * NK

    scores = tl.load(SCORES + base + j, mask=in_row, other=0.0)
    # Non-negative float32 order equals the order of their bit patterns; padding blocks get -1 (last).
    bits = tl.where(valid, scores.to(tl.int32, bitcast=True), -1)
    key = (bits.to(tl.int64) << 32) | (NK_P2 - 1 - j).to(tl.int64)
    key = tl.sort(key, descending=True)
    high = (key >> 32).to(tl.int32)
    sorted_valid = high >= 0
    sorted_block = NK_P2 - 1 - (key & 0xFFFFFFFF).to(tl.int32)
    mass = tl.where(sorted_valid, high.to(tl.float32, bitcast=True), 0.0)
    mass_before = tl.cumsum(mass, axis=0) - mass
    dense = tl.zeros([NK_P2], dtype=tl.float32) + tau >= 1.0  # τ ≥ 1: every valid block (as a block, not a scalar)
    keep = sorted_valid & ((mass_before < tau) | dense)
    if HAS_CAP:
        keep = keep & ((j < tl.load(CAP + b)) | dense)
    tl.store(MASK + base + sorted_block, keep.to(tl.int8), mask=sorted_block < NK)
    tl.debug_barrier()  # the scatter above went through memory; read the row back in block order

    kept = tl.load(MASK + base + j, mask=in_row, other=0) != 0
    # NaN/+inf among the valid scores (a non-finite q or k) leaves no ranking: the row keeps every valid block.
    row_sum = tl.sum(tl.where(valid, scores, 0.0), axis=0)
    kept = tl.where((row_sum != row_sum) | (row_sum == float("inf")), kept | valid, kept)
    if KEEP_DIAG:
        kept = kept | ((j == i) & valid)
    if HAS_TEXT:
        text_keys = ((j + 1) * BLOCK_SIZE > TEXT_START) & valid & (kv_len > TEXT_START)
        text_query = ((i + 1) * BLOCK_SIZE > TEXT_START) & (TEXT_START < Q_LEN)
        kept = kept | text_keys | (valid & text_query)
    kept = kept & in_row
    count = tl.sum(kept.to(tl.int32), axis=0)
    dropped = (~kept) & in_row
    dest = tl.where(kept, tl.cumsum(kept.to(tl.int32), axis=0) - 1, count + tl.cumsum(dropped.to(tl.int32), axis=0) - 1)
    tl.store(INDICES + base + dest, j, mask=in_row)
    tl.store(MASK + base + j, kept.to(tl.int8), mask=in_row)
    tl.store(COUNTS + row, count)


def select_blocks_triton(scores: torch.Tensor, taus: torch.Tensor, kv_len: torch.Tensor, *, block_size: int,
                         q_len: int, keep_diagonal: bool, text_start: int | None,
                         max_density: float | None) -> BlockSelection:
    """Same contract as ``naive.naive_select_blocks``; taus: float32 [H] on scores' device, kv_len: int32 [B]."""
    counts, indices, mask = _select_op(scores.to(torch.float32), taus, kv_len, block_size, q_len, keep_diagonal,
                                       -1 if text_start is None else text_start,
                                       -1.0 if max_density is None else float(max_density))
    return BlockSelection(counts=counts, indices=indices, mask=mask.view(torch.bool), block_size=block_size,
                          q_len=q_len, kv_len=kv_len)


# A custom op: one opaque node for torch.compile, capturable by CUDA graphs.
@torch.library.custom_op("xattn_video::select_blocks", mutates_args=())
def _select_op(scores: torch.Tensor, taus: torch.Tensor, kv_len: torch.Tensor, block_size: int, q_len: int,
               keep_diagonal: bool, text_start: int, max_density: float) -> tuple[torch.Tensor, torch.Tensor,
                                                                                   torch.Tensor]:
    B, H, nq, nk = scores.shape
    scores = scores.contiguous()
    mask = torch.empty((B, H, nq, nk), dtype=torch.int8, device=scores.device)
    counts = torch.empty((B, H, nq), dtype=torch.int32, device=scores.device)
    indices = torch.empty((B, H, nq, nk), dtype=torch.int32, device=scores.device)
    cap = kv_len  # placeholder pointer when there is no cap
    if max_density > 0:
        cap = torch.ceil(max_density * num_blocks(kv_len, block_size).to(torch.float64)).to(torch.int32)  # as the torch path
    nk_p2 = max(16, triton.next_power_of_2(nk))
    _select_kernel[(B * H * nq,)](
        scores, taus, kv_len, cap, mask, counts, indices,
        H, nq, nk, q_len, text_start,
        BLOCK_SIZE=block_size, NK_P2=nk_p2, KEEP_DIAG=keep_diagonal, HAS_TEXT=text_start >= 0,
        HAS_CAP=max_density > 0,
        num_warps=4 if nk_p2 <= 1024 else 8,
    )
    return counts, indices, mask


@_select_op.register_fake
def _(scores, taus, kv_len, block_size, q_len, keep_diagonal, text_start, max_density):
    B, H, nq, nk = scores.shape
    return (scores.new_empty((B, H, nq), dtype=torch.int32), scores.new_empty((B, H, nq, nk), dtype=torch.int32),
            scores.new_empty((B, H, nq, nk), dtype=torch.int8))
