"""No-reference scorers: each video scored on its own (``--metrics flicker``, ``vbench:<dim>,...``, your own).

``registry`` (``register_scorer``, ``make_scorers``), ``flicker`` (in-house VBench temporal flickering),
``prompt_match`` (colour, shape and direction of the mini model's objects against the prompt),
``vbench`` (VBench in its own environment; its ``vbench_driver`` module runs there).
"""

from ..errors import Unavailable
from .flicker import FlickerScorer, frames_to_uint8, make_flicker, temporal_flickering_score
from .prompt_match import PromptMatchScorer, make_prompt_match
from .registry import Scorer, ScorerSpecError, VideoItem, available_scorers, make_scorers, register_scorer
from .vbench import VBENCH_CUSTOM_INPUT_UNSUPPORTED, VBENCH_DIMENSION_WEIGHTS, VBenchScorer, VBenchWeight, make_vbench

register_scorer("flicker", make_flicker, replace=True)
register_scorer("vbench", make_vbench, replace=True)
register_scorer("prompt_match", make_prompt_match, replace=True)

__all__ = [
    "VBENCH_CUSTOM_INPUT_UNSUPPORTED",
    "VBENCH_DIMENSION_WEIGHTS",
    "FlickerScorer",
    "PromptMatchScorer",
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
