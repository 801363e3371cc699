"""Plain PyTorch reference of the whole XAttention operator (spec §1 estimate, §2 selection, §3 attention).

Runs on any device; the Triton kernels are tested against these functions. Work is chunked over heads and
query blocks so that memory stays bounded at HunyuanVideo sizes (~119k tokens): no full S×S (or S/s × S/s)
matrix is ever materialized.
q/k/v here are [B, S, H, D] views, scores [B, H, nq, nk]; inputs were validated by the caller (api.py).
"""

from __future__ import annotations

import math

import torch

from .blocks import BlockSelection, num_blocks
from .inputs import threshold_tensor

# Upper bound on the float32 intermediate of one chunk (bytes); keeps the reference usable at 119k tokens.
CHUNK_BYTES = {"cpu": 256 * 1024 * 1024, "cuda": 4 * 1024 * 1024 * 1024}


def _chunk(total: int, bytes_per_item: int, device: torch.device) -> int:
    budget = CHUNK_BYTES.get(device.type, CHUNK_BYTES["cpu"])
    return max(1, min(total, budget // max(1, bytes_per_item)))


def _zero_padded(x: torch.Tensor, length: int, valid: int) -> torch.Tensor:
    """float32 [length, H, D] copy of x [S, H, D] with rows ≥ valid set to zero."""
    out = x.new_zeros((length,) + tuple(x.shape[1:]), dtype=torch.float32)
    n = min(valid, x.shape[0])
    out[:n] = x[:n].to(torch.float32)
    return out


def naive_estimate_block_scores(
    q: torch.Tensor, k: torch.Tensor, kv_len: torch.Tensor, *, stride: int, block_size: int
) -> torch.Tensor:
    """Antidiagonal block scores Â, float32 [B, H, nq, nk], rows normalized over valid key blocks.

    q: [B, Sq, H, D], k: [B, Sk, H, D], kv_len: int [B]. Keys at positions ≥ kv_len count as the zero
    padding of step 1 (their contents never reach the scores); key groups with j·s ≥ kv_len get −inf.
    """
    B, Sq, H, D = q.shape
    Sk = k.shape[1]
    s, bs = stride, block_size
    rows_per_block = bs // s
    nq, nk = num_blocks(Sq, bs), num_blocks(Sk, bs)
    n_rows, n_cols = nq * rows_per_block, nk * rows_per_block
    scale = 1.0 / (s * math.sqrt(D))
    kv_host = kv_len.tolist()  # the reference may synchronize; the Triton path does not
    scores = torch.zeros(B, H, nq, nk, dtype=torch.float32, device=q.device)
    row_valid = (torch.arange(n_rows, device=q.device) * s < Sq).to(torch.float32)
    col_ids = torch.arange(n_cols, device=q.device)
    heads_per_chunk = _chunk(H, n_rows * n_cols * 4, q.device)
    for b in range(B):
        qp = _zero_padded(q[b], nq * bs, Sq)
        kp = _zero_padded(k[b], nk * bs, kv_host[b])
        # Q̃[i] = concat_t q[i·s + s−1−t], K̃[j] = concat_t k[j·s + t]: [H, rows, s·D]
        q_tilde = qp.view(n_rows, s, H, D).flip(1).permute(2, 0, 1, 3).reshape(H, n_rows, s * D)
        k_tilde = kp.view(n_cols, s, H, D).permute(2, 0, 1, 3).reshape(H, n_cols, s * D)
        group_valid = col_ids * s < kv_host[b]
        q_blocks_per_chunk = _chunk(nq, heads_per_chunk * rows_per_block * n_cols * 4, q.device)
        for h0 in range(0, H, heads_per_chunk):
            h1 = min(H, h0 + heads_per_chunk)
            for i0 in range(0, nq, q_blocks_per_chunk):
                i1 = min(nq, i0 + q_blocks_per_chunk)
                r0, r1 = i0 * rows_per_block, i1 * rows_per_block
                logits = torch.matmul(q_tilde[h0:h1, r0:r1], k_tilde[h0:h1].transpose(-1, -2)) * scale
                logits.masked_fill_(~group_valid, float("-inf"))
                probs = torch.softmax(logits, dim=-1)
                # no valid key: no mass (softmax over only -inf is NaN); a tensor condition keeps compile graphs whole
                probs.masked_fill_(~group_valid.any(), 0.0)
                probs *= row_valid[r0:r1, None]
                block_sum = probs.view(h1 - h0, i1 - i0, rows_per_block, nk, rows_per_block).sum(dim=(2, 4))
                total = block_sum.sum(dim=-1, keepdim=True)
                # total == 0 only without valid rows or keys; a NaN total (non-finite q/k) stays NaN
                scores[b, h0:h1, i0:i1] = torch.where(total == 0, torch.zeros_like(block_sum), block_sum / total)
    return scores


def naive_select_blocks(
    scores: torch.Tensor,
    taus: tuple[float, ...],
    kv_len: torch.Tensor,
    *,
    block_size: int,
    q_len: int,
    keep_diagonal: bool,
    text_start: int | None,
    max_density: float | None,
) -> BlockSelection:
    """Block selection (spec §2) on validated inputs: the fewest key blocks per row whose mass reaches τ.

    scores: float [B, H, nq, nk]; taus: τ per head; kv_len: int32 [B] on scores' device. Plain tensor ops
    (sort, cumulative sum, scatter) with no host sync, so this also serves as the non-Triton backend.
    """
    B, H, nq, nk = scores.shape
    device = scores.device
    block_ids = torch.arange(nk, device=device)
    n_valid = num_blocks(kv_len, block_size)  # [B]
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


def naive_block_sparse_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, selection: BlockSelection, kv_len: torch.Tensor
) -> torch.Tensor:
    """Exact attention over the kept blocks (spec §3), computed in float32; returns q's dtype.

    q: [B, Sq, H, D], k/v: [B, Sk, H, D]. Rows with no kept valid key are zeros. A row whose query or any kept
    valid key/value is non-finite is non-finite (NaN), as in dense attention; dropped blocks and padding never
    matter.
    """
    B, Sq, H, D = q.shape
    Sk = k.shape[1]
    bs = selection.block_size
    nq = selection.num_q_blocks
    scale = 1.0 / math.sqrt(D)
    kv_host = kv_len.tolist()
    out = torch.zeros(B, Sq, H, D, dtype=q.dtype, device=q.device)
    key_block = torch.arange(Sk, device=q.device) // bs
    heads_per_chunk = _chunk(H, bs * Sk * 4 * 3, q.device)
    for b in range(B):
        key_valid = torch.arange(Sk, device=q.device) < kv_host[b]
        # zero the padding so that even non-finite padding values cannot leak through 0·x products
        kb = _zero_padded(k[b], Sk, kv_host[b]).permute(1, 2, 0)  # [H, D, Sk]
        vb = _zero_padded(v[b], Sk, kv_host[b]).permute(1, 0, 2)  # [H, Sk, D]
        # A non-finite value must reach exactly the rows that keep its key (as in the Triton kernel, which
        # never loads dropped blocks), not every row through 0·inf: multiply finite values, flag the rest.
        v_bad = ~torch.isfinite(vb).all(dim=-1)  # [H, Sk]
        vb = vb.masked_fill(v_bad[..., None], 0.0)
        q_blocks_per_chunk = _chunk(nq, heads_per_chunk * bs * Sk * 4 * 3, q.device)
        for h0 in range(0, H, heads_per_chunk):
            h1 = min(H, h0 + heads_per_chunk)
            for i0 in range(0, nq, q_blocks_per_chunk):
                i1 = min(nq, i0 + q_blocks_per_chunk)
                r0, r1 = i0 * bs, min(Sq, i1 * bs)
                qc = q[b, r0:r1, h0:h1].to(torch.float32).permute(1, 0, 2)  # [h, rows, D]
                logits = torch.matmul(qc, kb[h0:h1]) * scale  # [h, rows, Sk]
                row_block = torch.arange(r0, r1, device=q.device) // bs
                kept = selection.mask[b, h0:h1][:, row_block][:, :, key_block] & key_valid  # [h, rows, Sk]
                logits.masked_fill_(~kept, float("-inf"))
                # rows without a kept key get zeros; NaN from a non-finite query stays NaN
                probs = torch.softmax(logits, dim=-1).masked_fill_(~kept.any(dim=-1, keepdim=True), 0.0)
                rows_out = torch.matmul(probs, vb[h0:h1])
                rows_out.masked_fill_((kept & v_bad[h0:h1, None, :]).any(dim=-1, keepdim=True), float("nan"))
                out[b, r0:r1, h0:h1] = rows_out.permute(1, 0, 2).to(q.dtype)
    return out
