"""Deprecated: scoring hooks are now scorers, in ``xattn_video.eval.scorers``. Old names kept as aliases."""

import warnings

from .eval.errors import Unavailable as HookUnavailable
from .eval.scorers import (
    VBENCH_CUSTOM_INPUT_UNSUPPORTED,
    VBENCH_DIMENSION_WEIGHTS,
    VBenchWeight,
    VideoItem,
    frames_to_uint8,
    temporal_flickering_score,
)
from .eval.scorers import FlickerScorer as FlickerHook
from .eval.scorers import Scorer as ScoringHook
from .eval.scorers import VBenchScorer as VBenchHook
from .eval.scorers import available_scorers as available_hooks
from .eval.scorers import make_scorers as make_hooks
from .eval.scorers import register_scorer as register_hook
from .eval.scorers.vbench import vbench_file_name

warnings.warn("xattn_video.hooks moved to xattn_video.eval.scorers (hooks are now scorers)", DeprecationWarning,
              stacklevel=2)

__all__ = [
    "VBENCH_CUSTOM_INPUT_UNSUPPORTED",
    "VBENCH_DIMENSION_WEIGHTS",
    "FlickerHook",
    "HookUnavailable",
    "ScoringHook",
    "VBenchHook",
    "VBenchWeight",
    "VideoItem",
    "available_hooks",
    "frames_to_uint8",
    "make_hooks",
    "register_hook",
    "temporal_flickering_score",
    "vbench_file_name",
]
