"""Public entry points of the XAttention operator (see docs/xattention-spec.md in the shared docs).

Inputs are validated once here (shapes, parameters, the backend's constraints); after that nothing in
``xattention`` synchronizes with the device. Each step dispatches to ``naive.py`` (torch) or ``triton_*.py``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Protocol

import torch
import torch.nn.functional as F

from .backend import attention_kernel, check_backend_params, check_precision, resolve_backend
from .blocks import BlockSelection, num_blocks
from .inputs import (
    KvLen,
    Threshold,
    XAttentionInputError,
    check_block_params,
    check_max_density,
    check_qk,
    check_qkv,
    check_text_start,
    normalize_kv_len,
    normalize_threshold,
    threshold_tensor,
    to_bshd,
)
from .naive import naive_estimate_block_scores, naive_select_blocks
from .torch_attention import sdpa_block_sparse_attention


class Marker(Protocol):
    """Anything with ``mark()`` (e.g. ``xattn_video.stats.Stopwatch``): called between the operator's steps."""

    def mark(self) -> None: ...


INFERENCE_ONLY = (
    "xattention is inference-only: it has no backward pass (run it under torch.no_grad() or "
    "torch.inference_mode(); for training use dense attention, e.g. torch.nn.functional.scaled_dot_product_attention)"
)


class _InferenceOnly(torch.autograd.Function):
    """Passes the output through; its backward refuses with a clear message instead of whatever error the
    kernels' in-place writes or the custom ops would raise."""

    @staticmethod
    def forward(ctx: Any, out: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        return out.view_as(out)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> Any:
        raise RuntimeError(INFERENCE_ONLY)


def _inference_only(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``fn(q, k, v, ...)`` without building a graph; if q/k/v require grad, make backward refuse."""

    @functools.wraps(fn)
    def wrapper(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if not (torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in (q, k, v))):
            return fn(q, k, v, *args, **kwargs)
        with torch.no_grad():
            result = fn(q, k, v, *args, **kwargs)
        if isinstance(result, tuple):
            return (_InferenceOnly.apply(result[0], q, k, v),) + result[1:]
        return _InferenceOnly.apply(result, q, k, v)

    return wrapper


def check_backend_support(backend: str, stride: int, block_size: int) -> None:
    """Refuse parameters that ``backend`` cannot run for a whole ``xattention`` call."""
    check_backend_params(backend, block_size=block_size, stride=stride)


def _estimate(q: torch.Tensor, k: torch.Tensor, kv: torch.Tensor, stride: int, block_size: int,
              backend: str) -> torch.Tensor:
    if backend == "triton":
        from .triton_estimate import estimate_block_scores_triton

        return estimate_block_scores_triton(q, k, kv, stride=stride, block_size=block_size)
    return naive_estimate_block_scores(q, k, kv, stride=stride, block_size=block_size)


def _select(scores: torch.Tensor, taus: tuple[float, ...], kv_len: torch.Tensor, *, block_size: int, q_len: int,
            keep_diagonal: bool, text_start: int | None, max_density: float | None, backend: str) -> BlockSelection:
    if backend == "triton":
        from .triton_selection import select_blocks_triton

        return select_blocks_triton(scores, threshold_tensor(taus, scores.device), kv_len, block_size=block_size,
                                    q_len=q_len, keep_diagonal=keep_diagonal, text_start=text_start,
                                    max_density=max_density)
    return naive_select_blocks(scores, taus, kv_len, block_size=block_size, q_len=q_len,
                               keep_diagonal=keep_diagonal, text_start=text_start, max_density=max_density)


def _sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, selection: BlockSelection,
                      kv: torch.Tensor, backend: str, precision: str = "bf16") -> torch.Tensor:
    if backend == "triton":
        if precision != "bf16":
            from .triton_attention_v2 import attention_8bit

            return attention_8bit(q, k, v, selection, kv, precision)
        kernel = attention_kernel(q.device)
        if kernel == "gluon":  # Hopper with triton 3.6: the warp-specialised Gluon kernel (FlashAttention-3's schedule)
            from .gluon_attention import block_sparse_attention_hopper

            return block_sparse_attention_hopper(q, k, v, selection, kv)
        if kernel != "v1":  # a v2 variant (benchmarking): not a custom op, eager
            from .triton_attention_v2 import attention_v2, variant_config

            return attention_v2(q, k, v, selection, kv, config=variant_config(kernel))
        from .triton_attention import block_sparse_attention_triton

        return block_sparse_attention_triton(q, k, v, selection, kv)
    return sdpa_block_sparse_attention(q, k, v, selection, kv)


def sparse_kernel(device: torch.device | str, backend: str = "auto", precision: str = "bf16") -> str:
    """Which kernel ``xattention`` runs its block-sparse attention with on ``device`` (for run records): "gluon"
    (the Hopper kernel, block size 128 and head_dim 64/128), "gluon-<precision>" (its 8-bit version, bf16 inputs),
    "triton" (the Triton kernels), "triton-<variant>" (``XATTN_ATTN_VARIANT``), "triton-<precision>" (the 8-bit
    Triton kernel) or "torch" (the reference backend)."""
    device = torch.device(device)
    if resolve_backend(backend, device) != "triton":
        return "torch"
    kernel = attention_kernel(device)
    if precision != "bf16":
        return f"gluon-{precision}" if kernel == "gluon" else f"triton-{precision}"
    return {"gluon": "gluon", "v1": "triton"}.get(kernel, f"triton-{kernel}")


def estimate_block_scores(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    stride: int = 8,
    block_size: int = 128,
    kv_len: KvLen = None,
    layout: str = "bshd",
    backend: str = "auto",
) -> torch.Tensor:
    """Antidiagonal block scores (spec §1).

    q: [B, Sq, H, D], k: [B, Sk, H, D] ("bshd") or [B, H, S, D] ("bhsd"). Returns float32
    [B, H, ceil(Sq/block_size), ceil(Sk/block_size)]; each row sums to 1 over the valid key blocks.
    """
    shape = check_qk(q, k, layout)
    check_block_params(stride, block_size)
    kv = normalize_kv_len(kv_len, shape.batch, shape.kv_len, q.device)
    backend = resolve_backend(backend, q.device)
    check_backend_params(backend, block_size=block_size, stride=stride, attention=False)
    return _estimate(to_bshd(q, layout), to_bshd(k, layout), kv, stride, block_size, backend)


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


def _check_selection(selection: BlockSelection, batch: int, heads: int, q_len: int, k_len: int) -> None:
    if not isinstance(selection, BlockSelection):
        raise XAttentionInputError(f"selection must be a BlockSelection, got {type(selection).__name__}")
    bs = selection.block_size
    expected = (batch, heads, num_blocks(q_len, bs), num_blocks(k_len, bs))
    if tuple(selection.mask.shape) != expected:
        raise XAttentionInputError(
            f"selection has block grid {tuple(selection.mask.shape)} but q/k with block_size={bs} need {expected}"
        )
    if tuple(selection.counts.shape) != expected[:3] or tuple(selection.indices.shape) != expected:
        raise XAttentionInputError(
            f"selection counts/indices shapes {tuple(selection.counts.shape)}/{tuple(selection.indices.shape)} "
            f"do not match the block grid {expected}"
        )
    if selection.counts.dtype != torch.int32 or selection.indices.dtype != torch.int32:
        raise XAttentionInputError("selection counts and indices must be int32")


@_inference_only
def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    selection: BlockSelection,
    *,
    kv_len: KvLen = None,
    layout: str = "bshd",
    backend: str = "auto",
    precision: str = "bf16",
) -> torch.Tensor:
    """Exact softmax attention restricted to the selected blocks (spec §3); same shape and dtype as q.

    ``kv_len`` defaults to the selection's (clipped to Sk). Keys at positions ≥ kv_len are never attended.
    ``precision`` "fp8" / "int8": q and k in e4m3 / int8 with per-tile scales, k smoothed by its mean (not exact:
    see ``triton_quant``); CUDA GPUs (fp8: compute capability >= 8.9, int8: >= 8.0) and the triton backend only.
    """
    shape = check_qkv(q, k, v, layout)
    _check_selection(selection, shape.batch, shape.heads, shape.q_len, shape.kv_len)
    if kv_len is None:
        kv = selection.kv_len.to(device=q.device, dtype=torch.int32).clamp(max=shape.kv_len)
    else:
        kv = normalize_kv_len(kv_len, shape.batch, shape.kv_len, q.device)
        # blocks that the new kv_len turns into pure padding must leave the index lists
        selection = BlockSelection.from_mask(selection.mask, block_size=selection.block_size,
                                             q_len=selection.q_len, kv_len=kv)
    backend = resolve_backend(backend, q.device)
    check_precision(precision, q.device, backend)
    check_backend_params(backend, block_size=selection.block_size)
    out = _sparse_attention(to_bshd(q, layout), to_bshd(k, layout), to_bshd(v, layout), selection, kv, backend,
                            precision)
    return out if layout == "bshd" else out.transpose(1, 2)


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv: torch.Tensor | None,
                    layout: str, precision: str = "bf16") -> torch.Tensor:
    """Dense SDPA with key padding (kv: int32 [B] or None for no padding); returns q's layout.

    ``precision`` "fp8"/"int8": the 8-bit kernel in dense mode instead (``triton_attention_v2.attention_8bit``: the
    Gluon one on Hopper with triton 3.6, the Triton one elsewhere; inputs already checked)."""
    if precision != "bf16":
        from .triton_attention_v2 import attention_8bit

        qb, kb, vb = to_bshd(q, layout), to_bshd(k, layout), to_bshd(v, layout)
        if kv is None:
            kv = torch.full((qb.shape[0],), kb.shape[1], dtype=torch.int32, device=q.device)
        out = attention_8bit(qb, kb, vb, None, kv.to(torch.int32), precision)
        return out if layout == "bshd" else out.transpose(1, 2)
    qh, kh, vh = (x if layout == "bhsd" else x.transpose(1, 2) for x in (q, k, v))
    mask = None
    if kv is not None:
        mask = (torch.arange(kh.shape[2], device=q.device)[None, :] < kv[:, None].to(torch.int64))[:, None, None, :]
        # SDPA adds the mask as -inf, and NaN + -inf = NaN: padding must hold finite values to never matter
        pad = ~mask.transpose(2, 3)  # [B, 1, Sk, 1]
        kh, vh = kh.masked_fill(pad, 0.0), vh.masked_fill(pad, 0.0)
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask)
    return out if layout == "bhsd" else out.transpose(1, 2)


def full_selection(batch: int, heads: int, q_len: int, k_len: int, kv: torch.Tensor,
                   block_size: int) -> BlockSelection:
    """A selection that keeps every valid key block (what τ ≥ 1 means)."""
    nq, nk = num_blocks(q_len, block_size), num_blocks(k_len, block_size)
    valid = torch.arange(nk, device=kv.device)[None, :] < num_blocks(kv, block_size)[:, None]
    mask = valid[:, None, None, :].expand(batch, heads, nq, nk).contiguous()
    return BlockSelection.from_mask(mask, block_size=block_size, q_len=q_len, kv_len=kv)


@_inference_only
def xattention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    threshold: Threshold = 0.9,
    stride: int = 8,
    block_size: int = 128,
    kv_len: KvLen = None,
    text_start: int | None = None,
    keep_diagonal: bool = True,
    max_density: float | None = None,
    layout: str = "bshd",
    backend: str = "auto",
    return_selection: bool = False,
    stopwatch: Marker | None = None,
    selection: BlockSelection | None = None,
    precision: str = "bf16",
) -> torch.Tensor | tuple[torch.Tensor, BlockSelection]:
    """XAttention: estimate block scores, keep the blocks reaching ``threshold``, attend over them.

    q: [B, Sq, H, D], k/v: [B, Sk, H, D] for layout "bshd" ([B, H, S, D] for "bhsd"); fp16/bf16 (fp32 for
    tests). ``threshold`` is τ (float or per-head [H]); τ ≥ 1 on every head runs dense SDPA without
    estimation. Returns the output (q's shape and dtype), and the BlockSelection if ``return_selection``.
    ``stopwatch`` (timing only): ``mark()`` is called before the estimate, after the estimate, after the selection
    and after the attention (dense calls: before and after the attention only); see ``xattn_video.stats.Stopwatch``.
    ``selection``: a BlockSelection from an earlier call with the same shapes (reuse across denoising steps):
    the estimate and the selection are skipped (their intervals are then zero) and ``threshold`` is unused.
    ``precision``: "bf16" (default; q/k/v in their own dtype, exact), "fp8" or "int8" (the attention — sparse, or
    dense for τ ≥ 1 — takes q and k in e4m3 / int8 with per-tile scales, k smoothed by its token mean; P·V stays
    in the input dtype; the estimate too). fp8 needs a CUDA GPU with compute capability >= 8.9, int8 >= 8.0, and
    the triton backend; elsewhere they are refused with one line.

    Non-finite inputs (spec §4), the same on every backend: padding (positions ≥ kv_len) never matters; a
    NaN/+inf score row keeps all its valid blocks; an output row whose query or any kept valid key/value is
    non-finite is non-finite (NaN), as in dense SDPA, never silently zero. Inference only: ``.backward()``
    through the output raises a RuntimeError saying so (spec §5).
    """
    shape = check_qkv(q, k, v, layout)
    check_block_params(stride, block_size)
    check_text_start(text_start, shape.q_len)
    check_max_density(max_density)
    tau = normalize_threshold(threshold, shape.heads)
    backend = resolve_backend(backend, q.device)
    check_precision(precision, q.device, backend)
    check_backend_support(backend, stride, block_size)
    kv = normalize_kv_len(kv_len, shape.batch, shape.kv_len, q.device)

    if stopwatch is not None:
        stopwatch.mark()
    if all(t >= 1.0 for t in tau):  # plain floats: no device sync
        out = dense_attention(q, k, v, None if kv_len is None else kv, layout, precision)
        if stopwatch is not None:
            stopwatch.mark()
        if not return_selection:
            return out
        return out, full_selection(shape.batch, shape.heads, shape.q_len, shape.kv_len, kv, block_size)

    qb, kb, vb = to_bshd(q, layout), to_bshd(k, layout), to_bshd(v, layout)
    if selection is None:
        scores = _estimate(qb, kb, kv, stride, block_size, backend)
        if stopwatch is not None:
            stopwatch.mark()
        selection = _select(
            scores, tau, kv, block_size=block_size, q_len=shape.q_len, keep_diagonal=keep_diagonal,
            text_start=text_start, max_density=max_density, backend=backend,
        )
    else:
        _check_selection(selection, shape.batch, shape.heads, shape.q_len, shape.kv_len)
        if selection.block_size != block_size:
            raise XAttentionInputError(f"selection has block_size {selection.block_size}, the call {block_size}")
        if stopwatch is not None:
            stopwatch.mark()
    if stopwatch is not None:
        stopwatch.mark()
    out = _sparse_attention(qb, kb, vb, selection, kv, backend, precision)
    if stopwatch is not None:
        stopwatch.mark()
    out = out if layout == "bshd" else out.transpose(1, 2)
    return (out, selection) if return_selection else out


__all__ = ["BlockSelection", "XAttentionInputError", "block_sparse_attention", "estimate_block_scores",
           "select_blocks", "sparse_kernel", "xattention"]
