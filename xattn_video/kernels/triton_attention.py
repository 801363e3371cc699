"""Triton block-sparse attention forward (spec §3).

FlashAttention-style: one program per (query tile, batch·head) keeps its query tile on chip and loops
only over the kept key blocks listed in the selection, with an online softmax in float32 (exp2 domain).
q/k/v are read in place through their strides, so both layouts and non-contiguous views work.

Kept blocks arrive sorted ascending and never lie wholly past kv_len, so only the last one can hold padding
keys: every other block runs an unmasked loop body, the last one a masked body. On Hopper, K/V tiles can be
fetched with tensor descriptors (TMA) instead of pointer loads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .launch import launch_with_fallback
from .blocks import BlockSelection
from .inputs import tma_addressable


@dataclass(frozen=True)
class AttentionConfig:
    """Launch shape of the sparse attention kernel (BLOCK_M/BLOCK_N must divide the selection block)."""

    block_m: int = 128
    block_n: int = 128
    num_warps: int = 8
    num_stages: int = 3
    use_tma: bool = False
    warp_specialize: bool = False


@triton.jit
def _load_kv(desc_or_ptr, b, h, key_start, offs_n, offs_d, stride_s, stride_d, kv_len,
             HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASK: tl.constexpr, USE_TMA: tl.constexpr):
    if USE_TMA:
        x = desc_or_ptr.load([b, key_start, h, 0]).reshape(BLOCK_N, HEAD_DIM)
        if MASK:
            x = tl.where(offs_n[:, None] < kv_len, x, 0.0)  # padding rows may hold anything, even inf
    else:
        ptrs = desc_or_ptr + offs_n[:, None] * stride_s + offs_d[None, :] * stride_d
        if MASK:
            x = tl.load(ptrs, mask=offs_n[:, None] < kv_len, other=0.0)
        else:
            x = tl.load(ptrs)
    return x


@triton.jit
def _attend(acc, l_i, m_i, q, k_src, v_src, b, h, key_start, offs_d, kv_len,
            stride_ks, stride_kd, stride_vs, stride_vd, qk_scale,
            HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASK: tl.constexpr, USE_TMA: tl.constexpr,
            DOT_PRECISION: tl.constexpr):
    offs_n = key_start + tl.arange(0, BLOCK_N)
    k = _load_kv(k_src, b, h, key_start, offs_n, offs_d, stride_ks, stride_kd, kv_len, HEAD_DIM, BLOCK_N, MASK, USE_TMA)
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
    if MASK:
        qk = tl.where(offs_n[None, :] < kv_len, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, axis=1) * qk_scale)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a tile of padding only
    else:
        m_new = tl.maximum(m_i, tl.max(qk, axis=1) * qk_scale)
        m_safe = m_new
    p = tl.math.exp2(qk * qk_scale - m_safe[:, None])
    alpha = tl.math.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    v = _load_kv(v_src, b, h, key_start, offs_n, offs_d, stride_vs, stride_vd, kv_len, HEAD_DIM, BLOCK_N, MASK, USE_TMA)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
    return acc, l_i, m_new


@triton.jit
def _sparse_attn_fwd(
    Q, K, V, O, COUNTS, INDICES, KV_LEN,
    stride_qb, stride_qs, stride_qh, stride_qd,
    stride_kb, stride_ks, stride_kh, stride_kd,
    stride_vb, stride_vs, stride_vh, stride_vd,
    stride_ob, stride_os, stride_oh, stride_od,
    H, SQ, NQB, NKB,
    qk_scale,
    HEAD_DIM: tl.constexpr,
    SEL_BLOCK: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    USE_TMA: tl.constexpr,
    WARP_SPECIALIZE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    SUB_N: tl.constexpr = SEL_BLOCK // BLOCK_N
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    kv_len = tl.load(KV_LEN + b)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    q_ptrs = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh \
        + offs_m[:, None] * stride_qs + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=offs_m[:, None] < SQ, other=0.0)
    if USE_TMA:
        k_src = K
        v_src = V
    else:
        k_src = K + b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh
        v_src = V + b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh

    row = pid_bh.to(tl.int64) * NQB + (pid_m * BLOCK_M) // SEL_BLOCK
    count = tl.load(COUNTS + row)
    idx_ptr = INDICES + row * NKB
    # Only the last kept block can reach past kv_len (indices ascend, none lies wholly in the padding).
    last = tl.load(idx_ptr + tl.maximum(count - 1, 0))
    partial = (count > 0) & ((last + 1) * SEL_BLOCK > kv_len)
    n_full = count - partial.to(tl.int32)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    for r in tl.range(0, n_full * SUB_N, warp_specialize=WARP_SPECIALIZE):
        key_start = tl.load(idx_ptr + r // SUB_N) * SEL_BLOCK + (r % SUB_N) * BLOCK_N
        acc, l_i, m_i = _attend(acc, l_i, m_i, q, k_src, v_src, b, h, key_start, offs_d, kv_len,
                                stride_ks, stride_kd, stride_vs, stride_vd, qk_scale,
                                HEAD_DIM, BLOCK_N, False, USE_TMA, DOT_PRECISION)
    if partial:
        for sub in range(SUB_N):
            key_start = last * SEL_BLOCK + sub * BLOCK_N
            acc, l_i, m_i = _attend(acc, l_i, m_i, q, k_src, v_src, b, h, key_start, offs_d, kv_len,
                                    stride_ks, stride_kd, stride_vs, stride_vd, qk_scale,
                                    HEAD_DIM, BLOCK_N, True, USE_TMA, DOT_PRECISION)

    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # rows without kept keys stay zero
    o_ptrs = O + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh \
        + offs_m[:, None] * stride_os + offs_d[None, :] * stride_od
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=offs_m[:, None] < SQ)


def default_config(q: torch.Tensor, block_size: int) -> AttentionConfig:
    if not q.is_cuda:
        return AttentionConfig(block_m=block_size, block_n=block_size, num_warps=4, num_stages=1)
    return AttentionConfig(block_m=block_size, block_n=block_size,
                           num_warps=8 if block_size >= 128 else 4, num_stages=3)


def block_sparse_attention_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, selection: BlockSelection, kv_len: torch.Tensor,
    out: torch.Tensor | None = None, config: AttentionConfig | None = None,
) -> torch.Tensor:
    """Same contract as ``naive.naive_block_sparse_attention``; q/k/v are [B, S, H, D] views.

    The selection must not keep blocks wholly past kv_len (``select_blocks`` and ``BlockSelection.from_mask``
    guarantee it), and its block_size must meet ``backend.check_backend_params`` (the public API checks it).
    ``out`` (optional, q's shape) is written in place; ``config`` overrides the launch shape.
    """
    counts, indices = selection.counts.contiguous(), selection.indices.contiguous()
    if out is None and config is None:
        return _sparse_attention_op(q, k, v, counts, indices, kv_len, selection.block_size)
    if out is None:
        out = torch.empty_like(q)
    _launch(q, k, v, counts, indices, kv_len, selection.block_size, out, config)
    return out


# A custom op: one opaque node for torch.compile, capturable by CUDA graphs.
@torch.library.custom_op("xattn_video::block_sparse_attention", mutates_args=())
def _sparse_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, counts: torch.Tensor,
                         indices: torch.Tensor, kv_len: torch.Tensor, block_size: int) -> torch.Tensor:
    out = torch.empty_like(q)
    _launch(q, k, v, counts, indices, kv_len, block_size, out, None)
    return out


@_sparse_attention_op.register_fake
def _(q, k, v, counts, indices, kv_len, block_size):
    return torch.empty_like(q)


# Launch shape that compiled for a problem signature (see launch.launch_with_fallback).
_WORKING_CONFIG: dict[tuple, AttentionConfig] = {}


def _launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, counts: torch.Tensor, indices: torch.Tensor,
            kv_len: torch.Tensor, block_size: int, out: torch.Tensor, config: AttentionConfig | None) -> None:
    def run(cfg: AttentionConfig) -> None:
        _launch_with(q, k, v, counts, indices, kv_len, block_size, out, cfg)

    if config is not None:
        return run(config)
    key = (q.device.type, q.dtype, q.shape[-1], block_size)
    launch_with_fallback(_WORKING_CONFIG, key, default_config(q, block_size), run)
    return None


def _launch_with(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, counts: torch.Tensor, indices: torch.Tensor,
                 kv_len: torch.Tensor, block_size: int, out: torch.Tensor, cfg: AttentionConfig) -> None:
    B, Sq, H, D = q.shape
    nq, nk = counts.shape[2], indices.shape[3]
    if block_size % cfg.block_m or block_size % cfg.block_n:
        raise ValueError(f"config {cfg} does not tile block_size {block_size}")
    k_arg, v_arg = k, v
    use_tma = cfg.use_tma and q.is_cuda and tma_addressable(k) and tma_addressable(v)
    if use_tma:
        from triton.tools.tensor_descriptor import TensorDescriptor

        block = [1, cfg.block_n, 1, D]
        k_arg = TensorDescriptor(k, list(k.shape), list(k.stride()), block)
        v_arg = TensorDescriptor(v, list(v.shape), list(v.stride()), block)
    grid = (triton.cdiv(Sq, cfg.block_m), B * H)
    _sparse_attn_fwd[grid](
        q, k_arg, v_arg, out, counts, indices, kv_len,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        H, Sq, nq, nk,
        1.0 / math.sqrt(D) * 1.4426950408889634,
        HEAD_DIM=D, SEL_BLOCK=block_size, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        USE_TMA=use_tma, WARP_SPECIALIZE=cfg.warp_specialize and q.is_cuda,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
