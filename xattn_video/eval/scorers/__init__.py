"""No-reference scorers: each video scored on its own (``--metrics flicker``, ``vbench:<dim>,...``, your own).

``registry`` (``register_scorer``, ``make_scorers``), ``flicker`` (in-house VBench temporal flickering),
``vbench`` (VBench in its own environment; its ``vbench_driver`` module runs there).
"""

from ..errors import Unavailable
from .flicker import FlickerScorer, frames_to_uint8, make_flicker, temporal_flickering_score
from .registry import Scorer, ScorerSpecError, VideoItem, available_scorers, make_scorers, register_scorer
from .vbench import VBENCH_CUSTOM_INPUT_UNSUPPORTED, VBENCH_DIMENSION_WEIGHTS, VBenchScorer, VBenchWeight, make_vbench

register_scorer("flicker", make_flicker, replace=True)
register_scorer("vbench", make_vbench, replace=True)

__all__ = [
    "VBENCH_CUSTOM_INPUT_UNSUPPORTED",
    "VBENCH_DIMENSION_WEIGHTS",
    "FlickerScorer",
    "Scorer",
    "ScorerSpecError",
    "Unavailable",
    "VBenchScorer",
    "VBenchWeight",
    "VideoItem",
    "available_scorers",
    "frames_to_uint8",
    "make_scorers",
    "register_scorer",
    "temporal_flickering_score",
]
