"""Per-layer and per-head XAttention thresholds from a short profiling run (``xvid calibrate``).

profile.py: density / recall / output error per head and candidate τ for one attention call, summed over calls;
solve.py: τ per layer or head for a recall or error target, or a global density budget;
report.py: YAML config, markdown report, plot; collect.py: the hook object the attention mechanism calls;
run.py: ``calibrate(run, prompts, steps, ...)`` over a pipeline.
"""

from .collect import Collector
from .profile import DEFAULT_SAMPLES, DEFAULT_TAUS, CalibrationProfile, CallProfile, profile_attention
from .run import CalibrationResult, calibrate, run_calibration
from .solve import Solution, check_target, solve

__all__ = [
    "DEFAULT_SAMPLES",
    "DEFAULT_TAUS",
    "CalibrationProfile",
    "CalibrationResult",
    "CallProfile",
    "Collector",
    "Solution",
    "calibrate",
    "check_target",
    "profile_attention",
    "run_calibration",
    "solve",
]
