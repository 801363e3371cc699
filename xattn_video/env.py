"""Environment variables the package reads, checked before anything heavy is imported.

A mistyped value (``XATTN_BACKEND=trition``) is refused in a second with one line, instead of after the model has
loaded (or never, when every step of a short run is dense). Only the standard library and ``config`` here.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

from .config import ConfigError

BACKEND_ENV_VAR = "XATTN_BACKEND"  # forces the backend that "auto" picks: "torch" or "triton"
FORCED_BACKENDS = ("torch", "triton")
DIST_TIMEOUT_ENV_VAR = "XVID_DIST_TIMEOUT"  # seconds a multi-rank run waits on a silent rank
DEFAULT_DIST_TIMEOUT_S = 1800
MINI_WEIGHTS_ENV_VAR = "XVID_MINI_WEIGHTS"  # another pipeline folder for --model mini


def dist_timeout_seconds(environ: Mapping[str, str] | None = None) -> float:
    """``XVID_DIST_TIMEOUT`` in seconds (``DEFAULT_DIST_TIMEOUT_S`` when unset); ``ConfigError`` naming the
    variable when it is set to anything but a positive finite number."""
    env = os.environ if environ is None else environ
    text = env.get(DIST_TIMEOUT_ENV_VAR)
    if text is None:
        return float(DEFAULT_DIST_TIMEOUT_S)
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"environment variable {DIST_TIMEOUT_ENV_VAR}={text!r}: expected a positive number of "
                          f"seconds (default {DEFAULT_DIST_TIMEOUT_S})")
    return seconds


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    """Refuse a set but unusable ``XATTN_BACKEND``, ``XVID_DIST_TIMEOUT`` or ``XVID_MINI_WEIGHTS`` (``ConfigError``).

    Unset or empty variables are fine: they mean the default.
    """
    env = os.environ if environ is None else environ
    backend = env.get(BACKEND_ENV_VAR, "").strip().lower()
    if backend and backend not in FORCED_BACKENDS:
        raise ConfigError(f"environment variable {BACKEND_ENV_VAR} must be {' or '.join(FORCED_BACKENDS)} (or "
                          f"unset: auto), got {env[BACKEND_ENV_VAR]!r}")
    dist_timeout_seconds(env)
    weights = env.get(MINI_WEIGHTS_ENV_VAR, "")
    if weights and not (Path(weights).expanduser() / "model_index.json").is_file():
        raise ConfigError(f"environment variable {MINI_WEIGHTS_ENV_VAR}={weights!r} is not a diffusers pipeline "
                          f"folder (no model_index.json); unset it to use the shipped mini weights")


__all__ = ["BACKEND_ENV_VAR", "DEFAULT_DIST_TIMEOUT_S", "DIST_TIMEOUT_ENV_VAR", "MINI_WEIGHTS_ENV_VAR", "check_environment",
           "dist_timeout_seconds"]
