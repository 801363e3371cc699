"""Block-sparse attention forward for Hopper (sm_90) in Gluon, scheduled like FlashAttention-3.

What the operator runs on a Hopper GPU with triton 3.6 (``block_sparse_attention_hopper`` for ``xattention``'s
bf16/fp16 sparse attention, ``dense_attention_hopper`` for ``dense.dense_attention``; other inputs and devices get
the Triton kernel / SDPA). H100: 1.07-1.10x cuDNN's bf16 rate, sparse and dense (README, "The Hopper kernel").

Why: the Triton kernels (``triton_attention.py``, ``triton_attention_v2.py``) stop at ~0.82-0.85 of cuDNN's rate on
an H100 because Triton 3.6 runs the two MMAs and the softmax of a key tile one after the other (benchmarks/NOTES.md:
~2048 clocks of MMA, ~1024 of exp2 and ~600 of other ALU work per 128×128 step, serialised). FlashAttention-3 hides
the softmax behind the tensor cores with warp specialization and a "ping-pong" between two consumer warpgroups.
Gluon (``triton.experimental.gluon``) exposes the pieces needed to write that schedule by hand: partitions with
their own warps and register budgets, mbarriers, TMA copies and asynchronous wgmma with explicit waits.

Schedule (one program = one 128-row query block of one (batch, head); grid = (query blocks, B·H)):

- Partitions (``gl.warp_specialize``), 12 warps in all:
  * consumer 0 = the default partition (4 warps = warpgroup 0), query rows 0-63 of the block;
  * consumer 1 = worker partition (4 warps, one warpgroup), query rows 64-127;
  * producer   = worker partition (1 warp; the compiler pads it to a warpgroup with 3 idle warps): issues every
    TMA load (the two 64-row Q halves once, then K_j and V_j of each kept key tile j into a ring).
- Register budgets (``setmaxnreg``): producer ``producer_regs`` (24), consumer 1 ``consumer_regs`` (240); consumer 0
  gets what is left of the 64K registers: with 12 warps the kernel starts at 168/thread and
  168·3 − 24 − 240 = 240. A consumer holds O (64×D fp32: 64 regs at D=128), S (64×128 fp32: 64 regs) and P
  (64×128 bf16: 32 regs) at once, so 240 leaves room for the softmax temporaries; the producer only needs scalars.
- Shared memory: Q (2 × 64×D), a ring of ``num_stages`` K tiles and ``num_stages`` V tiles (128×D each), all in
  the NVMMA (wgmma/TMA) swizzled layout; at D=128 bf16: 32 KB + 64 KB/stage (2 stages 160 KB, 3 stages 224 KB).
  The output tile of a consumer is staged in its Q half (free once its last q·kᵀ completed) and written by a TMA
  store, which also clips the rows past the sequence end.
- mbarriers: ``q_bar`` (Q landed), per stage ``k_ready``/``v_ready`` (TMA transaction counts) and
  ``k_empty``/``v_empty`` (count 2: both consumers released the slot). K and V have separate barriers so that
  q·kᵀ of tile j can start before V_j lands and K_j's slot is refilled as soon as both q·kᵀ are done.
- Consumer loop (each warpgroup; FA3's intra-warpgroup overlap): in round j it issues S_j = q·K_jᵀ and then
  O += P_{j-1}·V_{j-1} (both asynchronous), waits only for S_j (``warpgroup_mma_wait(1)``), releases K_j, runs the
  softmax of S_j (exp2) while P_{j-1}·V_{j-1} still runs on the tensor cores, then waits for it and releases V_{j-1}.
  O is rescaled by the previous tile's factor just before its P·V is issued (no extra wait).
- Ping-pong (``pingpong=True``): two mbarriers hand an "issue token" back and forth. A warpgroup waits for the
  token before issuing its round of wgmma's and passes it to the other right after issuing, so the tensor cores
  alternate: WG0's MMAs, WG1's MMAs, WG0's ... and each warpgroup's softmax runs while the other's MMAs execute.
  Both warpgroups run the same number of rounds (n_tiles + 1), so the hand-off never deadlocks. The token only
  orders issue; correctness never depends on it (``pingpong=False`` removes it).
- Masking (spec §3): only the last kept tile can reach past kv_len (indices ascend and no kept block lies wholly
  in the padding), so the loop body is compiled unmasked and the partial last tile runs a second, masked copy of
  the round after the loop (a runtime ``if`` inside the loop became one select per score in SASS, ~18% more
  softmax instructions). Its V rows past kv_len are zeroed in shared memory before its P·V, since padding may
  hold inf/NaN and 0·inf is NaN. TMA fills rows past the tensor's end with zeros. Rows without any kept key block
  get zeros (l = 0 → divide by 1).
- Protocol checked offline: a discrete model of these waits/arrives (stages 1-4, 0-8 tiles, partial last tile,
  ping-pong on/off, random interleavings) never deadlocks and never refills a slot before both consumers
  released it; every config compiles for sm_90a with 0 spills (GPU checks: ``tests/test_kernels_gluon.py``).

Exact online softmax in fp32, exp2 domain, scale 1/√D·log2(e), like ``triton_attention._attend``.

Limits: block size 128 only (selection block = BLOCK_M = BLOCK_N = 128); bf16/fp16; D 64 or 128;
q/k/v must satisfy TMA's alignment (16-byte aligned base and strides, stride(-1) == 1); not persistent (one program
per query block; 384 threads × 168 registers allow 1 program per SM); written against triton 3.6's Gluon API
exactly (``gluon_available()`` is False on any other version).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from .blocks import BlockSelection
from .inputs import normalize_kv_len, tma_addressable

_GLUON_VERSION = "3.6."  # the Gluon API this file is written against (it changes between Triton releases)

try:  # Gluon is experimental: absent from older Triton, different in newer; this module must import anyway
    import triton
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    _IMPORT_ERROR: Exception | None = None
except Exception as exc:  # noqa: BLE001 - any failure means "no Gluon here"
    triton = None  # type: ignore[assignment]
    gluon = None  # type: ignore[assignment]
    _IMPORT_ERROR = exc
else:
    if not triton.__version__.startswith(_GLUON_VERSION):
        _IMPORT_ERROR = ImportError(f"written for triton {_GLUON_VERSION}x, found {triton.__version__}")


def gluon_available() -> bool:
    """True when this Triton has the Gluon API this module was written for (triton 3.6)."""
    return _IMPORT_ERROR is None


def _jit(fn=None, **options):
    # Without the right Gluon the kernels stay plain (never called) functions: importing this module cannot fail.
    if fn is None:
        return lambda f: _jit(f, **options)
    return gluon.jit(fn, **options) if _IMPORT_ERROR is None else fn


@dataclass(frozen=True)
class GluonAttentionConfig:
    """Launch knobs of :func:`attention_gluon` (what a benchmark sweeps)."""

    num_stages: int = 2  # K/V ring depth (D=128 bf16: 2 → 160 KB of shared memory, 3 → 224 KB)
    pingpong: bool = True  # hand the MMA-issue token between the two consumer warpgroups (FA3 ping-pong)
    consumer_regs: int = 240  # setmaxnreg of consumer 1; consumer 0 gets the rest (see the module docstring)
    producer_regs: int = 24  # setmaxnreg of the TMA producer warp(group)
    maxnreg: int | None = None  # registers/thread at kernel entry; None: 64K / 384 threads, rounded down to 8


BLOCK = 128  # query rows and keys per tile; also the only selection block size supported


# ---------------------------------------------------------------------------------------------------------------
# Device code
# ---------------------------------------------------------------------------------------------------------------

@_jit
def _tile_range(COUNTS, INDICES, kv_len, pid_m, pid_bh, NQB, NKB, DENSE: gl.constexpr, BLOCK_N: gl.constexpr):
    """(number of key tiles, offset of this row's index list, first key of the last tile) of one query block."""
    if DENSE:
        n_tiles = gl.cdiv(kv_len, BLOCK_N)
        row_off = pid_bh.to(gl.int64) * 0
        last_start = (n_tiles - 1) * BLOCK_N
    else:
        row = pid_bh.to(gl.int64) * NQB + pid_m
        n_tiles = gl.load(COUNTS + row)
        row_off = row * NKB
        last_start = gl.load(INDICES + row_off + gl.maximum(n_tiles - 1, 0)) * BLOCK_N
    return n_tiles, row_off, last_start


@_jit
def _key_block(INDICES, row_off, j, DENSE: gl.constexpr):
    """Key block (tile index) of the j-th kept tile."""
    if DENSE:
        return j
    return gl.load(INDICES + row_off + j)


@_jit
def _pp_wait(pp_bars, rnd, WG: gl.constexpr, PINGPONG: gl.constexpr):
    """Wait for the MMA-issue token of round ``rnd``. mbarriers start with the phase before phase 0 complete, so
    WG0 waits for parity (rnd&1)^1 (its round 0 passes at once) and WG1 for rnd&1 (its round 0 waits for WG0)."""
    if PINGPONG:
        mbarrier.wait(pp_bars.index(WG), (rnd & 1) ^ (1 - WG))


@_jit
def _pp_pass(pp_bars, WG: gl.constexpr, PINGPONG: gl.constexpr):
    """Hand the token to the other warpgroup (right after this one issued its wgmma's)."""
    if PINGPONG:
        mbarrier.arrive(pp_bars.index(1 - WG), count=1)


@_jit
def _softmax_tile(s, m_i, l_i, qk_scale, limit, s_layout: gl.constexpr, BLOCK_N: gl.constexpr,
                  MASKED: gl.constexpr):
    """Online-softmax update of one tile of raw scores ``s`` (fp32, wgmma layout): P (fp32), m, l, and the factor
    that rescales the accumulator. MASKED: columns ≥ ``limit`` are padding (-inf). A compile-time flag, not a
    runtime branch: LLVM turns a runtime ``if`` around the ``where`` into a select per score (measured in SASS:
    +64 FSEL and +36 ISETP per tile, ~18% of the softmax's instructions), so the unmasked loop must not see it."""
    if MASKED:
        cols = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
        s = gl.where(gl.expand_dims(cols < limit, 0), s, float("-inf"))
    m_new = gl.maximum(m_i, gl.max(s, axis=1) * qk_scale)
    alpha = gl.exp2(m_i - m_new)
    # one FMA per score (qk·scale − m), as the Triton kernels do
    p = gl.exp2(s * qk_scale - gl.expand_dims(m_new, 1))
    l_i = l_i * alpha + gl.sum(p, axis=1)
    return p, m_new, l_i, alpha


@_jit
def _round(j, q_tile, k_smem, v_smem, k_ready, k_empty, v_ready, v_empty, pp_bars, acc, m_i, l_i, alpha, p_op,
           qk_scale, limit, WG: gl.constexpr, HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr,
           NUM_STAGES: gl.constexpr, PINGPONG: gl.constexpr, MASKED: gl.constexpr):
    """Round j ≥ 1 of a consumer: S_j = q·K_jᵀ and O += P_{j-1}·V_{j-1} issued back to back (asynchronous), then the
    softmax of S_j while P_{j-1}·V_{j-1} still runs on the tensor cores (FA3's intra-warpgroup overlap)."""
    HALF_M: gl.constexpr = q_tile.shape[0]
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = acc.type.layout
    st = j % NUM_STAGES
    sp = (j - 1) % NUM_STAGES
    mbarrier.wait(k_ready.index(st), (j // NUM_STAGES) & 1)
    _pp_wait(pp_bars, j, WG, PINGPONG)
    # use_acc=False: the zeros are never materialised (HGMMA with RZ as its C operand)
    s_tok = warpgroup_mma(q_tile, k_smem.index(st).reshape([BLOCK_N, HEAD_DIM]).permute([1, 0]),
                          gl.zeros([HALF_M, BLOCK_N], gl.float32, s_layout), use_acc=False, is_async=True)
    mbarrier.wait(v_ready.index(sp), ((j - 1) // NUM_STAGES) & 1)
    # the previous tile's rescale, just before its P·V (O is not in flight here)
    acc = acc * gl.expand_dims(gl.convert_layout(alpha, gl.SliceLayout(1, o_layout), assert_trivial=True), 1)
    o_tok = warpgroup_mma(p_op, v_smem.index(sp).reshape([BLOCK_N, HEAD_DIM]), acc, is_async=True)
    _pp_pass(pp_bars, WG, PINGPONG)
    s = warpgroup_mma_wait(1, deps=[s_tok])  # S_j done; P_{j-1}·V_{j-1} may still run
    mbarrier.arrive(k_empty.index(st), count=1)
    p, m_i, l_i, alpha = _softmax_tile(s, m_i, l_i, qk_scale, limit, s_layout, BLOCK_N, MASKED)
    acc = warpgroup_mma_wait(0, deps=[o_tok])
    mbarrier.arrive(v_empty.index(sp), count=1)
    p_op = gl.convert_layout(p.to(p_op.dtype), p_op.type.layout, assert_trivial=True)
    return acc, m_i, l_i, alpha, p_op


@_jit
def _zero_rows_from(tile, limit, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr):
    """Zero rows ≥ limit of a [BLOCK_N, HEAD_DIM] shared tile (V's padding keys: 0·inf would be NaN in P·V).

    Both consumers may do this on the same tile; they write the same zeros, so the overlap is harmless."""
    layout: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
    x = tile.load(layout)
    rows = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, layout))
    x = gl.where(gl.expand_dims(rows < limit, 1), x, gl.zeros_like(x))
    tile.store(x)
    # generic-proxy stores read next by wgmma (async proxy)
    fence_async_shared()


@_jit
def _consumer(q_smem, k_smem, v_smem, q_bar, k_ready, k_empty, v_ready, v_empty, pp_bars, o_desc,
              COUNTS, INDICES, KV_LEN, H, NQB, NKB, qk_scale,
              WG: gl.constexpr, HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
              NUM_STAGES: gl.constexpr, DENSE: gl.constexpr, PINGPONG: gl.constexpr):
    """One consumer warpgroup: query rows [WG·64, WG·64 + 64) of the block, every key tile of the row."""
    HALF_M: gl.constexpr = BLOCK_M // 2
    # wgmma accumulators: m64 per warpgroup (4 warps along M), n = the whole tile
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    # P as the register A operand of P·V (k_width 2: two 16-bit values per 32-bit register)
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    dtype: gl.constexpr = q_smem.dtype

    pid_m = gl.program_id(0)
    pid_bh = gl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    kv_len = gl.load(KV_LEN + b)
    n_tiles, _, last_start = _tile_range(COUNTS, INDICES, kv_len, pid_m, pid_bh, NQB, NKB, DENSE, BLOCK_N)
    # only the last tile can reach past kv_len; limit = its valid keys
    limit = kv_len - last_start
    partial = (n_tiles > 0) & (limit < BLOCK_N)

    q_tile = q_smem.index(WG).reshape([HALF_M, HEAD_DIM])
    m_i = gl.full([HALF_M], float("-inf"), gl.float32, gl.SliceLayout(1, s_layout))
    l_i = gl.full([HALF_M], 0.0, gl.float32, gl.SliceLayout(1, s_layout))
    acc = gl.zeros([HALF_M, HEAD_DIM], gl.float32, o_layout)

    if n_tiles > 0:
        mbarrier.wait(q_bar, 0)
        # ---- round 0: S_0 only. Masked when it is also the (partial) last tile: a runtime limit here costs one
        # select per score once per program, not per tile.
        mbarrier.wait(k_ready.index(0), 0)
        _pp_wait(pp_bars, 0, WG, PINGPONG)
        s_tok = warpgroup_mma(q_tile, k_smem.index(0).reshape([BLOCK_N, HEAD_DIM]).permute([1, 0]),
                              gl.zeros([HALF_M, BLOCK_N], gl.float32, s_layout), use_acc=False, is_async=True)
        _pp_pass(pp_bars, WG, PINGPONG)
        s = warpgroup_mma_wait(0, deps=[s_tok])
        mbarrier.arrive(k_empty.index(0), count=1)
        limit0 = gl.where(partial & (n_tiles == 1), limit, BLOCK_N)
        p, m_i, l_i, alpha = _softmax_tile(s, m_i, l_i, qk_scale, limit0, s_layout, BLOCK_N, True)
        p_op = gl.convert_layout(p.to(dtype), p_layout, assert_trivial=True)

        # ---- rounds 1 … n_full-1 unmasked, then the partial last tile (if any, and not tile 0) masked
        n_full = n_tiles - partial.to(gl.int32)
        for j in range(1, n_full):
            acc, m_i, l_i, alpha, p_op = _round(j, q_tile, k_smem, v_smem, k_ready, k_empty, v_ready, v_empty,
                                                pp_bars, acc, m_i, l_i, alpha, p_op, qk_scale, limit, WG, HEAD_DIM,
                                                BLOCK_N, NUM_STAGES, PINGPONG, False)
        if partial & (n_tiles > 1):
            acc, m_i, l_i, alpha, p_op = _round(n_tiles - 1, q_tile, k_smem, v_smem, k_ready, k_empty, v_ready,
                                                v_empty, pp_bars, acc, m_i, l_i, alpha, p_op, qk_scale, limit, WG,
                                                HEAD_DIM, BLOCK_N, NUM_STAGES, PINGPONG, True)

        # ---- round n: the last P·V
        sl = (n_tiles - 1) % NUM_STAGES
        mbarrier.wait(v_ready.index(sl), ((n_tiles - 1) // NUM_STAGES) & 1)
        v_last = v_smem.index(sl).reshape([BLOCK_N, HEAD_DIM])
        if partial:
            _zero_rows_from(v_last, limit, BLOCK_N, HEAD_DIM)
        acc = acc * gl.expand_dims(gl.convert_layout(alpha, gl.SliceLayout(1, o_layout), assert_trivial=True), 1)
        _pp_wait(pp_bars, n_tiles, WG, PINGPONG)
        o_tok = warpgroup_mma(p_op, v_last, acc, is_async=True)
        _pp_pass(pp_bars, WG, PINGPONG)
        acc = warpgroup_mma_wait(0, deps=[o_tok])
        mbarrier.arrive(v_empty.index(sl), count=1)

    # ---- epilogue: O / l (rows without kept keys: l = 0 → zeros), staged in this warpgroup's (free) Q half
    l_o = gl.convert_layout(l_i, gl.SliceLayout(1, o_layout), assert_trivial=True)
    out = acc / gl.expand_dims(gl.where(l_o > 0.0, l_o, 1.0), 1)
    q_tile.store(out.to(dtype))
    fence_async_shared()
    tma.async_copy_shared_to_global(o_desc, [b, pid_m * BLOCK_M + WG * HALF_M, h, 0], q_smem.index(WG))
    tma.store_wait(0)


@_jit
def _producer(q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bar, k_ready, k_empty, v_ready, v_empty,
              COUNTS, INDICES, KV_LEN, H, NQB, NKB,
              BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, NUM_STAGES: gl.constexpr, DENSE: gl.constexpr,
              V_TRANSPOSED: gl.constexpr):
    """TMA producer (1 warp): both Q halves once, then K_j, V_j of every key tile into the ring. V_TRANSPOSED (the
    8-bit kernel's FP8 P·V): v is [B, H, D, S] and its tiles are [D, BLOCK_N]."""
    HALF_M: gl.constexpr = BLOCK_M // 2
    pid_m = gl.program_id(0)
    pid_bh = gl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    kv_len = gl.load(KV_LEN + b)
    n_tiles, row_off, _ = _tile_range(COUNTS, INDICES, kv_len, pid_m, pid_bh, NQB, NKB, DENSE, BLOCK_N)
    if n_tiles > 0:  # the consumers wait for Q only then (a TMA still in flight at exit would be an error)
        mbarrier.expect(q_bar, 2 * q_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(q_desc, [b, pid_m * BLOCK_M, h, 0], q_bar, q_smem.index(0))
        tma.async_copy_global_to_shared(q_desc, [b, pid_m * BLOCK_M + HALF_M, h, 0], q_bar, q_smem.index(1))
    for j in range(n_tiles):
        st = j % NUM_STAGES
        phase = (j // NUM_STAGES) & 1
        key_start = _key_block(INDICES, row_off, j, DENSE) * BLOCK_N
        # slots start free: the first wait on an "empty" barrier is for the (complete) phase before phase 0
        mbarrier.wait(k_empty.index(st), phase ^ 1)
        mbarrier.expect(k_ready.index(st), k_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(k_desc, [b, key_start, h, 0], k_ready.index(st), k_smem.index(st))
        mbarrier.wait(v_empty.index(st), phase ^ 1)
        mbarrier.expect(v_ready.index(st), v_desc.block_type.nbytes)
        if V_TRANSPOSED:
            tma.async_copy_global_to_shared(v_desc, [b, h, 0, key_start], v_ready.index(st), v_smem.index(st))
        else:
            tma.async_copy_global_to_shared(v_desc, [b, key_start, h, 0], v_ready.index(st), v_smem.index(st))


@_jit
def _barriers(NUM_STAGES: gl.constexpr):
    """The kernels' mbarriers, initialised: Q loaded; K/V slot ready (the producer's TMA) and empty (released by
    both consumers) per ring stage; the two ping-pong tokens."""
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    k_empty = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    v_empty = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    pp_bars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    for i in gl.static_range(NUM_STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(k_empty.index(i), count=2)  # released by both consumers
        mbarrier.init(v_empty.index(i), count=2)
    mbarrier.init(pp_bars.index(0), count=1)
    mbarrier.init(pp_bars.index(1), count=1)
    # order the (generic-proxy) initialisations before the TMA engine's complete_tx on these barriers
    fence_async_shared()
    return q_bar, k_ready, k_empty, v_ready, v_empty, pp_bars


# Sizes are not specialised on (a new compilation for every divisibility class of the block counts otherwise).
@_jit(do_not_specialize=["H", "NQB", "NKB"])
def _attn_fwd_gluon(q_desc, k_desc, v_desc, o_desc, COUNTS, INDICES, KV_LEN, H, NQB, NKB, qk_scale,
                    HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                    NUM_STAGES: gl.constexpr, DENSE: gl.constexpr, PINGPONG: gl.constexpr,
                    CONSUMER_REGS: gl.constexpr, PRODUCER_REGS: gl.constexpr):
    # Q halves [2, 1, 64, 1, D] (also the output staging), K/V rings [stages, 1, 128, 1, D]: TMA block shapes
    q_smem = gl.allocate_shared_memory(q_desc.dtype, [2] + q_desc.block_type.shape, q_desc.layout)
    k_smem = gl.allocate_shared_memory(k_desc.dtype, [NUM_STAGES] + k_desc.block_type.shape, k_desc.layout)
    v_smem = gl.allocate_shared_memory(v_desc.dtype, [NUM_STAGES] + v_desc.block_type.shape, v_desc.layout)
    q_bar, k_ready, k_empty, v_ready, v_empty, pp_bars = _barriers(NUM_STAGES)

    # worker partitions take no distributed tensors: smem descriptors, TMA descriptors and scalars only
    gl.warp_specialize([
        (_consumer, (q_smem, k_smem, v_smem, q_bar, k_ready, k_empty, v_ready, v_empty, pp_bars, o_desc,
                     COUNTS, INDICES, KV_LEN, H, NQB, NKB, qk_scale, gl.constexpr(0), HEAD_DIM, BLOCK_M, BLOCK_N,
                     NUM_STAGES, DENSE, PINGPONG)),  # default partition: num_warps (4) warps
        (_consumer, (q_smem, k_smem, v_smem, q_bar, k_ready, k_empty, v_ready, v_empty, pp_bars, o_desc,
                     COUNTS, INDICES, KV_LEN, H, NQB, NKB, qk_scale, gl.constexpr(1), HEAD_DIM, BLOCK_M, BLOCK_N,
                     NUM_STAGES, DENSE, PINGPONG)),
        (_producer, (q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bar, k_ready, k_empty, v_ready, v_empty,
                     COUNTS, INDICES, KV_LEN, H, NQB, NKB, BLOCK_M, BLOCK_N, NUM_STAGES, DENSE, False)),
    ], [4, 1], [CONSUMER_REGS, PRODUCER_REGS])


# ---------------------------------------------------------------------------------------------------------------
# Launcher
# ---------------------------------------------------------------------------------------------------------------

def qkv_refusal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str | None:
    """Why the kernels of this module (and ``gluon_attention_fp8``) cannot take q/k/v [B, S, H, D] (one line), or
    None: the dtypes, the head_dim and the shapes they are built for."""
    B, _, H, D = q.shape
    if q.dtype not in (torch.bfloat16, torch.float16) or k.dtype != q.dtype or v.dtype != q.dtype:
        return f"q/k/v must all be bf16 or fp16, got {q.dtype}, {k.dtype}, {v.dtype}"
    if D not in (64, 128):
        return f"head_dim must be 64 or 128, got {D}"
    if k.shape != v.shape or k.shape[0] != B or k.shape[2] != H or k.shape[3] != D:
        return f"k/v shape {tuple(k.shape)}/{tuple(v.shape)} does not match q {tuple(q.shape)}"
    return None


def check_launch(q: torch.Tensor, kv_len: torch.Tensor, num_stages: int) -> None:
    """``ValueError`` for launch arguments the kernels cannot use: the ring depth, kv_len."""
    if num_stages < 1:
        raise ValueError("num_stages must be >= 1")
    if kv_len.dtype != torch.int32 or kv_len.shape != (q.shape[0],) or kv_len.device != q.device:
        raise ValueError("kv_len must be int32 [B] on q's device")


def check_selection(q: torch.Tensor, selection: BlockSelection | None) -> None:
    """``ValueError`` for a selection the kernels cannot use: another block size, too few query blocks."""
    if selection is not None and selection.block_size != BLOCK:
        raise ValueError(f"the Gluon kernel supports block_size {BLOCK} only, got {selection.block_size}")
    if selection is not None and selection.counts.shape[2] < triton.cdiv(q.shape[1], BLOCK):
        raise ValueError(f"selection has {selection.counts.shape[2]} query blocks, q needs "
                         f"{triton.cdiv(q.shape[1], BLOCK)}")


def sparse_args(counts: torch.Tensor, indices: torch.Tensor) -> tuple[bool, torch.Tensor, torch.Tensor, int, int]:
    """(dense, counts, indices, query blocks, key blocks) as the kernels take a selection's contiguous lists."""
    return False, counts, indices, counts.shape[2], indices.shape[3]


def selection_args(selection: BlockSelection | None, kv_len: torch.Tensor) -> tuple[bool, torch.Tensor, torch.Tensor,
                                                                                   int, int]:
    """:func:`sparse_args` of ``selection``; dense (None): kv_len stands in for the unused index lists."""
    if selection is None:
        return True, kv_len, kv_len, 0, 0
    return sparse_args(selection.counts.contiguous(), selection.indices.contiguous())


def _descriptor(x: torch.Tensor, rows: int) -> TensorDescriptor:
    """4-D TMA descriptor over a [B, S, H, D] view with block [1, rows, 1, D] (rows past S read as zeros and are
    clipped on stores)."""
    gdt = gl.bfloat16 if x.dtype == torch.bfloat16 else gl.float16
    block = [1, rows, 1, x.shape[-1]]
    layout = gl.NVMMASharedLayout.get_default_for(block, gdt)
    return TensorDescriptor(x, list(x.shape), list(x.stride()), block, layout)


def shared_memory_bytes(head_dim: int, num_stages: int, elem_bytes: int = 2) -> int:
    """Shared memory one program asks for: Q (128 rows) + num_stages × (K + V) tiles + barriers."""
    return (BLOCK + 2 * num_stages * BLOCK) * head_dim * elem_bytes + 8 * (1 + 4 * num_stages + 2)


def attention_gluon(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, selection: BlockSelection | None,
                    kv_len: torch.Tensor, *, config: GluonAttentionConfig | None = None) -> torch.Tensor:
    """Block-sparse (``selection``) or dense (``selection=None``: every key tile below kv_len) attention.

    Same contract as ``triton_attention_v2.attention_v2`` in bf16/fp16: q/k/v [B, S, H, D] views (stride(-1) == 1),
    kv_len int32 [B] on q's device; returns a new tensor of q's shape and dtype. Needs a Hopper GPU and triton 3.6.
    """
    if not gluon_available():
        raise RuntimeError(f"the Gluon kernel needs triton {_GLUON_VERSION}x with Gluon: {_IMPORT_ERROR!r}")
    cfg = config or GluonAttentionConfig()
    why = qkv_refusal(q, k, v)
    if why is None and not all(tma_addressable(x) for x in (q, k, v)):
        why = "q/k/v need stride(-1) == 1 and 16-byte aligned base and strides (TMA)"
    if why is not None:
        raise ValueError(why)
    check_launch(q, kv_len, cfg.num_stages)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if out.numel() == 0 or k.shape[1] == 0:
        return out.zero_()
    check_selection(q, selection)
    _launch(q, k, v, out, selection_args(selection, kv_len), kv_len, cfg)
    return out


def _launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
            args: tuple[bool, torch.Tensor, torch.Tensor, int, int], kv_len: torch.Tensor,
            cfg: GluonAttentionConfig) -> None:
    """Launch on checked inputs; ``args`` from :func:`selection_args`."""
    B, Sq, H, D = q.shape
    dense, counts, indices, nqb, nkb = args
    half = BLOCK // 2
    q_desc, o_desc = _descriptor(q, half), _descriptor(out, half)
    k_desc, v_desc = _descriptor(k, BLOCK), _descriptor(v, BLOCK)
    grid = (triton.cdiv(Sq, BLOCK), B * H)
    extra = {} if cfg.maxnreg is None else {"maxnreg": cfg.maxnreg}
    _attn_fwd_gluon[grid](
        q_desc, k_desc, v_desc, o_desc, counts, indices, kv_len, H, nqb, nkb,
        1.0 / math.sqrt(D) * 1.4426950408889634,
        HEAD_DIM=D, BLOCK_M=BLOCK, BLOCK_N=BLOCK, NUM_STAGES=cfg.num_stages, DENSE=dense,
        PINGPONG=cfg.pingpong, CONSUMER_REGS=cfg.consumer_regs, PRODUCER_REGS=cfg.producer_regs,
        num_warps=4, **extra,
    )


# ---------------------------------------------------------------------------------------------------------------
# What the operator runs (api.py): the kernel where it can run, the Triton kernel elsewhere
# ---------------------------------------------------------------------------------------------------------------

HOPPER_CAPABILITY = (9, 0)  # wgmma, TMA and setmaxnreg as used here exist on sm_90 only (not on Blackwell)


@functools.lru_cache(maxsize=None)
def _is_hopper(device_index: int) -> bool:
    return torch.cuda.get_device_capability(device_index) == HOPPER_CAPABILITY


# torch.compile evaluates it once while tracing instead of breaking the graph on it.
@torch.compiler.assume_constant_result
def gluon_device(device_index: int) -> bool:
    """True when CUDA device ``device_index`` can run the kernel: a Hopper GPU and triton 3.6 with Gluon."""
    return gluon_available() and _is_hopper(device_index)


def device_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def gluon_takes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_size: int) -> bool:
    """Whether :func:`attention_gluon` runs these inputs (dtype, head_dim, block size, TMA alignment), on a device
    where ``gluon_device`` holds. Alignment belongs to the storage, so it is checked when the op runs."""
    return (block_size == BLOCK and q.numel() > 0 and k.shape[1] > 0 and qkv_refusal(q, k, v) is None
            and all(tma_addressable(x) for x in (q, k, v)))


# A custom op: one opaque node for torch.compile, capturable by CUDA graphs, like the Triton kernel's.
@torch.library.custom_op("xattn_video::block_sparse_attention_hopper", mutates_args=())
def _hopper_sparse_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, counts: torch.Tensor,
                      indices: torch.Tensor, kv_len: torch.Tensor, block_size: int) -> torch.Tensor:
    out = torch.empty_like(q)
    if gluon_takes(q, k, v, block_size):
        _launch(q, k, v, out, sparse_args(counts, indices), kv_len, GluonAttentionConfig())
    else:  # e.g. a view whose strides TMA cannot take
        from . import triton_attention

        triton_attention._launch(q, k, v, counts, indices, kv_len, block_size, out, None)
    return out


@_hopper_sparse_op.register_fake
def _(q, k, v, counts, indices, kv_len, block_size):
    return torch.empty_like(q)


@torch.library.custom_op("xattn_video::dense_attention_hopper", mutates_args=())
def _hopper_dense_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lens: list[int]) -> torch.Tensor:
    if not gluon_takes(q, k, v, BLOCK):  # e.g. a view whose strides TMA cannot take
        from .dense import sdpa_dense

        return sdpa_dense(q, k, v, lens, None)
    out = torch.empty_like(q)
    kv_len = normalize_kv_len(lens, q.shape[0], k.shape[1], q.device)  # a cached device constant per lengths
    _launch(q, k, v, out, selection_args(None, kv_len), kv_len, GluonAttentionConfig())
    return out


@_hopper_dense_op.register_fake
def _(q, k, v, lens):
    return torch.empty_like(q)


def dense_attention_hopper(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lens: list[int]) -> torch.Tensor:
    """Softmax attention over the first ``lens[b]`` keys (host ints) on a ``gluon_device``, scale 1/√D: this
    module's kernel in dense mode where ``gluon_takes`` the inputs, else SDPA. q [B, Sq, H, D], k/v [B, Sk, H, D]."""
    return _hopper_dense_op(q, k, v, list(lens))


def block_sparse_attention_hopper(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, selection: BlockSelection,
                                  kv_len: torch.Tensor) -> torch.Tensor:
    """The operator's bf16/fp16 block-sparse attention on a ``gluon_device``: this module's kernel where
    ``gluon_takes`` the inputs, else the Triton kernel (``triton_attention``). q/k/v [B, S, H, D] views."""
    return _hopper_sparse_op(q, k, v, selection.counts.contiguous(), selection.indices.contiguous(), kv_len,
                             selection.block_size)


__all__ = ["GluonAttentionConfig", "attention_gluon", "block_sparse_attention_hopper", "dense_attention_hopper",
           "check_launch", "check_selection", "device_index", "gluon_available", "gluon_device", "gluon_takes",
           "qkv_refusal", "selection_args", "shared_memory_bytes", "sparse_args"]
