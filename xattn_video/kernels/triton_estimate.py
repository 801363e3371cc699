"""Triton antidiagonal block scoring (spec §1).

Two launches:
1. ``_restride_kernel`` writes Q̃ and K̃ as contiguous [B·H, rows, s·D] matrices (Q̃ with the stride
   positions reversed, both zero-padded; keys at positions ≥ kv_len are written as zeros). One read and
   one write of q and k (~1 ms at 119k tokens on an H100), after which scoring is a plain GEMM whose tiles
   are contiguous, instead of gathers with a row stride of s that thrash L2.
2. ``_estimate_kernel``: each program owns BLOCK_M reshaped query rows and streams over all key groups in
   one flattened, software-pipelined loop (key tile × stride position), keeping an online log-sum-exp per
   row. A block score needs each row's final normalizer, so the program writes the per-(row, key block)
   log-sum-exp to a scratch buffer — S/s × S/Bs floats, 16× smaller than the strided score matrix that
   the public implementation stores — then sums exp(lse_row_block − lse_row) over the rows of each query
   block. Only the block sums leave the kernel.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .blocks import num_blocks
from .launch import launch_with_fallback

# Scratch budget per launch (re-strided copies + log-sum-exp buffer); larger problems are split over
# heads in a host loop, which never synchronizes.
SCRATCH_BYTES = 2 * 1024 * 1024 * 1024


@dataclass(frozen=True)
class EstimateConfig:
    """Launch shape: BLOCK_M reshaped query rows per program, BLOCK_N key groups per step."""

    block_m: int = 128
    block_n: int = 128
    num_warps: int = 8
    num_stages: int = 3
    out_blocks: int = 64
    use_tma: bool = False
    block_k: int = 0  # K-chunk per step (0: head_dim)
    key_splits: int = 1  # programs sharing one query tile, each over a slice of the keys


@triton.jit
def _restride_kernel(
    SRC, DST, LIMIT,
    stride_b, stride_s, stride_h, stride_d,
    H, ROWS_OUT,
    STRIDE: tl.constexpr, HEAD_DIM: tl.constexpr, REVERSE: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """DST[b·H + h, i, t·D + d] = SRC[b, i·s + (s−1−t if REVERSE else t), h, d] for positions < LIMIT[b]."""
    pid_r = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    limit = tl.load(LIMIT + b)
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, HEAD_DIM)
    src = SRC + b.to(tl.int64) * stride_b + h.to(tl.int64) * stride_h
    dst = DST + pid_bh.to(tl.int64) * ROWS_OUT * (STRIDE * HEAD_DIM)
    for t in tl.static_range(STRIDE):
        if REVERSE:
            pos = rows * STRIDE + (STRIDE - 1 - t)
        else:
            pos = rows * STRIDE + t
        x = tl.load(src + pos[:, None] * stride_s + offs_d[None, :] * stride_d, mask=pos[:, None] < limit,
                    other=0.0)
        tl.store(dst + rows[:, None] * (STRIDE * HEAD_DIM) + t * HEAD_DIM + offs_d[None, :], x,
                 mask=rows[:, None] < ROWS_OUT)


@triton.jit
def _estimate_kernel(
    QT, KT, KV_LEN, LSE, ROW_MAX, ROW_SUM,
    H, N_ROWS, N_COLS, NKB, KEY_SPLITS,
    qk_scale,
    STRIDE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    ROWS_PER_BLOCK: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    USE_TMA: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Per (row, key block) log-sum-exp into LSE, and per (split, row) running max / sum of exp2."""
    KD: tl.constexpr = STRIDE * HEAD_DIM
    K_STEPS: tl.constexpr = KD // BLOCK_K
    NB: tl.constexpr = BLOCK_N // ROWS_PER_BLOCK
    pid0 = tl.program_id(0)
    pid_bh = tl.program_id(1)
    split = pid0 % KEY_SPLITS  # splits of one query tile run side by side and share its Q̃ in L2
    pid_m = pid0 // KEY_SPLITS
    b = pid_bh // H
    kv_len = tl.load(KV_LEN + b)
    n_groups = (kv_len + STRIDE - 1) // STRIDE  # key groups j with j·s < kv_len
    n_tiles = (n_groups + BLOCK_N - 1) // BLOCK_N
    tiles_per_split = (n_tiles + KEY_SPLITS - 1) // KEY_SPLITS
    tile0 = split * tiles_per_split
    my_tiles = tl.maximum(tl.minimum(tiles_per_split, n_tiles - tile0), 0)

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    q_row0 = pid_bh * N_ROWS  # int32: TMA coordinates are 32-bit (the buffers hold < 2^31 rows)
    k_row0 = pid_bh * N_COLS
    lse_base = LSE + pid_bh.to(tl.int64) * N_ROWS * NKB

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    # One flat loop over (key tile, K chunk) so the pipeliner sees a long loop, GEMM-style.
    for it in range(my_tiles * K_STEPS):
        tile = tile0 + it // K_STEPS
        kk = (it % K_STEPS) * BLOCK_K
        if USE_TMA:
            a = QT.load([q_row0 + pid_m * BLOCK_M, kk])
            bk = KT.load([k_row0 + tile * BLOCK_N, kk])
        else:
            a = tl.load(QT + (q_row0 + rows).to(tl.int64)[:, None] * KD + kk + offs_k[None, :])
            cols_ld = tile * BLOCK_N + tl.arange(0, BLOCK_N)
            bk = tl.load(KT + (k_row0 + cols_ld).to(tl.int64)[:, None] * KD + kk + offs_k[None, :])
        acc = tl.dot(a, tl.trans(bk), acc, input_precision=DOT_PRECISION)
        if kk == KD - BLOCK_K:
            cols = tile * BLOCK_N + tl.arange(0, BLOCK_N)
            logits = tl.where(cols[None, :] < n_groups, acc * qk_scale, float("-inf"))  # log2 units
            grouped = tl.reshape(logits, [BLOCK_M, NB, ROWS_PER_BLOCK])
            blk_max = tl.max(grouped, axis=2)
            blk_max_safe = tl.where(blk_max == float("-inf"), 0.0, blk_max)
            blk_sum = tl.sum(tl.exp2(grouped - blk_max_safe[:, :, None]), axis=2)
            blk_lse = blk_max_safe + tl.log2(blk_sum)  # -inf where the whole key block is padding
            kb = tile * NB + tl.arange(0, NB)
            tl.store(lse_base + rows[:, None] * NKB + kb[None, :], blk_lse,
                     mask=(rows[:, None] < N_ROWS) & (kb[None, :] < NKB))
            m_new = tl.maximum(m_i, tl.max(blk_max, axis=1))
            m_new_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            l_i = l_i * tl.exp2(m_i - m_new_safe) + tl.sum(blk_sum * tl.exp2(blk_max - m_new_safe[:, None]), axis=1)
            m_i = m_new
            acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    stat = (pid_bh.to(tl.int64) * KEY_SPLITS + split) * N_ROWS + rows
    tl.store(ROW_MAX + stat, m_i)
    tl.store(ROW_SUM + stat, l_i)


@triton.jit
def _block_sums_kernel(
    LSE, ROW_MAX, ROW_SUM, KV_LEN, OUT,
    H, SQ, N_ROWS, NQB, NKB, KEY_SPLITS,
    STRIDE: tl.constexpr,
    ROWS_PER_BLOCK: tl.constexpr,
    BLOCK_M: tl.constexpr,
    OUT_BLOCKS: tl.constexpr,
):
    """Â[I, J] = mean over the valid rows i of query block I of Σ_{j∈J} softmax_j(ŝ[i, :])."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    kv_len = tl.load(KV_LEN + pid_bh // H)
    n_kv_blocks = ((kv_len + STRIDE - 1) // STRIDE + ROWS_PER_BLOCK - 1) // ROWS_PER_BLOCK
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    for sp in range(KEY_SPLITS):
        m = tl.maximum(m, tl.load(ROW_MAX + (pid_bh.to(tl.int64) * KEY_SPLITS + sp) * N_ROWS + rows))
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    l = tl.zeros([BLOCK_M], dtype=tl.float32)
    for sp in range(KEY_SPLITS):
        stat = (pid_bh.to(tl.int64) * KEY_SPLITS + sp) * N_ROWS + rows
        l += tl.load(ROW_SUM + stat) * tl.exp2(tl.load(ROW_MAX + stat) - m_safe)
    # Rows without any valid key (kv_len = 0) get +inf so that their probabilities are exactly zero; a NaN sum
    # (non-finite q or k) stays NaN, so the row's scores are NaN and the selection keeps the whole row.
    row_lse = tl.where(l == 0, float("inf"), m_safe + tl.log2(l))
    row_weight = tl.where(rows * STRIDE < SQ, 1.0, 0.0)

    QB: tl.constexpr = BLOCK_M // ROWS_PER_BLOCK
    qb = pid_m * QB + tl.arange(0, QB)
    rows_in_q = (SQ + STRIDE - 1) // STRIDE
    n_valid_rows = tl.minimum(tl.maximum(rows_in_q - qb * ROWS_PER_BLOCK, 0), ROWS_PER_BLOCK)
    inv_rows = tl.where(n_valid_rows > 0, 1.0 / n_valid_rows.to(tl.float32), 0.0)
    lse_base = LSE + pid_bh.to(tl.int64) * N_ROWS * NKB
    out_base = OUT + pid_bh.to(tl.int64) * NQB * NKB
    for kb0 in range(0, NKB, OUT_BLOCKS):
        kbs = kb0 + tl.arange(0, OUT_BLOCKS)
        lse = tl.load(lse_base + rows[:, None] * NKB + kbs[None, :],
                      mask=kbs[None, :] < n_kv_blocks, other=float("-inf"))
        p = tl.exp2(lse - row_lse[:, None]) * row_weight[:, None]
        a = tl.sum(tl.reshape(p, [QB, ROWS_PER_BLOCK, OUT_BLOCKS]), axis=1) * inv_rows[:, None]
        tl.store(out_base + qb[:, None] * NKB + kbs[None, :], a,
                 mask=(qb[:, None] < NQB) & (kbs[None, :] < NKB))


@functools.lru_cache(maxsize=None)
def _has_tma(device_index: int) -> bool:
    # The bulk tensor copy engine exists from compute capability 9.0 (Hopper) on.
    return torch.cuda.get_device_capability(device_index)[0] >= 9


def default_config(q: torch.Tensor, stride: int, block_size: int) -> EstimateConfig:
    """Tuned on an H100 at 119k tokens (benchmarks/NOTES.md): TMA loads in 64-wide K chunks, and two
    programs per query tile splitting the keys so that the tiles they re-read stay in L2."""
    rows_per_block = block_size // stride
    if not q.is_cuda:
        return EstimateConfig(block_m=max(16, rows_per_block), block_n=max(16, rows_per_block),
                              num_warps=4, num_stages=1, out_blocks=16)
    block = max(128, rows_per_block)
    return EstimateConfig(block_m=block, block_n=block, num_warps=8, num_stages=4, block_k=64, key_splits=2,
                          use_tma=_has_tma(q.device.index if q.device.index is not None else torch.cuda.current_device()))


def estimate_block_scores_triton(
    q: torch.Tensor, k: torch.Tensor, kv_len: torch.Tensor, *, stride: int, block_size: int,
    config: EstimateConfig | None = None,
) -> torch.Tensor:
    """Same contract as ``naive.naive_estimate_block_scores``; q/k are [B, S, H, D] views (any strides).

    stride/block_size must meet ``backend.check_backend_params`` (the public API checks it). ``config``
    overrides the launch shape (benchmarks); the default path goes through the custom op.
    """
    if config is not None:
        return _launch_estimate(q, k, kv_len, stride, block_size, config)
    return _estimate_op(q, k, kv_len, stride, block_size)


def _score_grid(q: torch.Tensor, k: torch.Tensor, block_size: int) -> tuple[int, int, int, int]:
    B, Sq, H, _ = q.shape
    return B, H, num_blocks(Sq, block_size), num_blocks(k.shape[1], block_size)


# A custom op, so that torch.compile treats the launch as one opaque node (no graph break, no tracing
# into the Python launcher) and CUDA graphs capture it like any other kernel.
@torch.library.custom_op("xattn_video::estimate_block_scores", mutates_args=())
def _estimate_op(q: torch.Tensor, k: torch.Tensor, kv_len: torch.Tensor, stride: int, block_size: int) -> torch.Tensor:
    return _launch_estimate(q, k, kv_len, stride, block_size, None)


@_estimate_op.register_fake
def _(q, k, kv_len, stride, block_size):
    return q.new_empty(_score_grid(q, k, block_size), dtype=torch.float32)


def _restrided(x: torch.Tensor, limit: torch.Tensor, stride: int, rows_out: int, reverse: bool) -> torch.Tensor:
    """Contiguous [B·H, rows_out, s·D] copy of x [B, S, H, D] (Q̃ when reverse, K̃ otherwise)."""
    B, _, H, D = x.shape
    out = x.new_empty((B * H, rows_out, stride * D))
    block_r = 64 if x.is_cuda else 16
    _restride_kernel[(triton.cdiv(rows_out, block_r), B * H)](
        x, out, limit, *x.stride(), H, rows_out,
        STRIDE=stride, HEAD_DIM=D, REVERSE=reverse, BLOCK_R=block_r,
        num_warps=4,
    )
    return out


# Launch shape that compiled for a problem signature (see launch.launch_with_fallback).
_WORKING_CONFIG: dict[tuple, EstimateConfig] = {}


def _launch_estimate(q: torch.Tensor, k: torch.Tensor, kv_len: torch.Tensor, stride: int,
                     block_size: int, config: EstimateConfig | None) -> torch.Tensor:
    def run(cfg: EstimateConfig) -> torch.Tensor:
        return _launch_estimate_with(q, k, kv_len, stride, block_size, cfg)

    if config is not None:
        return run(config)
    key = (q.device.type, q.dtype, q.shape[-1], stride, block_size)
    return launch_with_fallback(_WORKING_CONFIG, key, default_config(q, stride, block_size), run)


def _launch_estimate_with(q: torch.Tensor, k: torch.Tensor, kv_len: torch.Tensor, stride: int,
                          block_size: int, cfg: EstimateConfig) -> torch.Tensor:
    B, Sq, H, D = q.shape
    rows_per_block = block_size // stride
    _, _, nq, nk = _score_grid(q, k, block_size)
    if cfg.block_m % rows_per_block or cfg.block_n % rows_per_block:
        raise ValueError(f"{cfg} must tile whole query/key blocks of {rows_per_block} rows")
    # Pad the reshaped rows to whole tiles so that the main loop needs no load masks.
    n_rows = triton.cdiv(nq * rows_per_block, cfg.block_m) * cfg.block_m
    n_cols = triton.cdiv(nk * rows_per_block, cfg.block_n) * cfg.block_n
    splits = cfg.key_splits
    out = q.new_empty((B, H, nq, nk), dtype=torch.float32)
    per_head = B * (n_rows * nk * 4 + (n_rows + n_cols) * stride * D * q.element_size())
    heads_per_launch = max(1, min(H, SCRATCH_BYTES // max(1, per_head)))
    qk_scale = 1.0 / (stride * math.sqrt(D)) * 1.4426950408889634  # log2(e): the kernel works in base 2
    q_limit = torch.full((B,), Sq, dtype=torch.int32, device=q.device)
    use_tma = cfg.use_tma and q.is_cuda
    block_k = cfg.block_k or D
    for h0 in range(0, H, heads_per_launch):
        h1 = min(H, h0 + heads_per_launch)
        hc = h1 - h0
        q_t = _restrided(q[:, :, h0:h1], q_limit, stride, n_rows, reverse=True)
        k_t = _restrided(k[:, :, h0:h1], kv_len, stride, n_cols, reverse=False)
        lse = torch.empty(B * hc * n_rows * nk, dtype=torch.float32, device=q.device)
        row_max = torch.empty(B * hc * splits * n_rows, dtype=torch.float32, device=q.device)
        row_sum = torch.empty_like(row_max)
        out_h = out if hc == H else torch.empty(B, hc, nq, nk, dtype=torch.float32, device=q.device)
        q_arg, k_arg = q_t, k_t
        if use_tma:
            from triton.tools.tensor_descriptor import TensorDescriptor

            q_arg = TensorDescriptor.from_tensor(q_t.view(-1, stride * D), [cfg.block_m, block_k])
            k_arg = TensorDescriptor.from_tensor(k_t.view(-1, stride * D), [cfg.block_n, block_k])
        _estimate_kernel[(n_rows // cfg.block_m * splits, B * hc)](
            q_arg, k_arg, kv_len, lse, row_max, row_sum,
            hc, n_rows, n_cols, nk, splits,
            qk_scale,
            STRIDE=stride, HEAD_DIM=D, ROWS_PER_BLOCK=rows_per_block,
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=block_k, USE_TMA=use_tma,
            DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
        _block_sums_kernel[(n_rows // cfg.block_m, B * hc)](
            lse, row_max, row_sum, kv_len, out_h,
            hc, Sq, n_rows, nq, nk, splits,
            STRIDE=stride, ROWS_PER_BLOCK=rows_per_block, BLOCK_M=cfg.block_m, OUT_BLOCKS=cfg.out_blocks,
            num_warps=4 if q.is_cuda else 1,
        )
        if hc != H:
            out[:, h0:h1] = out_h
    return out
