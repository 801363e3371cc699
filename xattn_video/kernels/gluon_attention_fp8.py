"""FP8 block-sparse attention forward for Hopper (sm_90a) in Gluon: the FA3-style schedule of ``gluon_attention.py``
with q·kᵀ (and optionally P·V) on the 8-bit tensor cores (issue 21). With bf16 P·V it is what ``xattention`` and
``dense_attention`` run for precision fp8 / int8 on a Hopper GPU with triton 3.6 (the custom op
:func:`attention_8bit_hopper`, called by ``triton_attention_v2.attention_8bit``); FP8 P·V (``pv_fp8``) is for
benchmarks: on video-like inputs it adds about 3 % relative error, over issue 21's budget.

Schedule, barriers, partitions and masking rules are those of :mod:`xattn_video.kernels.gluon_attention` (read its
docstring first): one program per 128-row query block, a 1-warp TMA producer, two consumer warpgroups of 64 query
rows each, a K/V ring with ready/empty mbarriers, FA3's intra-warpgroup overlap (q·K_jᵀ and P_{j-1}·V_{j-1} in
flight together, the softmax of S_j under P_{j-1}·V_{j-1}), the optional ping-pong token, a masked copy of the round
for the partial last tile only. The barrier protocol is unchanged (same waits and arrives in the same order).

What is different (the arithmetic is that of ``triton_attention_v2`` with ``QK_QUANT`` / ``PV_FP8``):

- Operands: :func:`quantize_fp8` = ``triton_quant.quantize_triton(..., block_m=128, block_n=128, "e4m3")``
  (its kernels and values; its transposed v then reordered into this kernel's token order, see below): q, k e4m3
  [B, S, H, D] with one float32 scale per 128-row tile (k smoothed by
  its mean over the valid tokens), v either as is (bf16/fp16) or e4m3 transposed with one scale per channel.
- Scores: S = dot(q8, k8ᵀ) (SASS ``QGMMA.64x128x32.F32.E4M3.E4M3``), multiplied by scale_q·scale_k/√D·log2(e) inside the
  exp2 FMA. The k scale of tile j+1 is loaded (through the selection's index when sparse) during round j, so its
  latency is hidden. In the masked (last, partial) tile the scale is applied before the mask: a quantization scale
  can be 0 (a tile whose smoothed keys are all 0), and -inf·0 would be NaN.
- ``qk_format="int8"`` (``QK_INT8``; SageAttention's choice; on video-like inputs the Triton kernels measured
  0.7 % error for int8 q·kᵀ against 3 % for e4m3): q, k int8 from ``quantize_triton(..., qk_format="int8")``
  (scale amax/127, rounded to nearest even), S on
  the s8·s8→s32 wgmma (SASS ``IGMMA.64x128x32.S8.S8``, same rate as FP8 on Hopper, same k = 32, same smem bytes).
  The int32 scores reach float32 as in ``triton_attention_v2``'s QK_INT8: sf = bits(s + 0x4B400000) = 1.5·2^23 + s
  exactly (|s| ≤ 127²·128 < 2^22), one IADD3/VIADD per score, and the offset goes into the row term of the exp2 FMA
  (p = 2^(sf·scale − (m + 1.5·2^23·scale − bias))); ``s.to(float32)`` instead compiles to one I2F.F32.S32 per score
  (checked in SASS), a quarter-rate conversion that would compete with MUFU.EX2 (16/clk/SM each). The masked tile
  takes sf − 1.5·2^23 (exact) and scales before the mask as above. Everything else (P·V either way, barriers,
  registers: 168/thread, same spills as e4m3) is unchanged.
- ``pv_fp8=False`` (variant a): P·V in v's dtype exactly as the bf16 kernel (P cast to bf16/fp16, k_width 2,
  accumulated in the wgmma; V's rows past kv_len zeroed in shared memory before the partial tile's P·V).
- ``pv_fp8=True`` (variant b): p·448 (the exp2 computes 2^(x + log2 448) directly: same FMA) is cast to e4m3
  (saturating) and fed from registers as the A operand of an FP8 wgmma (dot-operand layout, k_width 4). The wgmma
  accumulator gives thread t of a quad the column pairs 2t, 2t+1 of every 8 columns, the FP8 A operand wants
  quadruples 4t..4t+3 of every 16: a plain ``convert_layout`` moves bytes between threads (measured in SASS: ~24
  SHFL and ~190 PRMT per tile and thread). Instead the keys are relabelled within each group of 16 (key
  16g + 8i + 2t + e is fed as k = 16g + 4t + 2i + e: a register renaming, no instruction) and the transposed V is
  stored with the same token permutation (:func:`quantize_fp8`, :func:`in_kernel_order`; a ``quantize_triton``
  result is reordered by the
  launcher). P is cast right after the softmax, before the wait for the previous P·V, into 16 packed 32-bit
  registers (two ``cvt.rn.satfinite.e4m3x2.f32`` each); carried as e4m3 elements LLVM would split it into 64
  single-byte registers and repack them with PRMTs, and a cast placed between two wgmma issues makes ptxas serialise
  every wgmma of the kernel (C7513). V is the K-major B operand: [D, 128] tiles of the transposed v (keys
  contiguous) through a permuted shared-memory view.
  Two-level accumulation (``two_level=True``, as ``triton_attention_v2``'s PV_FP8): each tile's P·V goes into a
  fresh accumulator (use_acc=False, never materialised) and is added to the float32 O in registers after the wait,
  O = O·alpha + PV in one FMA per element (the rescale moves from before the MMA issue to after its wait).
  ``two_level=False`` accumulates in the wgmma like FlashAttention-3 (64 fewer live registers at D=128).
  The output is O / l · scale_v per channel (l is the sum of the fp32 p·448, so the 1/448 cancels). Padding: v's
  tokens ≥ kv_len are zeros in the quantized buffer, so no shared-memory zeroing (P is exactly 0 there anyway).
- Shared memory: Q is fp8 (half the bytes), so the output is staged in its own [2, 64, D] buffer (the Q halves are
  too small for bf16 rows). D=128: variant a 48 KB + 48 KB/stage, variant b 48 KB + 32 KB/stage.
- Registers (offline sm_90a compile, triton 3.6): 0 spills everywhere except two-level FP8 P·V at D=128 (116-132
  bytes, in round 0 and the masked last round only; the main loop has none): during the softmax a consumer holds O,
  S, the in-flight fresh P·V accumulator (64 registers each) and P_{j-1} (16).

TMA needs 16-byte aligned strides: the transposed, permuted v is [B, H, D, S rounded up to 16] (positions of tokens
≥ kv_len and ≥ S are zeros).

Limits: block 128 only; D 64 or 128; q/k/v bf16/fp16; q·kᵀ e4m3 or int8, P·V bf16/fp16 or e4m3; Hopper with
triton 3.6 (``gluon_available()``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .blocks import BlockSelection
from .triton_quant import FP8_DTYPE, P_SCALE, QK_FORMATS, QuantizedQKV

# The Gluon imports, the version gate and the device helpers both kernels share live in gluon_attention
from .gluon_attention import (  # noqa: F401 (gl & co. are used by the kernels below when Gluon is present)
    BLOCK,
    _GLUON_VERSION,
    _IMPORT_ERROR,
    _barriers,
    _jit,
    _key_block,
    _pp_pass,
    _pp_wait,
    _producer,
    _tile_range,
    _zero_rows_from,
    check_launch,
    check_selection,
    gluon_available,
    gluon_takes,
    qkv_refusal,
    selection_args,
    sparse_args,
)
from .inputs import tma_addressable

if _IMPORT_ERROR is None:
    import triton
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
else:  # the kernels below stay plain functions; gl only has to name constexpr in their annotations
    from types import SimpleNamespace

    triton = None  # type: ignore[assignment]
    gl = SimpleNamespace(constexpr=None)  # type: ignore[assignment]
    TensorDescriptor = None  # type: ignore[assignment,misc]


@dataclass(frozen=True)
class GluonFP8Config:
    """Launch knobs of :func:`attention_gluon_fp8`."""

    num_stages: int = 2  # K/V ring depth
    pingpong: bool = True  # FA3 ping-pong token between the consumer warpgroups
    two_level: bool = True  # FP8 P·V only: per-tile P·V into a fresh accumulator, added to O in registers
    consumer_regs: int = 240
    producer_regs: int = 24
    maxnreg: int | None = None


LOG2E = 1.4426950408889634
LOG2_P_SCALE = gl.constexpr(math.log2(P_SCALE)) if _IMPORT_ERROR is None else math.log2(P_SCALE)
# int8 q·kᵀ: |score| ≤ 127²·128 < 2^22, so the bits of score + 0x4B400000 are those of the float 1.5·2^23 + score
# (exact); the offset is taken out inside the exp2 FMA (as triton_attention_v2's QK_INT8)
MAGIC_I = gl.constexpr(0x4B400000) if _IMPORT_ERROR is None else 0x4B400000
MAGIC_F = gl.constexpr(12582912.0) if _IMPORT_ERROR is None else 12582912.0


# ---------------------------------------------------------------------------------------------------------------
# Device code (the helpers shared with the bf16 kernel are imported above)
# ---------------------------------------------------------------------------------------------------------------

@_jit
def _softmax_tile(s, m_i, l_i, scale, bias, limit, s_layout: gl.constexpr, BLOCK_N: gl.constexpr,
                  MASKED: gl.constexpr, QK_INT8: gl.constexpr):
    """Online-softmax update of one tile of raw scores ``s`` (FP8: float32; ``QK_INT8``: int32); ``scale`` =
    scale_q·scale_k/√D·log2(e) (≥ 0), ``bias`` = log2 of the factor p is scaled by (log2 448 for FP8 P·V, else 0).
    Returns p·2^bias (fp32), m, l (sum of p·2^bias) and the accumulator's rescale factor.

    int8 scores reach float32 without a conversion instruction: sf = bits(s + 0x4B400000) = 1.5·2^23 + s exactly
    (one integer add per score), and the offset goes into the per-row term of the exp2 FMA:
    p = 2^(sf·scale − (m + 1.5·2^23·scale − bias)), still one FMA per score (as ``triton_attention_v2``)."""
    if QK_INT8:
        s = (s + MAGIC_I).to(gl.float32, bitcast=True)
    if MASKED:
        if QK_INT8:
            s = s - MAGIC_F  # exact (Sterbenz): the raw score as float32
        cols = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
        # scale before the mask: scale may be 0 and -inf·0 is NaN
        s = gl.where(gl.expand_dims(cols < limit, 0), s * scale, float("-inf"))
        m_new = gl.maximum(m_i, gl.max(s, axis=1))
        p = gl.exp2(s - gl.expand_dims(m_new - bias, 1))
    elif QK_INT8:
        m_new = gl.maximum(m_i, (gl.max(s, axis=1) - MAGIC_F) * scale)
        p = gl.exp2(s * scale - gl.expand_dims(m_new + (MAGIC_F * scale - bias), 1))  # one FMA per score
    else:
        m_new = gl.maximum(m_i, gl.max(s, axis=1) * scale)
        p = gl.exp2(s * scale - gl.expand_dims(m_new - bias, 1))  # one FMA per score
    alpha = gl.exp2(m_i - m_new)
    l_i = l_i * alpha + gl.sum(p, axis=1)
    return p, m_new, l_i, alpha


@_jit
def _pv_issue(p_op, v_tile, acc, alpha, HALF_M: gl.constexpr, HEAD_DIM: gl.constexpr, PV_FP8: gl.constexpr,
              TWO_LEVEL: gl.constexpr):
    """Issue P·V asynchronously. Two-level: into a fresh accumulator (the rescale of O happens after the wait);
    else O is rescaled now and accumulated in the wgmma."""
    o_layout: gl.constexpr = acc.type.layout
    if PV_FP8:
        b_op = v_tile.permute([1, 0])  # [D, BLOCK_N] keys contiguous -> [BLOCK_N, D] K-major B operand
    else:
        b_op = v_tile
    if TWO_LEVEL:
        tok = warpgroup_mma(p_op, b_op, gl.zeros([HALF_M, HEAD_DIM], gl.float32, o_layout), use_acc=False,
                            is_async=True)
    else:
        acc = acc * gl.expand_dims(gl.convert_layout(alpha, gl.SliceLayout(1, o_layout), assert_trivial=True), 1)
        tok = warpgroup_mma(p_op, b_op, acc, is_async=True)
    return tok, acc


@_jit
def _pv_finish(tok, p_op, acc, alpha, TWO_LEVEL: gl.constexpr):
    o_layout: gl.constexpr = acc.type.layout
    # p_op is not listed in deps: as a dependency its 8/16-bit elements would go through the wait one by one
    # (unpacked, then repacked with PRMTs); ptxas itself keeps the registers of an in-flight wgmma intact
    pv = warpgroup_mma_wait(0, deps=[tok])
    if TWO_LEVEL:
        a = gl.expand_dims(gl.convert_layout(alpha, gl.SliceLayout(1, o_layout), assert_trivial=True), 1)
        acc = acc * a + pv
    else:
        acc = pv
    return acc


@_jit
def _p_fp8_packed(p, HEAD_DIM: gl.constexpr):
    """p·448 (fp32, wgmma accumulator layout) -> the e4m3 A operand of P·V packed 4 per int32 ([rows, BLOCK_N/4]):
    one 32-bit register per 4 consecutive k of a thread, exactly the registers the FP8 wgmma reads.

    The keys are relabelled so that no value leaves its thread: the accumulator gives thread t of a quad the columns
    16g + 8i + 2t + e (i, e ∈ {0, 1}) of each 16-column group, the FP8 A operand wants 16g + 4t + j (j < 4). Key
    c = 16g + 8i + 2t + e goes to k = 16g + 4t + 2i + e; the transposed V is stored with the same permutation of its
    tokens (``quantize_fp8``). Packed int32 (not e4m3 elements) so that a value carried across the loop edge stays
    in 16 registers (LLVM would carry 64 single bytes and repack them with PRMTs)."""
    HALF_M: gl.constexpr = p.shape[0]
    BLOCK_N: gl.constexpr = p.shape[1]
    x = gl.reshape(p, [HALF_M, BLOCK_N // 16, 2, 4, 2])  # [row, g, i, t, e]
    x = gl.permute(x, [0, 1, 3, 2, 4])  # [row, g, t, i, e]
    x = gl.reshape(x, [HALF_M, BLOCK_N])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, HEAD_DIM, 32])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=4)
    x = gl.convert_layout(x, p_layout)  # register renaming only (checked in SASS: no shuffles)
    x = gl.reshape(x, [HALF_M, BLOCK_N // 4, 2, 2])  # k = 4c + 2u + v
    xa, xb = gl.split(x)  # v = 0, 1
    x0, x2 = gl.split(xa)  # u = 0, 1
    x1, x3 = gl.split(xb)
    # two saturating e4m3x2 conversions and one move per register (byte j = k 4c + j)
    return gl.inline_asm_elementwise(
        "{ .reg .b16 lo, hi;\n"
        "cvt.rn.satfinite.e4m3x2.f32 lo, $2, $1;\n"
        "cvt.rn.satfinite.e4m3x2.f32 hi, $4, $3;\n"
        "mov.b32 $0, {lo, hi}; }",
        "=r,r,r,r,r", [x0, x1, x2, x3], dtype=gl.int32, is_pure=True, pack=1)


@_jit
def _p_fp8_operand(w, HEAD_DIM: gl.constexpr):
    """The packed int32 P of :func:`_p_fp8_packed` as the e4m3 dot operand. Each int32 is repeated 4 times along k
    (same SSA value: free) and an identity ``mov`` (pack 4) returns its 4 bytes as 4 e4m3 elements; LLVM folds that
    unpacking with the wgmma operand's own packing, so no instruction is left in SASS (shifts and masks instead
    were not folded: 2 SHR + 3 PRMT per register)."""
    HALF_M: gl.constexpr = w.shape[0]
    BLOCK_N: gl.constexpr = w.shape[1] * 4
    x = gl.join(w, w)
    x = gl.join(x, x)  # [rows, BLOCK_N/4, 2, 2]
    x = gl.reshape(x, [HALF_M, BLOCK_N])
    x = gl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r,r,r,r", [x], dtype=gl.float8e4nv, is_pure=True, pack=4)
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, HEAD_DIM, 32])
    return gl.convert_layout(x, gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=4))


@_jit
def _round(j, q_tile, k_smem, v_smem, k_ready, k_empty, v_ready, v_empty, pp_bars, acc, m_i, l_i, alpha, p_op,
           scale_q, ks_cur, KS_ROW, INDICES, row_off, n_tiles, bias, limit,
           WG: gl.constexpr, HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr, NUM_STAGES: gl.constexpr,
           PINGPONG: gl.constexpr, MASKED: gl.constexpr, DENSE: gl.constexpr, PV_FP8: gl.constexpr,
           TWO_LEVEL: gl.constexpr, S_INSTR_K: gl.constexpr, QK_INT8: gl.constexpr):
    """Round j ≥ 1: S_j = q·K_jᵀ and P_{j-1}·V_{j-1} issued back to back, the softmax of S_j under the latter."""
    HALF_M: gl.constexpr = q_tile.shape[0]
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, S_INSTR_K])
    if QK_INT8:
        s_dtype: gl.constexpr = gl.int32
    else:
        s_dtype: gl.constexpr = gl.float32
    st = j % NUM_STAGES
    sp = (j - 1) % NUM_STAGES
    if PV_FP8:
        p_mma = _p_fp8_operand(p_op, HEAD_DIM)  # p_op: P_{j-1} packed in int32
    else:
        p_mma = p_op
    # the k scale of the next tile (its latency hides under this round)
    ks_next = gl.load(KS_ROW + _key_block(INDICES, row_off, gl.minimum(j + 1, n_tiles - 1), DENSE))
    mbarrier.wait(k_ready.index(st), (j // NUM_STAGES) & 1)
    _pp_wait(pp_bars, j, WG, PINGPONG)
    s_tok = warpgroup_mma(q_tile, k_smem.index(st).reshape([BLOCK_N, HEAD_DIM]).permute([1, 0]),
                          gl.zeros([HALF_M, BLOCK_N], s_dtype, s_layout), use_acc=False, is_async=True)
    mbarrier.wait(v_ready.index(sp), ((j - 1) // NUM_STAGES) & 1)
    if PV_FP8:
        v_tile = v_smem.index(sp).reshape([HEAD_DIM, BLOCK_N])
    else:
        v_tile = v_smem.index(sp).reshape([BLOCK_N, HEAD_DIM])
    o_tok, acc = _pv_issue(p_mma, v_tile, acc, alpha, HALF_M, HEAD_DIM, PV_FP8, TWO_LEVEL)
    _pp_pass(pp_bars, WG, PINGPONG)
    s = warpgroup_mma_wait(1, deps=[s_tok])  # S_j done; P_{j-1}·V_{j-1} may still run
    mbarrier.arrive(k_empty.index(st), count=1)
    alpha_prev = alpha
    p, m_i, l_i, alpha = _softmax_tile(s, m_i, l_i, scale_q * ks_cur, bias, limit, s_layout, BLOCK_N, MASKED,
                                       QK_INT8)
    acc = _pv_finish(o_tok, p_mma, acc, alpha_prev, TWO_LEVEL)
    mbarrier.arrive(v_empty.index(sp), count=1)
    if PV_FP8:
        p_op = _p_fp8_packed(p, HEAD_DIM)
    else:
        # via the P·V accumulator layout (same registers; its k of 16 lets the cast pack pairs: cvt.rn.bf16x2)
        p = gl.convert_layout(p, p_op.type.layout.parent, assert_trivial=True)
        p_op = gl.convert_layout(p.to(p_op.dtype), p_op.type.layout, assert_trivial=True)
    return acc, m_i, l_i, alpha, p_op, ks_next


@_jit
def _consumer(q_smem, k_smem, v_smem, o_smem, q_bar, k_ready, k_empty, v_ready, v_empty, pp_bars, o_desc,
              COUNTS, INDICES, KV_LEN, QS, KS, VS, H, NQB, NKB, NQS, NKS, qk_scale,
              WG: gl.constexpr, HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
              NUM_STAGES: gl.constexpr, DENSE: gl.constexpr, PINGPONG: gl.constexpr, PV_FP8: gl.constexpr,
              TWO_LEVEL: gl.constexpr, QK_INT8: gl.constexpr):
    """One consumer warpgroup: query rows [WG·64, WG·64 + 64) of the block, every kept key tile of the row."""
    HALF_M: gl.constexpr = BLOCK_M // 2
    S_INSTR_K: gl.constexpr = 32  # FP8 and int8 wgmma: k = 32 per instruction (the lowering checks it)
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, S_INSTR_K])
    if QK_INT8:
        s_dtype: gl.constexpr = gl.int32  # s8·s8 -> s32 wgmma (IGMMA)
    else:
        s_dtype: gl.constexpr = gl.float32
    if PV_FP8:
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, HEAD_DIM, 32])
        p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=4)
        p_dtype: gl.constexpr = gl.float8e4nv
        bias: gl.constexpr = LOG2_P_SCALE  # p·448 straight out of the exp2
    else:
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, HEAD_DIM, 16])
        p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
        p_dtype: gl.constexpr = o_smem.dtype
        bias: gl.constexpr = 0.0
    out_dtype: gl.constexpr = o_smem.dtype

    pid_m = gl.program_id(0)
    pid_bh = gl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    kv_len = gl.load(KV_LEN + b)
    n_tiles, row_off, last_start = _tile_range(COUNTS, INDICES, kv_len, pid_m, pid_bh, NQB, NKB, DENSE, BLOCK_N)
    limit = kv_len - last_start
    partial = (n_tiles > 0) & (limit < BLOCK_N)
    scale_q = gl.load(QS + pid_bh.to(gl.int64) * NQS + pid_m) * qk_scale
    KS_ROW = KS + pid_bh.to(gl.int64) * NKS

    q_tile = q_smem.index(WG).reshape([HALF_M, HEAD_DIM])
    m_i = gl.full([HALF_M], float("-inf"), gl.float32, gl.SliceLayout(1, s_layout))
    l_i = gl.full([HALF_M], 0.0, gl.float32, gl.SliceLayout(1, s_layout))
    acc = gl.zeros([HALF_M, HEAD_DIM], gl.float32, o_layout)

    if n_tiles > 0:
        ks_cur = gl.load(KS_ROW + _key_block(INDICES, row_off, 0, DENSE))
        ks_next = gl.load(KS_ROW + _key_block(INDICES, row_off, gl.minimum(1, n_tiles - 1), DENSE))
        mbarrier.wait(q_bar, 0)
        # ---- round 0: S_0 only (masked: it may also be the partial last tile)
        mbarrier.wait(k_ready.index(0), 0)
        _pp_wait(pp_bars, 0, WG, PINGPONG)
        s_tok = warpgroup_mma(q_tile, k_smem.index(0).reshape([BLOCK_N, HEAD_DIM]).permute([1, 0]),
                              gl.zeros([HALF_M, BLOCK_N], s_dtype, s_layout), use_acc=False, is_async=True)
        _pp_pass(pp_bars, WG, PINGPONG)
        s = warpgroup_mma_wait(0, deps=[s_tok])
        mbarrier.arrive(k_empty.index(0), count=1)
        limit0 = gl.where(partial & (n_tiles == 1), limit, BLOCK_N)
        p, m_i, l_i, alpha = _softmax_tile(s, m_i, l_i, scale_q * ks_cur, bias, limit0, s_layout, BLOCK_N, True,
                                           QK_INT8)
        if PV_FP8:
            p_op = _p_fp8_packed(p, HEAD_DIM)
        else:
            p = gl.convert_layout(p, o_layout, assert_trivial=True)
            p_op = gl.convert_layout(p.to(p_dtype), p_layout, assert_trivial=True)
        ks_cur = ks_next

        n_full = n_tiles - partial.to(gl.int32)
        for j in range(1, n_full):
            acc, m_i, l_i, alpha, p_op, ks_cur = _round(
                j, q_tile, k_smem, v_smem, k_ready, k_empty, v_ready, v_empty, pp_bars, acc, m_i, l_i, alpha, p_op,
                scale_q, ks_cur, KS_ROW, INDICES, row_off, n_tiles, bias, limit, WG, HEAD_DIM, BLOCK_N, NUM_STAGES,
                PINGPONG, False, DENSE, PV_FP8, TWO_LEVEL, S_INSTR_K, QK_INT8)
        if partial & (n_tiles > 1):
            acc, m_i, l_i, alpha, p_op, ks_cur = _round(
                n_tiles - 1, q_tile, k_smem, v_smem, k_ready, k_empty, v_ready, v_empty, pp_bars, acc, m_i, l_i,
                alpha, p_op, scale_q, ks_cur, KS_ROW, INDICES, row_off, n_tiles, bias, limit, WG, HEAD_DIM, BLOCK_N,
                NUM_STAGES, PINGPONG, True, DENSE, PV_FP8, TWO_LEVEL, S_INSTR_K, QK_INT8)

        # ---- round n: the last P·V
        sl = (n_tiles - 1) % NUM_STAGES
        mbarrier.wait(v_ready.index(sl), ((n_tiles - 1) // NUM_STAGES) & 1)
        if PV_FP8:
            # the quantizer wrote zeros past kv_len (and TMA reads zeros past S): nothing to clean
            v_last = v_smem.index(sl).reshape([HEAD_DIM, BLOCK_N])
        else:
            v_last = v_smem.index(sl).reshape([BLOCK_N, HEAD_DIM])
            if partial:
                _zero_rows_from(v_last, limit, BLOCK_N, HEAD_DIM)
        _pp_wait(pp_bars, n_tiles, WG, PINGPONG)
        if PV_FP8:
            p_mma = _p_fp8_operand(p_op, HEAD_DIM)
        else:
            p_mma = p_op
        o_tok, acc = _pv_issue(p_mma, v_last, acc, alpha, HALF_M, HEAD_DIM, PV_FP8, TWO_LEVEL)
        _pp_pass(pp_bars, WG, PINGPONG)
        acc = _pv_finish(o_tok, p_mma, acc, alpha, TWO_LEVEL)
        mbarrier.arrive(v_empty.index(sl), count=1)

    # ---- epilogue: O / l (rows without kept keys: zeros), · scale_v per channel for FP8 P·V
    l_o = gl.convert_layout(l_i, gl.SliceLayout(1, o_layout), assert_trivial=True)
    out = acc / gl.expand_dims(gl.where(l_o > 0.0, l_o, 1.0), 1)
    if PV_FP8:
        offs_d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, o_layout))
        vs = gl.load(VS + pid_bh.to(gl.int64) * HEAD_DIM + offs_d)
        out = out * gl.expand_dims(vs, 0)
    o_tile = o_smem.index(WG)
    o_tile.reshape([HALF_M, HEAD_DIM]).store(out.to(out_dtype))
    fence_async_shared()
    tma.async_copy_shared_to_global(o_desc, [b, pid_m * BLOCK_M + WG * HALF_M, h, 0], o_tile)
    tma.store_wait(0)


@_jit
def _attn_fwd_gluon_fp8(q_desc, k_desc, v_desc, o_desc, COUNTS, INDICES, KV_LEN, QS, KS, VS,
                        H, NQB, NKB, NQS, NKS, qk_scale,
                        HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                        NUM_STAGES: gl.constexpr, DENSE: gl.constexpr, PINGPONG: gl.constexpr,
                        PV_FP8: gl.constexpr, TWO_LEVEL: gl.constexpr, QK_INT8: gl.constexpr,
                        CONSUMER_REGS: gl.constexpr, PRODUCER_REGS: gl.constexpr):
    q_smem = gl.allocate_shared_memory(q_desc.dtype, [2] + q_desc.block_type.shape, q_desc.layout)
    k_smem = gl.allocate_shared_memory(k_desc.dtype, [NUM_STAGES] + k_desc.block_type.shape, k_desc.layout)
    v_smem = gl.allocate_shared_memory(v_desc.dtype, [NUM_STAGES] + v_desc.block_type.shape, v_desc.layout)
    o_smem = gl.allocate_shared_memory(o_desc.dtype, [2] + o_desc.block_type.shape, o_desc.layout)
    q_bar, k_ready, k_empty, v_ready, v_empty, pp_bars = _barriers(NUM_STAGES)

    gl.warp_specialize([
        (_consumer, (q_smem, k_smem, v_smem, o_smem, q_bar, k_ready, k_empty, v_ready, v_empty, pp_bars, o_desc,
                     COUNTS, INDICES, KV_LEN, QS, KS, VS, H, NQB, NKB, NQS, NKS, qk_scale, gl.constexpr(0),
                     HEAD_DIM, BLOCK_M, BLOCK_N, NUM_STAGES, DENSE, PINGPONG, PV_FP8, TWO_LEVEL, QK_INT8)),
        (_consumer, (q_smem, k_smem, v_smem, o_smem, q_bar, k_ready, k_empty, v_ready, v_empty, pp_bars, o_desc,
                     COUNTS, INDICES, KV_LEN, QS, KS, VS, H, NQB, NKB, NQS, NKS, qk_scale, gl.constexpr(1),
                     HEAD_DIM, BLOCK_M, BLOCK_N, NUM_STAGES, DENSE, PINGPONG, PV_FP8, TWO_LEVEL, QK_INT8)),
        (_producer, (q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bar, k_ready, k_empty, v_ready, v_empty,
                     COUNTS, INDICES, KV_LEN, H, NQB, NKB, BLOCK_M, BLOCK_N, NUM_STAGES, DENSE, PV_FP8)),
    ], [4, 1], [CONSUMER_REGS, PRODUCER_REGS])


# ---------------------------------------------------------------------------------------------------------------
# Quantization (the project's kernels; only the transposed v's storage differs) and launcher
# ---------------------------------------------------------------------------------------------------------------

def _pad16(n: int) -> int:
    return -(-n // 16) * 16


@dataclass
class GluonQuantizedQKV(QuantizedQKV):
    """:class:`QuantizedQKV` whose ``v`` is stored for this kernel: [B, H, D, S rounded up to 16], tokens permuted
    within each group of 16 (token 16g + 8i + 2t + e at position 16g + 4t + 2i + e, see ``_p_fp8_packed``),
    positions of tokens ≥ kv_len (and ≥ S) zero. q, k and the scales are exactly ``quantize_triton``'s."""

    v_mma_order: bool = True


def permute_v_tokens(vt: torch.Tensor) -> torch.Tensor:
    """[B, H, D, S] transposed v (natural token order) -> this kernel's order, [B, H, D, S rounded up to 16]
    (torch; for a ``quantized`` from ``quantize_triton`` and for tests)."""
    B, H, D, S = vt.shape
    sp = _pad16(S)
    x = torch.zeros(B, H, D, sp, dtype=vt.dtype, device=vt.device)
    x[..., :S] = vt
    x = x.reshape(B, H, D, sp // 16, 2, 4, 2).permute(0, 1, 2, 3, 5, 4, 6)  # (g, i, t, e) -> (g, t, i, e)
    return x.reshape(B, H, D, sp).contiguous()


def quantize_fp8(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None, kv_len: torch.Tensor,
                 qk_format: str = "e4m3") -> QuantizedQKV:
    """The 8-bit operands of :func:`attention_gluon_fp8`: ``quantize_triton(q, k, v, kv_len, block_m=128,
    block_n=128, qk_format=qk_format)`` (q/k e4m3 or int8), its v (always e4m3) put in this kernel's token order
    (:class:`GluonQuantizedQKV`; one more pass over the 1-byte v)."""
    from .triton_quant import quantize_triton

    if qk_format not in QK_FORMATS:
        raise ValueError(f"qk_format must be one of {QK_FORMATS}, got {qk_format!r}")
    qz = quantize_triton(q, k, v, kv_len, block_m=BLOCK, block_n=BLOCK, qk_format=qk_format)
    return qz if v is None else in_kernel_order(qz)


def in_kernel_order(qz: QuantizedQKV) -> GluonQuantizedQKV:
    """A ``quantize_triton`` result whose transposed v is reordered for this kernel (a copy of v)."""
    return GluonQuantizedQKV(**{**qz.__dict__, "v": permute_v_tokens(qz.v)})


_GL_DTYPES = {}
if _IMPORT_ERROR is None:
    _GL_DTYPES = {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16, FP8_DTYPE: gl.float8e4nv,
                  torch.int8: gl.int8}


def _descriptor(x: torch.Tensor, block: list[int]) -> TensorDescriptor:
    layout = gl.NVMMASharedLayout.get_default_for(block, _GL_DTYPES[x.dtype])
    return TensorDescriptor(x, list(x.shape), list(x.stride()), block, layout)


def make_descriptors(qz: QuantizedQKV, v: torch.Tensor, out: torch.Tensor, pv_fp8: bool):
    """(q, k, v, out) TMA descriptors: q/out [1, 64, 1, D] blocks, k (and bf16 v) [1, 128, 1, D], FP8 v
    [1, 1, D, 128]."""
    D = out.shape[-1]
    half = BLOCK // 2
    q_desc = _descriptor(qz.q, [1, half, 1, D])
    o_desc = _descriptor(out, [1, half, 1, D])
    k_desc = _descriptor(qz.k, [1, BLOCK, 1, D])
    v_desc = _descriptor(qz.v, [1, 1, D, BLOCK]) if pv_fp8 else _descriptor(v, [1, BLOCK, 1, D])  # v: [B,H,D,S16]
    return q_desc, k_desc, v_desc, o_desc


def shared_memory_bytes(head_dim: int, num_stages: int, pv_fp8: bool, out_bytes: int = 2) -> int:
    """Shared memory of one program: fp8 Q (128 rows), the output staging (128 rows), num_stages × (K + V)."""
    v_bytes = 1 if pv_fp8 else out_bytes
    return (BLOCK * head_dim * (1 + out_bytes) + num_stages * BLOCK * head_dim * (1 + v_bytes)
            + 8 * (1 + 4 * num_stages + 2))


def attention_gluon_fp8(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, selection: BlockSelection | None,
                        kv_len: torch.Tensor, *, pv_fp8: bool, config: GluonFP8Config | None = None,
                        quantized: QuantizedQKV | None = None, qk_format: str = "e4m3") -> torch.Tensor:
    """Block-sparse (``selection``) or dense (``selection=None``) attention with q·kᵀ in 8 bits (``qk_format``:
    "e4m3", or "int8" on the s8·s8→s32 wgmma; per-tile scales) and P·V in FP8 (``pv_fp8``) or in v's dtype.
    q/k/v: bf16/fp16 [B, S, H, D] views; kv_len int32 [B] on q's device; returns q's shape and dtype. Operands are
    quantized with :func:`quantize_fp8` (= ``quantize_triton`` with block 128 and ``qk_format``) unless
    ``quantized`` is given (it must have that ``qk_format``, 128-row tiles and, for ``pv_fp8``, hold v; a
    ``quantize_triton`` v is reordered for this kernel, a copy).
    """
    if qk_format not in QK_FORMATS:
        raise ValueError(f"qk_format must be one of {QK_FORMATS}, got {qk_format!r}")
    if not gluon_available():
        raise RuntimeError(f"the Gluon kernel needs triton {_GLUON_VERSION}x with Gluon: {_IMPORT_ERROR!r}")
    cfg = config or GluonFP8Config()
    B, Sq, H, D = q.shape
    why = qkv_refusal(q, k, v)
    if why is None and not pv_fp8 and not tma_addressable(v):
        why = "v needs stride(-1) == 1 and 16-byte aligned base and strides (TMA)"
    if why is not None:
        raise ValueError(why)
    check_launch(q, kv_len, cfg.num_stages)
    out = torch.empty((B, Sq, H, D), dtype=q.dtype, device=q.device)
    if out.numel() == 0 or k.shape[1] == 0:
        return out.zero_()
    check_selection(q, selection)
    _launch(q, k, v, out, selection_args(selection, kv_len), kv_len, cfg, pv_fp8, quantized, qk_format)
    return out


def _launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
            args: tuple[bool, torch.Tensor, torch.Tensor, int, int], kv_len: torch.Tensor, cfg: GluonFP8Config,
            pv_fp8: bool, quantized: QuantizedQKV | None, qk_format: str) -> None:
    """Quantize (unless ``quantized``) and launch on checked, non-empty inputs; ``args`` from ``selection_args``."""
    B, Sq, H, D = q.shape
    qz = quantized if quantized is not None else quantize_fp8(q, k, v if pv_fp8 else None, kv_len, qk_format)
    qk_dtype = torch.int8 if qk_format == "int8" else FP8_DTYPE
    if (qz.block_m != BLOCK or qz.block_n != BLOCK or qz.qk_format != qk_format or qz.q.dtype != qk_dtype
            or qz.k.dtype != qk_dtype or (pv_fp8 and qz.v is None)):
        raise ValueError(f"quantized operands must be {qk_format} (qk_format) with 128-row tiles (and hold v for "
                         f"pv_fp8), got {qz.qk_format} {qz.q.dtype}/{qz.k.dtype}, tiles {qz.block_m}/{qz.block_n}")
    if pv_fp8 and not getattr(qz, "v_mma_order", False):
        qz = in_kernel_order(qz)  # a quantize_triton result
    dense, counts, indices, nqb, nkb = args
    q_desc, k_desc, v_desc, o_desc = make_descriptors(qz, v, out, pv_fp8)
    vs = qz.v_scale if pv_fp8 else qz.q_scale
    grid = (triton.cdiv(Sq, BLOCK), B * H)
    extra = {} if cfg.maxnreg is None else {"maxnreg": cfg.maxnreg}
    _attn_fwd_gluon_fp8[grid](
        q_desc, k_desc, v_desc, o_desc, counts, indices, kv_len, qz.q_scale, qz.k_scale, vs,
        H, nqb, nkb, qz.q_scale.shape[1], qz.k_scale.shape[1], 1.0 / math.sqrt(D) * LOG2E,
        HEAD_DIM=D, BLOCK_M=BLOCK, BLOCK_N=BLOCK, NUM_STAGES=cfg.num_stages, DENSE=dense, PINGPONG=cfg.pingpong,
        PV_FP8=pv_fp8, TWO_LEVEL=cfg.two_level and pv_fp8, QK_INT8=qk_format == "int8",
        CONSUMER_REGS=cfg.consumer_regs,
        PRODUCER_REGS=cfg.producer_regs, num_warps=4, **extra,
    )


# ---------------------------------------------------------------------------------------------------------------
# What the operator runs for precision fp8 / int8 on a ``gluon_device`` (triton_attention_v2.attention_8bit)
# ---------------------------------------------------------------------------------------------------------------

# precision -> q·kᵀ format; P·V stays bf16: FP8 P·V adds ~3 % error on video-like inputs (over issue 21's budget)
QK_FORMAT_OF_PRECISION = {"fp8": "e4m3", "int8": "int8"}


def takes_8bit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_size: int) -> bool:
    """Whether the operator's 8-bit path runs this kernel on these inputs: those ``gluon_takes`` for bf16 (block
    128, head_dim 64/128, TMA-addressable views) in bf16 only (fp16 stays on the Triton 8-bit kernel: not yet
    measured here)."""
    return q.dtype == torch.bfloat16 and gluon_takes(q, k, v, block_size)


# A custom op: one opaque node for torch.compile, capturable by CUDA graphs, like triton_attention_v2's 8-bit op
# (the same arguments: triton_attention_v2.attention_8bit calls whichever of the two runs on the device).
@torch.library.custom_op("xattn_video::attention_8bit_hopper", mutates_args=())
def attention_8bit_hopper(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, counts: torch.Tensor,
                          indices: torch.Tensor, kv_len: torch.Tensor, block_size: int, precision: str,
                          dense: bool) -> torch.Tensor:
    """Precision fp8/int8 attention on a ``gluon_device`` (q·kᵀ in 8 bits, bf16 P·V): this module's kernel where
    :func:`takes_8bit`, else ``triton_attention_v2``'s (the same arithmetic). Dense: counts/indices unused."""
    if not takes_8bit(q, k, v, block_size):  # e.g. fp16, or a view whose strides TMA cannot take
        from .triton_attention_v2 import launch_8bit

        return launch_8bit(q, k, v, None if dense else counts, None if dense else indices, block_size, kv_len,
                           precision)
    out = torch.empty_like(q)
    args = selection_args(None, kv_len) if dense else sparse_args(counts, indices)
    _launch(q, k, v, out, args, kv_len, GluonFP8Config(), False, None, QK_FORMAT_OF_PRECISION[precision])
    return out


@attention_8bit_hopper.register_fake
def _(q, k, v, counts, indices, kv_len, block_size, precision, dense):
    return torch.empty_like(q)


__all__ = ["GluonFP8Config", "GluonQuantizedQKV", "QK_FORMAT_OF_PRECISION", "attention_8bit_hopper",
           "attention_gluon_fp8", "gluon_available", "in_kernel_order", "permute_v_tokens", "quantize_fp8",
           "shared_memory_bytes", "takes_8bit"]
