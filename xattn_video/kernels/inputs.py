"""Validation and normalization of operator inputs.

Every public entry point runs its inputs through here once, so that the kernels below can assume
well-formed tensors and never need to synchronize with the device to check them.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Sequence, Union

import torch

SUPPORTED_HEAD_DIMS = (64, 128)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
LAYOUTS = ("bshd", "bhsd")

Threshold = Union[float, Sequence[float], torch.Tensor]
KvLen = Union[int, Sequence[int], torch.Tensor, None]


class XAttentionInputError(ValueError):
    """Raised for inputs the operator cannot handle; the message names the offending argument."""


@dataclass(frozen=True)
class QKVShape:
    batch: int
    heads: int
    q_len: int
    kv_len: int  # key sequence length Sk (not the valid length)
    head_dim: int


def to_bshd(x: torch.Tensor, layout: str) -> torch.Tensor:
    """Return a [B, S, H, D] view of ``x`` (no copy)."""
    return x if layout == "bshd" else x.transpose(1, 2)


def check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise XAttentionInputError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def check_qk(q: torch.Tensor, k: torch.Tensor, layout: str, name_k: str = "k") -> QKVShape:
    """Check q and k (and return their shape in bshd terms)."""
    check_layout(layout)
    for name, t in (("q", q), (name_k, k)):
        if not isinstance(t, torch.Tensor):
            raise XAttentionInputError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise XAttentionInputError(
                f"{name} must be 4-D ({'[B, S, H, D]' if layout == 'bshd' else '[B, H, S, D]'} for layout "
                f"{layout!r}), got shape {tuple(t.shape)}"
            )
        if t.dtype not in SUPPORTED_DTYPES:
            raise XAttentionInputError(
                f"{name} has dtype {t.dtype}; supported dtypes are float16, bfloat16 and float32"
            )
    if q.dtype != k.dtype:
        raise XAttentionInputError(f"q and {name_k} must share a dtype, got {q.dtype} and {k.dtype}")
    if q.device != k.device:
        raise XAttentionInputError(f"q and {name_k} are on different devices: {q.device} and {k.device}")
    qb, kb = to_bshd(q, layout), to_bshd(k, layout)
    B, Sq, H, D = qb.shape
    Bk, Sk, Hk, Dk = kb.shape
    if Bk != B:
        raise XAttentionInputError(f"batch size differs: q has {B}, {name_k} has {Bk}")
    if Hk != H:
        raise XAttentionInputError(f"head count differs: q has {H}, {name_k} has {Hk}")
    if Dk != D:
        raise XAttentionInputError(f"head_dim differs: q has {D}, {name_k} has {Dk}")
    if D not in SUPPORTED_HEAD_DIMS:
        raise XAttentionInputError(f"head_dim must be one of {SUPPORTED_HEAD_DIMS}, got {D}")
    if Sq == 0 or Sk == 0 or B == 0 or H == 0:
        raise XAttentionInputError(f"empty input: q shape {tuple(q.shape)}, {name_k} shape {tuple(k.shape)}")
    return QKVShape(batch=B, heads=H, q_len=Sq, kv_len=Sk, head_dim=D)


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: str) -> QKVShape:
    shape = check_qk(q, k, layout)
    check_qk(q, v, layout, name_k="v")
    if to_bshd(v, layout).shape[1] != shape.kv_len:
        raise XAttentionInputError(
            f"k and v must have the same sequence length, got {shape.kv_len} and {to_bshd(v, layout).shape[1]}"
        )
    return shape


def tma_addressable(x: torch.Tensor) -> bool:
    """Whether a TMA descriptor can address the view ``x``: last stride 1, 16-byte aligned base and strides."""
    return (x.stride(-1) == 1 and x.data_ptr() % 16 == 0
            and all((s * x.element_size()) % 16 == 0 for s in x.stride()[:-1]))


def check_block_params(stride: int, block_size: int) -> None:
    if not isinstance(stride, int) or stride < 1:
        raise XAttentionInputError(f"stride must be a positive int, got {stride!r}")
    if not isinstance(block_size, int) or block_size < 1:
        raise XAttentionInputError(f"block_size must be a positive int, got {block_size!r}")
    if block_size % stride != 0:
        raise XAttentionInputError(f"block_size ({block_size}) must be a multiple of stride ({stride})")


def normalize_kv_len(kv_len: KvLen, batch: int, seq_len: int, device: torch.device) -> torch.Tensor:
    """Return the valid key count per batch as an int32 tensor [B] on ``device``.

    Python ints, sequences and CPU tensors are range-checked (1 <= kv_len <= Sk). A tensor that already
    lives on an accelerator is only shape-checked: reading its values would synchronize with the device.
    """
    if kv_len is None:
        return torch.full((batch,), seq_len, dtype=torch.int32, device=device)
    if isinstance(kv_len, bool):
        raise XAttentionInputError(f"kv_len must be an int or an int tensor [B], got {kv_len!r}")
    if isinstance(kv_len, int):
        _check_kv_values([kv_len], seq_len)
        return torch.full((batch,), kv_len, dtype=torch.int32, device=device)
    if isinstance(kv_len, torch.Tensor):
        if kv_len.dtype.is_floating_point or kv_len.dtype == torch.bool or kv_len.is_complex():
            raise XAttentionInputError(f"kv_len must be an integer tensor, got dtype {kv_len.dtype}")
        if kv_len.dim() == 0:
            kv_len = kv_len.reshape(1).expand(batch)
        if kv_len.shape != (batch,):
            raise XAttentionInputError(f"kv_len must have shape [B] = [{batch}], got {tuple(kv_len.shape)}")
        if kv_len.device.type == "cpu":
            _check_kv_values(kv_len.tolist(), seq_len)
        return kv_len.to(device=device, dtype=torch.int32)
    try:
        values = [int(x) for x in kv_len]
    except (TypeError, ValueError) as exc:
        raise XAttentionInputError(f"kv_len must be an int or an int tensor [B], got {kv_len!r}") from exc
    if len(values) != batch:
        raise XAttentionInputError(f"kv_len must have {batch} entries (one per batch), got {len(values)}")
    _check_kv_values(values, seq_len)
    return _constant(tuple(values), torch.int32, device)


def _check_kv_values(values: Sequence[int], seq_len: int) -> None:
    if any(x < 1 or x > seq_len for x in values):
        raise XAttentionInputError(
            f"kv_len out of range: every entry must be in [1, {seq_len}] (the key sequence length), got {list(values)}"
        )


@functools.lru_cache(maxsize=256)
def _device_tensor(values: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small constant tensor, made once per device so repeated calls (and CUDA graph replays) reuse it."""
    return torch.tensor(values, dtype=dtype, device=device)


def _constant(values: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if torch.compiler.is_compiling():  # a graph constant; the cache is for eager calls and CUDA graphs
        return torch.tensor(values, dtype=dtype, device=device)
    return _device_tensor(values, dtype, device)


def threshold_tensor(taus: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """τ per head as a cached float32 tensor [H] on ``device``."""
    return _constant(tuple(taus), torch.float32, device)


def normalize_threshold(threshold: Threshold, heads: int) -> tuple[float, ...]:
    """Return τ per head as Python floats after checking 0 < τ and no NaN.

    Floats and sequences are checked without touching any device; a tensor is read once (a GPU tensor
    therefore costs one synchronization: prefer floats or lists in hot loops).
    """
    if isinstance(threshold, bool):
        raise XAttentionInputError(f"threshold must be a float or a per-head tensor [H], got {threshold!r}")
    if isinstance(threshold, (int, float)):
        taus = (float(threshold),) * heads
    else:
        if isinstance(threshold, torch.Tensor):
            if threshold.dim() == 0:
                threshold = threshold.reshape(1).expand(heads)
            values = threshold.detach().to(torch.float64).tolist()
        else:
            try:
                values = [float(x) for x in threshold]
            except (TypeError, ValueError) as exc:
                raise XAttentionInputError(
                    f"threshold must be a float or a per-head tensor [H], got {threshold!r}"
                ) from exc
        if not isinstance(values, list) or len(values) != heads or any(isinstance(x, list) for x in values):
            shape = tuple(threshold.shape) if isinstance(threshold, torch.Tensor) else (len(values),)
            raise XAttentionInputError(f"per-head threshold must have shape [H] = [{heads}], got {shape}")
        taus = tuple(float(x) for x in values)
    if any(math.isnan(t) for t in taus):
        raise XAttentionInputError(f"threshold contains NaN: {list(taus)}")
    if any(t <= 0 for t in taus):
        raise XAttentionInputError(f"threshold must be > 0 (τ ≥ 1 means dense), got {list(taus)}")
    return taus


def check_text_start(text_start: int | None, q_len: int) -> None:
    if text_start is None:
        return
    if isinstance(text_start, bool) or not isinstance(text_start, int):
        raise XAttentionInputError(f"text_start must be an int or None, got {text_start!r}")
    if not 0 <= text_start <= q_len:
        raise XAttentionInputError(f"text_start must be in [0, {q_len}] (the query length), got {text_start}")


def check_max_density(max_density: float | None) -> None:
    if max_density is None:
        return
    if isinstance(max_density, bool) or not isinstance(max_density, (int, float)):
        raise XAttentionInputError(f"max_density must be a float in (0, 1] or None, got {max_density!r}")
    if not (0.0 < float(max_density) <= 1.0) or math.isnan(max_density):
        raise XAttentionInputError(f"max_density must be in (0, 1], got {max_density}")
