"""Backend choice: by tensor device and what is installed, never by GPU name."""

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
