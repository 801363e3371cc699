"""The mini model: a small Wan-family text-to-video model trained by this project on procedural videos, shipped
as a diffusers pipeline folder inside the package (``weights/``), the default model and the quality reference.

``grammar`` (the prompts it knows), ``data`` (the videos it was trained on), ``model`` (its components),
``train`` (``python -m xattn_video.mini.train``), ``euler`` (a plain sampler for probes). Importing this package imports no torch.
"""

import json
import os
from pathlib import Path

# The shipped pipeline folder (output of mini.train); XVID_MINI_WEIGHTS points --model mini at another one
# (a model you trained yourself).
WEIGHTS_DIR = Path(os.environ.get("XVID_MINI_WEIGHTS") or Path(__file__).parent / "weights")



def weights_dir() -> Path:
    """The shipped pipeline folder; one clear error when it is missing (a broken install)."""
    if not (WEIGHTS_DIR / "model_index.json").is_file():
        raise FileNotFoundError(f"the mini model's weights are missing from the package ({WEIGHTS_DIR}); reinstall "
                                f"xattn-video, or train them: python -m xattn_video.mini.train --out {WEIGHTS_DIR}")
    return WEIGHTS_DIR


# What WanPipeline pads prompts to by default, and what weights trained before training.json recorded "text_len" used.
DEFAULT_TEXT_LEN = 512


def _weights_record(folder: Path | None) -> dict:
    """The ``training.json`` of ``folder`` (default: the mini weights); {} when it is missing or unreadable."""
    try:
        record = json.loads(((folder or WEIGHTS_DIR) / "training.json").read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def trained_generation(preset: str, folder: Path | None = None) -> dict:
    """The ``generation`` config keys the weights in ``folder`` (default: the mini weights) set at ``preset``
    (``mini`` or ``mini-large``), their ``training.json`` read once:

    - ``max_sequence_length``: the prompt length (text positions, zero-padded) they were trained with; generation
      must pad prompts to the same length, because Wan's cross-attention has no mask and the padding positions are
      keys like any other (``DEFAULT_TEXT_LEN`` for weights from before the record);
    - ``flow_shift``: the sampler shift they were trained with at ``preset``; absent when none is recorded (weights
      trained at the shift of their own scheduler config, 3);
    - ``clause_suffix``: what clause composition appends to each clause, the partial-caption marker they were
      trained with (``mini.train --partial-prob``); absent for weights trained without partial captions.
    """
    record = _weights_record(folder)
    try:
        text_len = int(record.get("text_len", DEFAULT_TEXT_LEN))
    except (TypeError, ValueError):
        text_len = DEFAULT_TEXT_LEN
    trained: dict = {"max_sequence_length": text_len}
    shifts = record.get("flow_shift")
    shift = shifts.get(preset) if isinstance(shifts, dict) else None
    if shift is not None:
        trained["flow_shift"] = float(shift)
    suffix = record.get("clause_suffix")
    if isinstance(suffix, str) and suffix:
        trained["clause_suffix"] = suffix
    return trained


__all__ = ["DEFAULT_TEXT_LEN", "WEIGHTS_DIR", "trained_generation", "weights_dir"]
