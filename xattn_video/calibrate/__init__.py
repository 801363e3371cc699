"""Per-layer and per-head XAttention thresholds from a short profiling run (``xvid calibrate``).

profile.py: density / recall / output error per head and candidate τ for one attention call, summed over calls;
solver.py: τ per layer or head for a recall or error target, or a global density budget;
report.py: YAML config, markdown report, plot; collect.py: the hook object the attention mechanism calls;
run.py: ``calibrate(run, prompts, steps, ...)`` over a pipeline.
"""

import importlib

# Names load lazily: `xvid --help` registers the calibrate command without importing torch.
_LAZY = {
    "Collector": "collect",
    "DEFAULT_SAMPLES": "defaults",
    "DEFAULT_TAUS": "defaults",
    "CalibrationProfile": "profile",
    "CallProfile": "profile",
    "profile_attention": "profile",
    "CalibrationResult": "run",
    "calibrate": "run",
    "run_calibration": "run",
    "Solution": "solver",
    "check_target": "checks",
    "solve": "solver",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
