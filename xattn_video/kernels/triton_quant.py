"""8-bit quantization of q and k (e4m3 or int8) and of v (e4m3) for ``triton_attention_v2`` (issue 21).

Per (batch, head) and per tile of rows, q and k are scaled into e4m3's range by one float32 scale per tile
(``amax / 448``; int8: ``amax / 127`` and rounding to the nearest integer, ties to even): the attention kernel
multiplies the tile's QKᵀ by ``scale_q · scale_k`` in the same FMA that applies 1/√D, so a scale per kernel tile
costs nothing. The quantization tile of q is the kernel's BLOCK_M, that
of k its BLOCK_N.

K is smoothed first (SageAttention): k ← k − mean over the valid tokens of k (one vector per batch and head).
That subtracts q·mean from every score of a query row, a constant per row, which softmax ignores: exact before
rounding, and it takes the large shared component of video keys out of the per-tile amax, so the part that
varies keeps more of e4m3's 3 mantissa bits.

V (only for the FP8 P·V variant) gets one scale per (batch, head, channel) over the valid tokens and is stored
transposed, [B, H, D, S] (tokens contiguous): Hopper's FP8 tensor-core instruction needs both operands K-major,
and for P·V the reduction runs over tokens.

Padding rows (positions ≥ kv_len for k/v, ≥ Sq for q) are written as zeros and never enter a scale, so whatever
they hold (inf, NaN) cannot matter. Non-finite values in valid rows stay non-finite through the quantization
(their tile's or channel's scale turns infinite or NaN), so they poison the output as dense attention would;
exactly which rows a bad value reaches can differ from the bf16 kernel (a NaN key poisons the mean, so every
row of its batch and head).

``quantize_reference`` is the torch version of the same arithmetic (for tests on any device).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

FP8_MAX = 448.0  # largest finite e4m3 (float8_e4m3fn) value
INT8_MAX = 127.0
QK_FORMATS = ("e4m3", "int8")
FP8_DTYPE = torch.float8_e4m3fn
P_SCALE = 448.0  # the FP8 P·V variant multiplies probabilities in [0, 1] by this before the cast


@dataclass
class QuantizedQKV:
    """Operands of the FP8 kernels. Scales are float32, flat per (batch·head)."""

    q: torch.Tensor  # fp8 [B, Sq, H, D]
    q_scale: torch.Tensor  # [B*H, ceil(Sq / block_m)]
    k: torch.Tensor  # fp8 [B, Sk, H, D], smoothed
    k_scale: torch.Tensor  # [B*H, ceil(Sk / block_n)]
    k_mean: torch.Tensor  # float32 [B, H, D] (what was subtracted; kept for tests)
    block_m: int
    block_n: int
    qk_format: str = "e4m3"  # "e4m3" (float8_e4m3fn, scale amax/448) or "int8" (rounded, scale amax/127)
    v: torch.Tensor | None = None  # fp8 [B, H, D, Sk] (tokens contiguous), or None: v stays in its dtype
    v_scale: torch.Tensor | None = None  # float32 [B*H, D]


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# ---------------------------------------------------------------------------------------------------------------
# Torch reference
# ---------------------------------------------------------------------------------------------------------------

def _valid_rows(length: int, kv: torch.Tensor | int, batch: int, device: torch.device) -> torch.Tensor:
    """bool [B, S, 1, 1]: rows below the valid length of each batch entry."""
    lens = kv if isinstance(kv, torch.Tensor) else torch.full((batch,), int(kv), device=device)
    pos = torch.arange(length, device=device)
    return (pos[None, :] < lens.to(device=device, dtype=torch.int64)[:, None])[:, :, None, None]


def _quant_tiles_ref(x: torch.Tensor, valid: torch.Tensor, block: int,
                     fmt: str = "e4m3") -> tuple[torch.Tensor, torch.Tensor]:
    """x float32 [B, S, H, D] (invalid rows already zero) -> (fp8/int8 [B, S, H, D], scale [B*H, nblk])."""
    top = FP8_MAX if fmt == "e4m3" else INT8_MAX
    B, S, H, D = x.shape
    nblk = _cdiv(S, block)
    pad = nblk * block - S
    xp = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, pad))
    tiles = xp.reshape(B, nblk, block, H, D)
    ax = tiles.abs()
    amax = torch.where(torch.isnan(ax), torch.inf, ax).amax(dim=(2, 4))  # [B, nblk, H]; a NaN -> inf
    # tensor / tensor (a float / tensor is computed as float · reciprocal(tensor): another rounding)
    inv = torch.where(amax > 0, torch.full_like(amax, top) / amax, torch.zeros_like(amax))
    scale = amax / top
    y = tiles * inv[:, :, None, :, None]
    y = y.to(FP8_DTYPE) if fmt == "e4m3" else torch.round(y).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    y = y.reshape(B, nblk * block, H, D)[:, :S]
    return y, scale.permute(0, 2, 1).reshape(B * H, nblk).contiguous()


def quantize_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None, kv_len: torch.Tensor | int,
                       *, block_m: int, block_n: int, qk_format: str = "e4m3") -> QuantizedQKV:
    """Torch version of :func:`quantize_triton` (same arithmetic, float32 throughout)."""
    B, Sq, H, D = q.shape
    Sk = k.shape[1]
    qv = _valid_rows(Sq, Sq, B, q.device)
    kvv = _valid_rows(Sk, kv_len, B, q.device)
    qf = torch.where(qv, q.float(), 0.0)
    kf = torch.where(kvv, k.float(), 0.0)
    count = kvv.sum(dim=1, dtype=torch.float32)  # [B, 1, 1]
    mean = kf.sum(dim=1) / count.clamp_min(1.0)  # [B, H, D]
    ks = torch.where(kvv, kf - mean[:, None], 0.0)
    q8, qs = _quant_tiles_ref(qf, qv, block_m, qk_format)
    k8, kscale = _quant_tiles_ref(ks, kvv, block_n, qk_format)
    out = QuantizedQKV(q=q8, q_scale=qs, k=k8, k_scale=kscale, k_mean=mean, block_m=block_m, block_n=block_n,
                       qk_format=qk_format)
    if v is not None:
        vf = torch.where(kvv, v.float(), 0.0)
        av = vf.abs()
        amax = torch.where(torch.isnan(av), torch.inf, av).amax(dim=1)  # [B, H, D]
        scale = amax / FP8_MAX
        inv = torch.where(scale > 0, torch.ones_like(scale) / scale, torch.zeros_like(scale))
        v8 = (vf * inv[:, None]).to(FP8_DTYPE)  # [B, Sk, H, D]
        out.v = v8.permute(0, 2, 3, 1).contiguous()  # [B, H, D, Sk]
        out.v_scale = scale.reshape(B * H, D).contiguous()
    return out


def dequantize_qk(qz: QuantizedQKV) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 q and (smoothed) k back from a :class:`QuantizedQKV` ([B, S, H, D]); for tests and error studies."""
    def deq(x8: torch.Tensor, scale: torch.Tensor, block: int) -> torch.Tensor:
        B, S, H, D = x8.shape
        s = scale.reshape(B, H, -1).permute(0, 2, 1).repeat_interleave(block, dim=1)[:, :S]  # [B, S, H]
        return x8.float() * s[..., None]

    return deq(qz.q, qz.q_scale, qz.block_m), deq(qz.k, qz.k_scale, qz.block_n)


# ---------------------------------------------------------------------------------------------------------------
# Triton kernels
# ---------------------------------------------------------------------------------------------------------------

@triton.jit(do_not_specialize=["NBLK"])
def _stats_kernel(K, V, KSUM, VMAX, KV_LEN,
                  stride_kb, stride_ks, stride_kh, stride_kd,
                  stride_vb, stride_vs, stride_vh, stride_vd,
                  H, NBLK,
                  HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr, WITH_V: tl.constexpr):
    """Per (row tile, batch·head): sum of the valid k rows and amax of the valid v rows, per channel."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    n = tl.load(KV_LEN + b)
    rows = pid * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, HEAD_DIM)
    ok = rows[:, None] < n
    kp = K + b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh + rows[:, None].to(tl.int64) * stride_ks \
        + offs_d[None, :] * stride_kd
    k = tl.load(kp, mask=ok, other=0.0).to(tl.float32)
    tl.store(KSUM + (bh.to(tl.int64) * NBLK + pid) * HEAD_DIM + offs_d, tl.sum(k, axis=0))
    if WITH_V:
        vp = V + b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh + rows[:, None].to(tl.int64) * stride_vs \
            + offs_d[None, :] * stride_vd
        v = tl.abs(tl.load(vp, mask=ok, other=0.0).to(tl.float32))
        v = tl.where(v == v, v, float("inf"))  # NaN -> inf: the channel's scale turns infinite, its values NaN
        tl.store(VMAX + (bh.to(tl.int64) * NBLK + pid) * HEAD_DIM + offs_d, tl.max(v, axis=0))


FP8_MAX_T = tl.constexpr(FP8_MAX)
INT8_MAX_T = tl.constexpr(INT8_MAX)


@triton.jit
def round_e4m3(x):
    """x (float32, |x| <= 448) rounded to the nearest e4m3 value, ties to even, still float32.

    The GPU's conversion instruction rounds this way by itself; Triton's CPU interpreter does not (it rounds
    31.9 to 16 and 17 to 18), so interpreted kernels round first and then cast exactly."""
    bits = x.to(tl.int32, bitcast=True)
    rb = (bits + 0x7FFFF + ((bits >> 20) & 1)) & -0x100000  # 3 mantissa bits kept, ties to even (normal range)
    normal = rb.to(tl.float32, bitcast=True)
    sub = (tl.abs(x) + 24576.0) - 24576.0  # below 2^-6: multiples of 2^-9 (the subnormal step), ties to even
    sub = tl.where(x < 0, -sub, sub)
    return tl.where(tl.abs(x) < 0.015625, sub, normal)


@triton.jit
def to_fp8(x, ROUND_FIRST: tl.constexpr):
    if ROUND_FIRST:
        x = round_e4m3(x)
    return x.to(tl.float8e4nv)


@triton.jit(do_not_specialize=["NBLK", "SEQ"])
def _quant_kernel(X, Y, SCALE, MEAN, LEN,
                  stride_xb, stride_xs, stride_xh, stride_xd,
                  stride_yb, stride_ys, stride_yh, stride_yd,
                  H, NBLK, SEQ,
                  HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr, LEN_IS_PTR: tl.constexpr, SMOOTH: tl.constexpr,
                  PER_CHANNEL: tl.constexpr, ROUND_FIRST: tl.constexpr, INT8: tl.constexpr):
    """One row tile of one (batch, head): y = fp8((x − mean) · 448 / amax), scale = amax / 448.

    Rows at or past the valid length (LEN[b] when LEN_IS_PTR, else SEQ) are zeros; rows < SEQ are written.
    PER_CHANNEL: SCALE holds a precomputed scale per channel ([B*H, D]) instead of being written per tile."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    if LEN_IS_PTR:
        n = tl.load(LEN + b)
    else:
        n = SEQ
    rows = pid * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, HEAD_DIM)
    ok = (rows[:, None] < n) & (offs_d[None, :] < HEAD_DIM)
    xp = X + b.to(tl.int64) * stride_xb + h.to(tl.int64) * stride_xh + rows[:, None].to(tl.int64) * stride_xs \
        + offs_d[None, :] * stride_xd
    x = tl.load(xp, mask=ok, other=0.0).to(tl.float32)
    if SMOOTH:
        x = x - tl.load(MEAN + bh.to(tl.int64) * HEAD_DIM + offs_d)[None, :]
    x = tl.where(ok, x, 0.0)
    if PER_CHANNEL:
        scale = tl.load(SCALE + bh.to(tl.int64) * HEAD_DIM + offs_d)
        inv = tl.where(scale > 0, tl.div_rn(tl.full([HEAD_DIM], 1.0, tl.float32), scale), 0.0)
        y = x * inv[None, :]
    else:
        ax = tl.abs(x)
        ax = tl.where(ax == ax, ax, float("inf"))  # a NaN makes the tile's scale infinite (and its values NaN)
        amax = tl.max(tl.max(ax, axis=1), axis=0)
        if INT8:
            top = INT8_MAX_T + 0.0 * amax
        else:
            top = FP8_MAX_T + 0.0 * amax
        inv = tl.where(amax > 0, tl.div_rn(top, amax), 0.0)
        tl.store(SCALE + bh.to(tl.int64) * NBLK + pid, tl.div_rn(amax, top))
        y = x * inv
    yp = Y + b.to(tl.int64) * stride_yb + h.to(tl.int64) * stride_yh + rows[:, None].to(tl.int64) * stride_ys \
        + offs_d[None, :] * stride_yd
    if INT8:
        y = (y + 12582912.0) - 12582912.0  # round to the nearest integer, ties to even (|y| <= 127)
        yq = y.to(tl.int8)
    else:
        yq = to_fp8(y, ROUND_FIRST)
    tl.store(yp, yq, mask=(rows[:, None] < SEQ) & (offs_d[None, :] < HEAD_DIM))


def quantize_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None, kv_len: torch.Tensor,
                    *, block_m: int, block_n: int, qk_format: str = "e4m3") -> QuantizedQKV:
    """The FP8 operands in four small launches (k statistics, q, k, v); q/k/v are [B, S, H, D] views.

    ``kv_len``: int32 [B] on q's device. Output buffers hold whole tiles (padded to the tile size) so the attention
    kernel can load full tiles; rows past the sequence are zeros.
    """
    B, Sq, H, D = q.shape
    Sk = k.shape[1]
    dev = q.device
    nq, nk = _cdiv(Sq, block_m), _cdiv(Sk, block_n)
    stat_block = block_n
    nstat = _cdiv(Sk, stat_block)
    ksum = torch.empty(B * H, nstat, D, device=dev, dtype=torch.float32)
    vmax = torch.empty(B * H, nstat, D, device=dev, dtype=torch.float32) if v is not None else ksum
    vv = v if v is not None else k
    _stats_kernel[(nstat, B * H)](k, vv, ksum, vmax, kv_len, *k.stride(), *vv.stride(), H, nstat,
                                  HEAD_DIM=D, BLOCK=stat_block, WITH_V=v is not None, num_warps=4)
    interp = not q.is_cuda  # the CPU interpreter's fp8 cast rounds wrongly: see round_e4m3
    count = kv_len.to(torch.float32).clamp_min(1.0).repeat_interleave(H)[:, None]  # [B*H, 1]
    mean = ksum.sum(dim=1) / count  # [B*H, D]

    if qk_format not in QK_FORMATS:
        raise ValueError(f"qk_format must be one of {QK_FORMATS}, got {qk_format!r}")
    int8 = qk_format == "int8"
    qk_dtype = torch.int8 if int8 else FP8_DTYPE
    q8 = torch.empty(B, Sq, H, D, device=dev, dtype=qk_dtype)
    k8 = torch.empty(B, Sk, H, D, device=dev, dtype=qk_dtype)
    qs = torch.empty(B * H, nq, device=dev, dtype=torch.float32)
    ks = torch.empty(B * H, nk, device=dev, dtype=torch.float32)
    # enable_fp_fusion=False: the int8 rounding adds 1.5·2^23 to x·(127/amax); fused into one FMA on the GPU it rounds
    # the exact product instead of the float32 one and differs from the reference on ~0.06% of values
    _quant_kernel[(nq, B * H)](q, q8, qs, qs, qs, *q.stride(), *q8.stride(), H, nq, Sq,
                               HEAD_DIM=D, BLOCK=block_m, LEN_IS_PTR=False, SMOOTH=False, PER_CHANNEL=False,
                               ROUND_FIRST=interp, INT8=int8, num_warps=4, enable_fp_fusion=False)
    # k rows past kv_len are written as zeros
    _quant_kernel[(nk, B * H)](k, k8, ks, mean, kv_len, *k.stride(), *k8.stride(), H, nk, Sk,
                               HEAD_DIM=D, BLOCK=block_n, LEN_IS_PTR=True, SMOOTH=True, PER_CHANNEL=False,
                               ROUND_FIRST=interp, INT8=int8, num_warps=4, enable_fp_fusion=False)
    out = QuantizedQKV(q=q8, q_scale=qs, k=k8, k_scale=ks, k_mean=mean.reshape(B, H, D), block_m=block_m,
                       block_n=block_n, qk_format=qk_format)
    if v is not None:
        amax = vmax.amax(dim=1)  # [B*H, D]
        vs = (amax / FP8_MAX).contiguous()
        vt = torch.empty(B, H, D, Sk, device=dev, dtype=FP8_DTYPE)
        # write through [B, S, H, D]-ordered strides of the transposed buffer
        vt_strides = (vt.stride(0), vt.stride(3), vt.stride(1), vt.stride(2))
        _quant_kernel[(nk, B * H)](v, vt, vs, vs, kv_len, *v.stride(), *vt_strides, H, nk, Sk,
                                   HEAD_DIM=D, BLOCK=block_n, LEN_IS_PTR=True, SMOOTH=False, PER_CHANNEL=True,
                                   ROUND_FIRST=interp, INT8=False, num_warps=4, enable_fp_fusion=False)
        out.v, out.v_scale = vt, vs
    return out


__all__ = ["FP8_DTYPE", "FP8_MAX", "INT8_MAX", "P_SCALE", "QK_FORMATS", "QuantizedQKV", "dequantize_qk",
           "quantize_reference", "quantize_triton"]
