"""Attention kernel variants for Hopper (issue 21): 8-bit q/k (and optionally P·V), dense mode, persistent schedule.

One kernel, specialised by compile-time flags, so that the benchmark can time each variant against the default
kernel (``triton_attention.py``, unchanged and still what ``xattention`` runs in bf16) in the same process:

- ``QK_QUANT``: q and k arrive as e4m3 (``QK_INT8``: int8) with one scale per tile (``triton_quant.quantize_triton``);
  the tile's scores are ``dot(q8, k8ᵀ) · scale_q · scale_k / √D``, the scales folded into the FMA that applies 1/√D
  (no extra work per element). int8 scores leave the tensor cores as int32 and reach float32 by a bit trick (no
  conversion instruction, see ``_step``). P·V stays in v's dtype (bf16), accumulated in float32.
- ``PV_FP8``: P·V in FP8 too: p ∈ [0, 1] is scaled by 448 and cast to e4m3, v is e4m3 with one scale per channel,
  stored [B, H, D, S] (tokens contiguous: Hopper's FP8 MMA needs both operands K-major). Each tile's P·V product
  comes out of the tensor cores fresh and is added to the float32 accumulator outside them (the two-level
  accumulation SageAttention2 uses against the FP8 MMA's reduced accumulator precision). The output is scaled by
  scale_v / 448 per channel at the end.
- ``DENSE``: every key tile below kv_len in order, no index lists (warmup steps, dense layers).
- ``PERSISTENT``: a grid of about one program per SM, each looping over (batch·head, query tile) work items,
  optionally in a given order (the launcher orders sparse work by kept-block count, heaviest first, so that the
  tail of the schedule holds the light items).
- ``USE_TMA``: k/v tiles through tensor descriptors (bf16 only), ``WARP_SPECIALIZE``: Triton's automatic warp
  specialization of the key loop (Hopper, triton >= 3.4).
- ``FAST_EXP``: exp2 of the unmasked tiles on 16-bit pairs (``ex2.approx.ftz.bf16x2`` / ``ex2.approx.f16x2``, one
  special-function instruction per two scores; not exact, see ``V2Config.fast_exp``).

Everything else is the default kernel's contract (spec §3): exact online softmax in float32 (exp2 domain), rows
without kept keys are zeros, only the last kept block may reach past kv_len and only it runs a masked body.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

from .backend import VARIANT_ENV_VAR, attention_kernel
from .blocks import BlockSelection
from .inputs import tma_addressable
from .triton_attention import AttentionConfig, _load_kv
from .triton_quant import P_SCALE, QuantizedQKV, quantize_triton, to_fp8


@dataclass(frozen=True)
class V2Config(AttentionConfig):
    """The default kernel's launch shape (:class:`AttentionConfig`) and this kernel's variant flags."""

    persistent: bool = False
    order_by_count: bool = True  # persistent sparse: heaviest work items first
    programs_per_sm: int = 1  # persistent grid size = SMs × this
    # exp2 on 16-bit pairs (inline PTX ex2.approx bf16x2/f16x2): half the special-function work, NOT exact (the
    # exponent is rounded to bf16/fp16 first: ~0.1-1% relative per weight); the masked last tile stays exact
    fast_exp: bool = False


# Named bf16 variants the benchmark compares (and XATTN_ATTN_VARIANT can force); "v1" is the default kernel.
BF16_VARIANTS: dict[str, V2Config] = {
    "v2": V2Config(),
    "v2-persistent": V2Config(persistent=True),
    "v2-persistent-natural": V2Config(persistent=True, order_by_count=False),
    "v2-tma": V2Config(use_tma=True, num_stages=2),
    "v2-persistent-tma": V2Config(persistent=True, use_tma=True, num_stages=2),
    "v2-ws": V2Config(warp_specialize=True),
    "v2-n64-s4": V2Config(block_n=64, num_stages=4),
    "v2-s4": V2Config(num_stages=4),
    "v2-w4-m64": V2Config(block_m=64, num_warps=4, num_stages=3),
    "v2-fastexp": V2Config(fast_exp=True),  # approximate: see V2Config.fast_exp
    "v2-persistent-fastexp": V2Config(persistent=True, fast_exp=True),
}


P_SCALE_T = tl.constexpr(P_SCALE)
LOG2_P_SCALE = tl.constexpr(math.log2(P_SCALE))


@triton.jit
def _exp2_16(x, BF16: tl.constexpr, EMULATE: tl.constexpr):
    """2^x (x float32 ≤ 0) rounded to bf16 (BF16) or fp16 first and computed two at a time (``ex2.approx`` on
    16-bit pairs: bf16x2 needs sm_90, f16x2 sm_75). EMULATE (the CPU interpreter, no inline PTX): the same input
    rounding, float32 exp2."""
    if BF16:
        xh = x.to(tl.bfloat16)
        if EMULATE:
            y = tl.math.exp2(xh.to(tl.float32)).to(tl.bfloat16)
        else:
            y = tl.inline_asm_elementwise("ex2.approx.ftz.bf16x2 $0, $1;", "=r,r", [xh], dtype=tl.bfloat16,
                                          is_pure=True, pack=2)
    else:
        xh = x.to(tl.float16)
        if EMULATE:
            y = tl.math.exp2(xh.to(tl.float32)).to(tl.float16)
        else:
            y = tl.inline_asm_elementwise("ex2.approx.f16x2 $0, $1;", "=r,r", [xh], dtype=tl.float16,
                                          is_pure=True, pack=2)
    return y


@triton.jit
def _f16_to_fp8(p16, ROUND_FIRST: tl.constexpr):
    if ROUND_FIRST:
        return to_fp8(p16.to(tl.float32), ROUND_FIRST)
    return p16.to(tl.float8e4nv)
MAGIC_I = tl.constexpr(0x4B400000)  # bits of 12582912.0 = 1.5 · 2^23
MAGIC_F = tl.constexpr(12582912.0)


@triton.jit
def _scores(q, k_src, ks_row, b, h, key_start, offs_d, kv_len, scale_q, stride_ks, stride_kd,
            HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASK: tl.constexpr, USE_TMA: tl.constexpr,
            QK_QUANT: tl.constexpr, QK_INT8: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """One key tile's raw scores q·kᵀ [BLOCK_M, BLOCK_N] (int8: offset float bits, see below) and their scale."""
    offs_n = key_start + tl.arange(0, BLOCK_N)
    k = _load_kv(k_src, b, h, key_start, offs_n, offs_d, stride_ks, stride_kd, kv_len, HEAD_DIM, BLOCK_N, MASK,
                 USE_TMA)
    if QK_QUANT:
        if QK_INT8:
            # int32 scores as float32 without a conversion instruction: |score| < 2^22 (127² · 128), so the bits of
            # score + 0x4B400000 are those of the float 1.5·2^23 + score (exact); the offset is folded in below
            qk = (tl.dot(q, tl.trans(k)) + MAGIC_I).to(tl.float32, bitcast=True)
        else:
            qk = tl.dot(q, tl.trans(k))
        scale = scale_q * tl.load(ks_row + key_start // BLOCK_N)
    else:
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        scale = scale_q
    return qk, scale


@triton.jit
def _update(acc, l_i, m_i, qk, scale, v_src, b, h, key_start, offs_d, kv_len, stride_vs, stride_vd,
            HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASK: tl.constexpr, USE_TMA: tl.constexpr,
            QK_INT8: tl.constexpr, PV_FP8: tl.constexpr, ROUND_FIRST: tl.constexpr,
            DOT_PRECISION: tl.constexpr, FAST_EXP: tl.constexpr, P16_BF16: tl.constexpr):
    """The online-softmax update of one key tile from its scores (``_scores``): running max and sum, P·V."""
    offs_n = key_start + tl.arange(0, BLOCK_N)
    if MASK:
        if QK_INT8:
            qk = qk - MAGIC_F
        # scaled before the mask: a tile of padding only has a quantization scale of 0, and -inf · 0 would be NaN
        qk = tl.where(offs_n[None, :] < kv_len, qk * scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        x = qk - m_safe[:, None]
    elif QK_INT8:
        m_new = tl.maximum(m_i, (tl.max(qk, axis=1) - MAGIC_F) * scale)
        m_safe = m_new
        x = qk * scale - (m_safe + MAGIC_F * scale)[:, None]  # one FMA per score, as below
    else:
        m_new = tl.maximum(m_i, tl.max(qk, axis=1) * scale)
        m_safe = m_new
        x = qk * scale - m_safe[:, None]
    alpha = tl.math.exp2(m_i - m_safe)
    # v tile: [BLOCK_N, HEAD_DIM] through (possibly transposed) strides
    v = _load_kv(v_src, b, h, key_start, offs_n, offs_d, stride_vs, stride_vd, kv_len, HEAD_DIM, BLOCK_N, MASK,
                 USE_TMA)
    if FAST_EXP and not MASK:
        # exp2 of 16-bit pairs: one special-function instruction per two scores (the masked last tile stays exact)
        if PV_FP8:
            p16 = _exp2_16(x + LOG2_P_SCALE, False, ROUND_FIRST)  # fp16 p·448 ∈ [0, 448]
            l_i = l_i * alpha + tl.sum(p16.to(tl.float32), axis=1) * (1.0 / P_SCALE_T)
            acc = acc * alpha[:, None] + tl.dot(_f16_to_fp8(p16, ROUND_FIRST), v)
        else:
            p16 = _exp2_16(x, P16_BF16, ROUND_FIRST)
            l_i = l_i * alpha + tl.sum(p16.to(tl.float32), axis=1)
            acc = acc * alpha[:, None]
            acc = tl.dot(p16.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
    else:
        p = tl.math.exp2(x)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if PV_FP8:
            p8 = to_fp8(p * P_SCALE_T, ROUND_FIRST)
            acc = acc * alpha[:, None] + tl.dot(p8, v)
        else:
            acc = acc * alpha[:, None]
            acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
    return acc, l_i, m_new


@triton.jit
def _step(acc, l_i, m_i, q, k_src, v_src, ks_row, b, h, key_start, offs_d, kv_len, scale_q,
          stride_ks, stride_kd, stride_vs, stride_vd,
          HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASK: tl.constexpr, USE_TMA: tl.constexpr,
          QK_QUANT: tl.constexpr, QK_INT8: tl.constexpr, PV_FP8: tl.constexpr, ROUND_FIRST: tl.constexpr,
          DOT_PRECISION: tl.constexpr, FAST_EXP: tl.constexpr, P16_BF16: tl.constexpr):
    """One key tile: its scores, then the softmax update."""
    qk, scale = _scores(q, k_src, ks_row, b, h, key_start, offs_d, kv_len, scale_q, stride_ks, stride_kd, HEAD_DIM,
                        BLOCK_N, MASK, USE_TMA, QK_QUANT, QK_INT8, DOT_PRECISION)
    return _update(acc, l_i, m_i, qk, scale, v_src, b, h, key_start, offs_d, kv_len, stride_vs, stride_vd, HEAD_DIM,
                   BLOCK_N, MASK, USE_TMA, QK_INT8, PV_FP8, ROUND_FIRST, DOT_PRECISION, FAST_EXP, P16_BF16)


@triton.jit
def _sparse_key_start(idx_ptr, r, SEL_BLOCK: tl.constexpr, SUB_N: tl.constexpr, BLOCK_N: tl.constexpr):
    """First key of the r-th BLOCK_N tile of a selection row (SUB_N tiles per kept SEL_BLOCK block)."""
    return tl.load(idx_ptr + r // SUB_N) * SEL_BLOCK + (r % SUB_N) * BLOCK_N


@triton.jit
def _tile(Q, K, V, O, QS, KS, VS, COUNTS, INDICES, KV_LEN, pid_m, pid_bh,
          stride_qb, stride_qs, stride_qh, stride_qd,
          stride_kb, stride_ks, stride_kh, stride_kd,
          stride_vb, stride_vs, stride_vh, stride_vd,
          stride_ob, stride_os, stride_oh, stride_od,
          H, SQ, NQB, NKB, NQS, NKS, qk_scale,
          HEAD_DIM: tl.constexpr, SEL_BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
          DENSE: tl.constexpr, QK_QUANT: tl.constexpr, QK_INT8: tl.constexpr, PV_FP8: tl.constexpr,
          USE_TMA: tl.constexpr,
          WARP_SPECIALIZE: tl.constexpr, ROUND_FIRST: tl.constexpr, DOT_PRECISION: tl.constexpr,
          FAST_EXP: tl.constexpr, P16_BF16: tl.constexpr):
    SUB_N: tl.constexpr = SEL_BLOCK // BLOCK_N
    b = pid_bh // H
    h = pid_bh % H
    kv_len = tl.load(KV_LEN + b)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    q_ptrs = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh \
        + offs_m[:, None].to(tl.int64) * stride_qs + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=offs_m[:, None] < SQ, other=0.0)
    if QK_QUANT:
        scale_q = qk_scale * tl.load(QS + pid_bh.to(tl.int64) * NQS + pid_m)
        ks_row = KS + pid_bh.to(tl.int64) * NKS
    else:
        scale_q = qk_scale
        ks_row = KS
    if USE_TMA:
        k_src = K
        v_src = V
    else:
        k_src = K + b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh
        v_src = V + b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    if DENSE:
        n_full = kv_len // BLOCK_N
        for r in tl.range(0, n_full, warp_specialize=WARP_SPECIALIZE):
            acc, l_i, m_i = _step(acc, l_i, m_i, q, k_src, v_src, ks_row, b, h, r * BLOCK_N, offs_d, kv_len,
                                  scale_q, stride_ks, stride_kd, stride_vs, stride_vd, HEAD_DIM, BLOCK_N, False,
                                  USE_TMA, QK_QUANT, QK_INT8, PV_FP8, ROUND_FIRST, DOT_PRECISION, FAST_EXP,
                                  P16_BF16)
        if n_full * BLOCK_N < kv_len:
            acc, l_i, m_i = _step(acc, l_i, m_i, q, k_src, v_src, ks_row, b, h, n_full * BLOCK_N, offs_d, kv_len,
                                  scale_q, stride_ks, stride_kd, stride_vs, stride_vd, HEAD_DIM, BLOCK_N, True,
                                  USE_TMA, QK_QUANT, QK_INT8, PV_FP8, ROUND_FIRST, DOT_PRECISION, FAST_EXP, P16_BF16)
    else:
        row = pid_bh.to(tl.int64) * NQB + (pid_m * BLOCK_M) // SEL_BLOCK
        count = tl.load(COUNTS + row)
        idx_ptr = INDICES + row * NKB
        last = tl.load(idx_ptr + tl.maximum(count - 1, 0))
        partial = (count > 0) & ((last + 1) * SEL_BLOCK > kv_len)
        n_full = count - partial.to(tl.int32)
        for r in tl.range(0, n_full * SUB_N, warp_specialize=WARP_SPECIALIZE):
            key_start = _sparse_key_start(idx_ptr, r, SEL_BLOCK, SUB_N, BLOCK_N)
            acc, l_i, m_i = _step(acc, l_i, m_i, q, k_src, v_src, ks_row, b, h, key_start, offs_d, kv_len,
                                  scale_q, stride_ks, stride_kd, stride_vs, stride_vd, HEAD_DIM, BLOCK_N, False,
                                  USE_TMA, QK_QUANT, QK_INT8, PV_FP8, ROUND_FIRST, DOT_PRECISION, FAST_EXP,
                                  P16_BF16)
        if partial:
            for sub in range(SUB_N):
                acc, l_i, m_i = _step(acc, l_i, m_i, q, k_src, v_src, ks_row, b, h, last * SEL_BLOCK + sub * BLOCK_N,
                                      offs_d, kv_len, scale_q, stride_ks, stride_kd, stride_vs, stride_vd, HEAD_DIM,
                                      BLOCK_N, True, USE_TMA, QK_QUANT, QK_INT8, PV_FP8, ROUND_FIRST, DOT_PRECISION,
                                      FAST_EXP, P16_BF16)

    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # rows without kept keys stay zero
    if PV_FP8:
        out = out * (tl.load(VS + pid_bh.to(tl.int64) * HEAD_DIM + offs_d) / P_SCALE_T)[None, :]
    o_ptrs = O + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh \
        + offs_m[:, None].to(tl.int64) * stride_os + offs_d[None, :] * stride_od
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=offs_m[:, None] < SQ)


# Sizes are not specialised on (Triton would compile again for every divisibility class of the sequence length).
@triton.jit(do_not_specialize=["SQ", "NQB", "NKB", "NQS", "NKS", "N_MTILES", "N_WORK"])
def _attn_v2(Q, K, V, O, QS, KS, VS, COUNTS, INDICES, KV_LEN, ORDER,
             stride_qb, stride_qs, stride_qh, stride_qd,
             stride_kb, stride_ks, stride_kh, stride_kd,
             stride_vb, stride_vs, stride_vh, stride_vd,
             stride_ob, stride_os, stride_oh, stride_od,
             H, SQ, NQB, NKB, NQS, NKS, N_MTILES, N_WORK, qk_scale,
             HEAD_DIM: tl.constexpr, SEL_BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
             DENSE: tl.constexpr, QK_QUANT: tl.constexpr, QK_INT8: tl.constexpr, PV_FP8: tl.constexpr,
          USE_TMA: tl.constexpr,
             WARP_SPECIALIZE: tl.constexpr, PERSISTENT: tl.constexpr, ORDERED: tl.constexpr,
             ROUND_FIRST: tl.constexpr, DOT_PRECISION: tl.constexpr, FAST_EXP: tl.constexpr,
             P16_BF16: tl.constexpr):
    if PERSISTENT:
        for w in range(tl.program_id(0), N_WORK, tl.num_programs(0)):
            if ORDERED:
                item = tl.load(ORDER + w)
            else:
                item = w
            _tile(Q, K, V, O, QS, KS, VS, COUNTS, INDICES, KV_LEN, item % N_MTILES, item // N_MTILES,
                  stride_qb, stride_qs, stride_qh, stride_qd, stride_kb, stride_ks, stride_kh, stride_kd,
                  stride_vb, stride_vs, stride_vh, stride_vd, stride_ob, stride_os, stride_oh, stride_od,
                  H, SQ, NQB, NKB, NQS, NKS, qk_scale, HEAD_DIM, SEL_BLOCK, BLOCK_M, BLOCK_N, DENSE, QK_QUANT,
                  QK_INT8, PV_FP8, USE_TMA, WARP_SPECIALIZE, ROUND_FIRST, DOT_PRECISION, FAST_EXP, P16_BF16)
    else:
        _tile(Q, K, V, O, QS, KS, VS, COUNTS, INDICES, KV_LEN, tl.program_id(0), tl.program_id(1),
              stride_qb, stride_qs, stride_qh, stride_qd, stride_kb, stride_ks, stride_kh, stride_kd,
              stride_vb, stride_vs, stride_vh, stride_vd, stride_ob, stride_os, stride_oh, stride_od,
              H, SQ, NQB, NKB, NQS, NKS, qk_scale, HEAD_DIM, SEL_BLOCK, BLOCK_M, BLOCK_N, DENSE, QK_QUANT,
              QK_INT8, PV_FP8, USE_TMA, WARP_SPECIALIZE, ROUND_FIRST, DOT_PRECISION, FAST_EXP, P16_BF16)


# ---------------------------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------------------------

def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 2
    return torch.cuda.get_device_properties(device).multi_processor_count


def dense_stages_that_fit(cfg: V2Config, head_dim: int, qk_bytes: int, v_bytes: int, smem_bytes: int) -> int:
    """``cfg.num_stages`` lowered until the dense loop's buffers fit in ``smem_bytes`` of shared memory.

    The dense loop is software-pipelined: each stage holds one K and one V tile, beside the resident Q tile
    (measured on an H200: 4 stages at BLOCK_N 128, D 128, bf16 asked for exactly 4·128·128·4 + 128·128·2 bytes
    and did not launch). The sparse loop loads through the selection's indices and needs less; it keeps its stages.
    """
    stages = cfg.num_stages
    q_tile = cfg.block_m * head_dim * qk_bytes
    while stages > 1 and stages * cfg.block_n * head_dim * (qk_bytes + v_bytes) + q_tile > smem_bytes:
        stages -= 1
    return stages


@functools.lru_cache(maxsize=None)
def _max_shared_memory(device: torch.device) -> int:
    """Shared memory one program may use on ``device`` (a CUDA device), as Triton checks it at launch."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    return triton.runtime.driver.active.utils.get_device_properties(index)["max_shared_mem"]


def default_fp8_config(device: torch.device, block_size: int = 128) -> V2Config:
    if device.type != "cuda":
        return V2Config(block_m=min(block_size, 64), block_n=min(block_size, 64), num_warps=4, num_stages=1)
    return V2Config(block_m=block_size, block_n=block_size, num_warps=8 if block_size >= 128 else 4, num_stages=3)


def variant_config(name: str | None = None) -> V2Config | None:
    """The bf16 variant named by ``name`` or the XATTN_ATTN_VARIANT environment variable (None: not a v2 variant:
    empty (the operator's choice), "v1" (the Triton kernel) or "gluon" (the Hopper kernel))."""
    name = (name if name is not None else os.environ.get(VARIANT_ENV_VAR, "")).strip().lower()
    if name in ("", "v1", "default", "gluon"):
        return None
    if name not in BF16_VARIANTS:
        raise ValueError(f"{VARIANT_ENV_VAR}/variant must be v1, gluon or one of {', '.join(BF16_VARIANTS)}, "
                         f"got {name!r}")
    return BF16_VARIANTS[name]


def attention_v2(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, selection: BlockSelection | None,
                 kv_len: torch.Tensor, *, precision: str = "bf16", pv_fp8: bool = False,
                 config: V2Config | None = None, quantized: QuantizedQKV | None = None,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """Block-sparse (``selection``) or dense (``selection=None``: every key below kv_len) attention; q's shape/dtype.

    q/k/v: [B, S, H, D] views (bf16/fp16; fp32 in the interpreter), kv_len: int32 [B] on q's device.
    ``precision="fp8"`` (q/k in e4m3) or ``"int8"`` (q/k rounded to int8, SageAttention's choice; same tensor-core
    rate on Hopper): q/k quantized here (or taken from ``quantized``), P·V in v's dtype unless ``pv_fp8``.
    No validation beyond what the kernel needs: the public API (``api.py``) checks inputs and refuses FP8 where
    the GPU has no FP8 tensor cores.
    """
    if selection is None:
        return _launch(q, k, v, None, None, 128, kv_len, precision, pv_fp8, config, quantized, out)
    return _launch(q, k, v, selection.counts, selection.indices, selection.block_size, kv_len, precision, pv_fp8,
                   config, quantized, out)


def launch_8bit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, counts: torch.Tensor | None,
                indices: torch.Tensor | None, block_size: int, kv_len: torch.Tensor, precision: str) -> torch.Tensor:
    """The operator's 8-bit attention with this module's kernel: default launch shape, bf16 P·V; dense when
    ``counts`` is None."""
    return _launch(q, k, v, counts, indices, block_size, kv_len, precision, False, None, None, None)


# A custom op for the 8-bit paths the operator runs (default launch shape): one opaque node for torch.compile,
# capturable by CUDA graphs, as the default bf16 kernel is.
@torch.library.custom_op("xattn_video::attention_8bit", mutates_args=())
def _attention_8bit_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, counts: torch.Tensor, indices: torch.Tensor,
                       kv_len: torch.Tensor, block_size: int, precision: str, dense: bool) -> torch.Tensor:
    return launch_8bit(q, k, v, None if dense else counts, None if dense else indices, block_size, kv_len, precision)


@_attention_8bit_op.register_fake
def _(q, k, v, counts, indices, kv_len, block_size, precision, dense):
    return torch.empty_like(q)


def attention_8bit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, selection: BlockSelection | None,
                   kv_len: torch.Tensor, precision: str) -> torch.Tensor:
    """What the operator runs for precision "fp8"/"int8" (q·kᵀ in 8 bits, P·V in bf16), through a custom op: on a
    Hopper GPU with triton 3.6 (``backend.attention_kernel`` is "gluon") the Gluon kernel
    (the custom op ``gluon_attention_fp8.attention_8bit_hopper``), elsewhere :func:`attention_v2` with the default
    launch shape (this module's op); both ops take the same arguments."""
    op = _attention_8bit_op
    if attention_kernel(q.device) == "gluon":
        from .gluon_attention_fp8 import attention_8bit_hopper as op
    if selection is None:
        return op(q, k, v, kv_len, kv_len, kv_len, 128, precision, True)
    return op(q, k, v, selection.counts.contiguous(), selection.indices.contiguous(), kv_len, selection.block_size,
              precision, False)


def _launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, counts: torch.Tensor | None,
            indices: torch.Tensor | None, block_size: int, kv_len: torch.Tensor, precision: str, pv_fp8: bool,
            config: V2Config | None, quantized: QuantizedQKV | None, out: torch.Tensor | None) -> torch.Tensor:
    sparse = counts is not None
    B, Sq, H, D = q.shape
    dev = q.device
    if precision not in ("bf16", "fp8", "int8"):
        raise ValueError(f"precision must be bf16, fp8 or int8, got {precision!r}")
    quant = precision != "bf16"
    cfg = config or (default_fp8_config(dev, block_size) if quant else V2Config(
        block_m=min(block_size, 128), block_n=min(block_size, 128),
        num_warps=8 if block_size >= 128 and q.is_cuda else 4, num_stages=3 if q.is_cuda else 1))
    if sparse and (block_size % cfg.block_m or block_size % cfg.block_n):
        raise ValueError(f"config {cfg} does not tile block_size {block_size}")
    if out is None:
        out = torch.empty_like(q)
    fp8 = quant  # q/k quantized (either format)
    qk_format = "int8" if precision == "int8" else "e4m3"
    if fp8:
        qz = quantized or quantize_triton(q, k, v if pv_fp8 else None, kv_len, block_m=cfg.block_m,
                                          block_n=cfg.block_n, qk_format=qk_format)
        if (qz.block_m != cfg.block_m or qz.block_n != cfg.block_n or (pv_fp8 and qz.v is None)
                or qz.qk_format != qk_format):
            raise ValueError("quantized operands do not match the launch config or precision")
        q_arg, k_arg, qs, ks = qz.q, qz.k, qz.q_scale, qz.k_scale
        nqs, nks = qs.shape[1], ks.shape[1]
        if pv_fp8:
            vt = qz.v  # [B, H, D, S]
            v_arg, vs = vt, qz.v_scale
            v_strides = (vt.stride(0), vt.stride(3), vt.stride(1), vt.stride(2))
        else:
            v_arg, vs, v_strides = v, qs, v.stride()
    else:
        q_arg, k_arg, v_arg, qs, ks, vs, nqs, nks = q, k, v, kv_len, kv_len, kv_len, 0, 0
        v_strides = v.stride()
    k_strides = k_arg.stride()
    use_tma = cfg.use_tma and not fp8 and q.is_cuda and tma_addressable(k) and tma_addressable(v)
    if use_tma:
        from triton.tools.tensor_descriptor import TensorDescriptor

        block = [1, cfg.block_n, 1, D]
        k_arg = TensorDescriptor(k, list(k.shape), list(k.stride()), block)
        v_arg = TensorDescriptor(v, list(v.shape), list(v.stride()), block)
    n_mtiles = triton.cdiv(Sq, cfg.block_m)
    n_work = n_mtiles * B * H
    if sparse:
        counts, indices = counts.contiguous(), indices.contiguous()
        nqb, nkb = counts.shape[2], indices.shape[3]
    else:
        counts = indices = kv_len
        nqb, nkb = 0, 0
    order, ordered = kv_len, False
    if cfg.persistent and cfg.order_by_count and sparse:
        # work item = bh * n_mtiles + m; its cost = kept blocks of its selection row
        per_tile = counts.reshape(B * H, nqb).repeat_interleave(block_size // cfg.block_m, dim=1)[:, :n_mtiles]
        order = torch.argsort(per_tile.reshape(-1), descending=True, stable=True).to(torch.int32)
        ordered = True
    if cfg.persistent:
        grid = (min(n_work, _num_sms(dev) * cfg.programs_per_sm),)
    else:
        grid = (n_mtiles, B * H)
    dot_precision = "ieee" if q.dtype == torch.float32 else "tf32"
    num_stages = cfg.num_stages
    if not sparse and q.is_cuda:
        # q_arg is q or its 8-bit copy (never a TMA descriptor): its element size is the q/k tiles'
        num_stages = dense_stages_that_fit(cfg, D, q_arg.element_size(), 1 if fp8 and pv_fp8 else v.element_size(),
                                           _max_shared_memory(dev))
    _attn_v2[grid](
        q_arg, k_arg, v_arg, out, qs, ks, vs, counts, indices, kv_len, order,
        *q_arg.stride(), *k_strides, *v_strides, *out.stride(),
        H, Sq, nqb, nkb, nqs, nks, n_mtiles, n_work,
        1.0 / math.sqrt(D) * 1.4426950408889634,
        HEAD_DIM=D, SEL_BLOCK=block_size, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        DENSE=not sparse, QK_QUANT=fp8, QK_INT8=fp8 and qk_format == "int8", PV_FP8=fp8 and pv_fp8,
        USE_TMA=use_tma,
        WARP_SPECIALIZE=cfg.warp_specialize and q.is_cuda, PERSISTENT=cfg.persistent, ORDERED=ordered,
        ROUND_FIRST=not q.is_cuda, DOT_PRECISION=dot_precision, FAST_EXP=cfg.fast_exp,
        P16_BF16=q.dtype != torch.float16,
        num_warps=cfg.num_warps, num_stages=num_stages,
    )
    return out


def with_config(cfg: V2Config, **changes) -> V2Config:
    return replace(cfg, **changes)


__all__ = ["BF16_VARIANTS", "V2Config", "VARIANT_ENV_VAR", "attention_8bit", "attention_v2", "default_fp8_config",
           "launch_8bit", "variant_config"]
