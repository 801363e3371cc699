"""Exact dense attention for a key-padding prefix, without a mask tensor.

Diffusers hands HunyuanVideo's dense attention a ``[B, 1, 1, N]`` bool key mask; with a mask SDPA leaves its
fastest kernels (at 119,056 tokens cuDNN takes ~445 ms masked against ~299 ms unmasked on an H100). When the
mask only pads keys (a prefix of valid keys per batch entry), dropping the padded keys and calling unmasked
SDPA gives the same softmax over the same keys: exact up to rounding. Padded key/value contents are never read.

The valid lengths are host ints: the caller (the attention dispatch) reads them once per forward pass from
the mask check it already does, so nothing here synchronizes with the device.
"""

from __future__ import annotations

import inspect
from typing import Sequence

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from .inputs import XAttentionInputError, normalize_kv_len

# cuDNN first: on H100 it runs unmasked bf16 attention at ~580 TFLOP/s against ~360 for flash (FA2), see
# benchmarks/results. SDPA skips the ones that cannot run the inputs (e.g. on CPU only flash/math exist).
SDPA_PRIORITY = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                 SDPBackend.MATH]

KvLens = int | Sequence[int] | None

# torch < 2.6 has no set_priority: the listed kernels are then tried in torch's own order.
_PRIORITY_KW = {"set_priority": True} if "set_priority" in inspect.signature(sdpa_kernel).parameters else {}


def _sdpa_bshd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None) -> torch.Tensor:
    """Unmasked SDPA on bshd views (no copies: SDPA takes the permuted strides as they are)."""
    with sdpa_kernel(SDPA_PRIORITY, **_PRIORITY_KW):
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale)
    return out.transpose(1, 2)


def host_kv_lens(kv_len: KvLens, batch: int, keys: int) -> list[int]:
    """Validated valid-key counts, one host int per batch entry (None: every key is valid)."""
    if kv_len is None:
        return [keys] * batch
    if isinstance(kv_len, torch.Tensor):
        raise XAttentionInputError("dense_attention takes kv_len as host ints (read once per forward), not a tensor")
    lens = [int(kv_len)] * batch if isinstance(kv_len, int) else [int(n) for n in kv_len]
    if len(lens) != batch:
        raise XAttentionInputError(f"kv_len has {len(lens)} entries for a batch of {batch}")
    bad = [n for n in lens if not 1 <= n <= keys]
    if bad:
        raise XAttentionInputError(f"kv_len entries must be in 1..{keys} (the key count), got {bad}")
    return lens


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_len: KvLens = None, *,
                    scale: float | None = None, precision: str = "bf16") -> torch.Tensor:
    """Softmax attention over the first ``kv_len[b]`` keys of each batch entry b; q's shape and dtype.

    q: [B, Sq, H, D], k/v: [B, Sk, H, D] ("bshd", as diffusers' attention dispatch passes them).
    kv_len: None (all keys valid), one int, or one int per batch entry (host values, 1..Sk). Keys at
    positions ≥ kv_len[b] are never read, so their contents (inf, NaN) cannot matter. Batch entries with the
    same length next to each other share one SDPA call (B is 1 or 2 in practice).
    ``precision`` "fp8" / "int8": the 8-bit kernel in dense mode (q/k in e4m3 / int8, see ``triton_quant``; the
    Gluon kernel on Hopper with triton 3.6, the Triton one elsewhere) instead of SDPA; CUDA GPUs only (fp8:
    compute capability >= 8.9; refused with one line elsewhere); ``scale`` must be None.
    """
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise XAttentionInputError(f"q, k, v must be 4-D [B, S, H, D], got {tuple(q.shape)}, {tuple(k.shape)}, "
                                   f"{tuple(v.shape)}")
    batch, keys = k.shape[0], k.shape[1]
    lens = host_kv_lens(kv_len, batch, keys)
    if precision != "bf16":
        return _dense_fp8(q, k, v, lens, scale, precision)
    if q.is_cuda and (scale is None or scale == q.shape[-1] ** -0.5):
        from .gluon_attention import dense_attention_hopper, device_index, gluon_device

        if gluon_device(device_index(q.device)):  # Hopper with triton 3.6: 1.09-1.13x cuDNN's rate (H100)
            return dense_attention_hopper(q, k, v, lens)
    return sdpa_dense(q, k, v, lens, scale)


def sdpa_dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lens: list[int],
               scale: float | None) -> torch.Tensor:
    """``dense_attention`` through SDPA: lens are the valid keys per batch entry (host ints)."""
    # Runs of consecutive entries with one length share a call (slices are views: no index tensor, which
    # would need a host-to-device copy).
    runs: list[tuple[int, int, int]] = []
    for b, n in enumerate(lens):
        if runs and runs[-1][2] == n:
            runs[-1] = (runs[-1][0], b + 1, n)
        else:
            runs.append((b, b + 1, n))
    if len(runs) == 1:
        return _sdpa_bshd(q, k[:, :lens[0]], v[:, :lens[0]], scale)
    return torch.cat([_sdpa_bshd(q[b0:b1], k[b0:b1, :n], v[b0:b1, :n], scale) for b0, b1, n in runs], dim=0)


def _dense_fp8(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lens: list[int], scale: float | None,
               precision: str) -> torch.Tensor:
    from .backend import check_precision
    from .triton_attention_v2 import attention_8bit

    check_precision(precision, q.device)
    if scale is not None:
        raise XAttentionInputError(f"dense_attention with precision {precision!r} uses 1/sqrt(head_dim); scale must "
                                   f"be None")
    kv = normalize_kv_len(lens, q.shape[0], k.shape[1], q.device)  # a cached device constant per lengths
    return attention_8bit(q, k, v, None, kv, precision)


def prefix_kv_lens(mask: torch.Tensor | None) -> tuple[bool, list[int] | None]:
    """(usable, host lengths) of a diffusers key mask; ONE host synchronization per call.

    ``mask`` is bool [B, 1, 1, N] (or [B, N]); usable means every row is a non-empty prefix of True, and the
    lengths are its per-row counts. None: no mask (usable, lengths None). Anything else: (False, None).
    Meant to run once per forward pass (the transformer passes one mask object to every block).
    """
    if mask is None:
        return True, None
    if mask.dtype != torch.bool or not (mask.dim() == 2 or (mask.dim() == 4 and mask.shape[1] == mask.shape[2] == 1)):
        return False, None
    flat = mask.reshape(mask.shape[0], mask.shape[-1])
    counts = flat.sum(dim=-1, dtype=torch.int64)
    positions = torch.arange(flat.shape[-1], device=flat.device)
    ok = (flat == (positions[None, :] < counts[:, None])).all() & (counts > 0).all()
    host = torch.cat([ok.view(1).to(torch.int64), counts]).tolist()  # the one transfer
    if not host[0]:
        return False, None
    return True, [int(n) for n in host[1:]]


__all__ = ["SDPA_PRIORITY", "dense_attention", "host_kv_lens", "prefix_kv_lens", "sdpa_dense"]
