"""Backend choice (by tensor device and what is installed, never by GPU name) and what each backend can run."""

from __future__ import annotations

import functools
import os

import torch

from .inputs import XAttentionInputError

BACKENDS = ("auto", "torch", "triton")
BACKEND_ENV_VAR = "XATTN_BACKEND"  # forces the backend that "auto" picks: "torch" or "triton"


@functools.lru_cache(maxsize=None)
def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # ImportError, or a broken install that fails at import time
        return False
    return True


# torch.compile evaluates these once while tracing instead of breaking the graph on them.
@torch.compiler.assume_constant_result
def triton_available() -> bool:
    return _triton_importable()


@torch.compiler.assume_constant_result
def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@torch.compiler.assume_constant_result
def forced_backend() -> str:
    return os.environ.get(BACKEND_ENV_VAR, "").strip().lower()


def resolve_backend(backend: str, device: torch.device) -> str:
    """Map "auto"/"torch"/"triton" (and the XATTN_BACKEND override of "auto") to a runnable backend."""
    if backend not in BACKENDS:
        raise XAttentionInputError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        forced = forced_backend()
        if forced:
            if forced not in ("torch", "triton"):
                raise XAttentionInputError(
                    f"environment variable {BACKEND_ENV_VAR} must be 'torch' or 'triton', got {forced!r}"
                )
            backend = forced
        else:
            backend = "triton" if device.type == "cuda" and triton_available() else "torch"
    if backend == "triton":
        if not triton_available():
            raise XAttentionInputError(
                "backend 'triton' requested but triton is not installed (the CUDA builds of torch bring it; "
                "for the CPU interpreter: pip install 'triton>=3.7'); backend 'torch' runs anywhere"
            )
        if device.type != "cuda" and not triton_interpreted():
            raise XAttentionInputError(
                f"backend 'triton' needs CUDA tensors (got {device.type}); set TRITON_INTERPRET=1 to run the "
                f"Triton kernels on the CPU through the interpreter"
            )
    return backend


# bf16: q/k/v in their own dtype (exact); fp8: q/k in e4m3; int8: q/k rounded to int8 (SageAttention's choice, the
# same tensor-core rate on Hopper, ~4x smaller error on video-like inputs). Both with per-tile scales, k smoothed.
PRECISIONS = ("bf16", "fp8", "int8")
MIN_CAPABILITY = {"fp8": (8, 9), "int8": (8, 0)}  # fp8: Ada and Hopper; int8 tensor cores: Ampere on
# benchmarking: the bf16 kernel: "v1" (triton_attention), "gluon" (gluon_attention), or a triton_attention_v2 variant
VARIANT_ENV_VAR = "XATTN_ATTN_VARIANT"


@torch.compiler.assume_constant_result
def forced_variant() -> str:
    return os.environ.get(VARIANT_ENV_VAR, "").strip().lower()


def attention_kernel(device: torch.device) -> str:
    """The triton backend's attention kernel on ``device``: "gluon" (the Hopper kernels of ``gluon_attention`` and,
    for precision fp8/int8, ``gluon_attention_fp8``, where ``gluon_device`` holds), "v1" (the Triton kernels) or a
    ``triton_attention_v2`` bf16 variant name. XATTN_ATTN_VARIANT (benchmarking) forces "v1", "gluon" (refused
    where it cannot run) or a variant."""
    variant = forced_variant()
    if variant in ("v1", "default"):
        return "v1"
    if variant not in ("", "gluon"):
        return variant
    if device.type == "cuda":
        from .gluon_attention import device_index, gluon_device

        if gluon_device(device_index(device)):
            return "gluon"
    if variant == "gluon":
        raise XAttentionInputError(f"{VARIANT_ENV_VAR}=gluon needs a Hopper GPU (sm_90) and triton 3.6 with Gluon")
    return "v1"


def precision_refusal(precision: str, device: torch.device) -> str | None:
    """Why the quantized ``precision`` ("fp8"/"int8") cannot run on ``device`` (one line), or None when it can."""
    if precision not in MIN_CAPABILITY:
        return None
    low = MIN_CAPABILITY[precision]
    cores = "FP8" if precision == "fp8" else "INT8"
    need = f"compute capability >= {low[0]}.{low[1]}"
    if device.type != "cuda":
        return (f"precision '{precision}' needs a CUDA GPU with {cores} tensor cores ({need}); the tensors are on "
                f"{device.type}")
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < low:
        return (f"precision '{precision}' needs a GPU with {cores} tensor cores ({need}); "
                f"{torch.cuda.get_device_name(device)} has {major}.{minor}")
    if not triton_available():
        return f"precision '{precision}' runs on the triton backend, and triton is not installed"
    return None


def fp8_refusal(device: torch.device) -> str | None:
    return precision_refusal("fp8", device)


def check_precision(precision: str, device: torch.device, backend: str | None = None) -> None:
    """Refuse an unknown precision, and a quantized one where it cannot run (CPU, older GPUs, the torch backend)."""
    if precision not in PRECISIONS:
        raise XAttentionInputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "bf16":
        why = precision_refusal(precision, device)
        if why is None and backend == "torch":
            why = f"precision '{precision}' runs on the triton backend only (backend 'torch' was asked for)"
        if why is not None:
            raise XAttentionInputError(why)


# What the Triton kernels can run; the one declaration of it. api.py checks it once per public call, so the
# launchers in triton_*.py assume it holds.
TRITON_ATTENTION_BLOCK_SIZES = (16, 32, 64, 128)  # tiles of the block-sparse attention kernel
TRITON_MIN_ESTIMATE_BLOCK = 16  # the estimate kernel: stride and block_size powers of two, block_size ≥ this


def _pow2(x: int) -> bool:
    return x > 0 and (x & (x - 1)) == 0


def check_backend_params(backend: str, *, block_size: int, stride: int | None = None,
                         attention: bool = True) -> None:
    """Refuse parameters ``backend`` cannot run, before any work starts.

    ``stride`` given: the estimate will run; ``attention``: the block-sparse attention will run. Only the
    "triton" backend has constraints (the torch reference runs any valid stride/block_size).
    """
    if backend != "triton":
        return
    if stride is not None and (not _pow2(stride) or not _pow2(block_size) or block_size < TRITON_MIN_ESTIMATE_BLOCK):
        raise XAttentionInputError(
            f"the triton backend needs stride and block_size to be powers of two with block_size >= "
            f"{TRITON_MIN_ESTIMATE_BLOCK}, got stride={stride}, block_size={block_size} (use backend='torch' for "
            f"other values)"
        )
    if attention and block_size not in TRITON_ATTENTION_BLOCK_SIZES:
        raise XAttentionInputError(
            f"the triton backend supports block_size {', '.join(map(str, TRITON_ATTENTION_BLOCK_SIZES[:-1]))} or "
            f"{TRITON_ATTENTION_BLOCK_SIZES[-1]}, got {block_size} (use backend='torch' for other values)"
        )
