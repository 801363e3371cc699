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


def _text_len(record: dict) -> int:
    try:
        return int(record.get("text_len", DEFAULT_TEXT_LEN))
    except (TypeError, ValueError):
        return DEFAULT_TEXT_LEN


def _flow_shift(record: dict, preset: str) -> float | None:
    shifts = record.get("flow_shift")
    value = shifts.get(preset) if isinstance(shifts, dict) else None
    return None if value is None else float(value)


def _clause_suffix(record: dict) -> str:
    suffix = record.get("clause_suffix", "")
    return suffix if isinstance(suffix, str) else ""


def trained_text_len(folder: Path | None = None) -> int:
    """The prompt length (text positions, zero-padded) the weights in ``folder`` (default: the mini weights) were
    trained with, from their ``training.json``; generation must pad prompts to the same length, because Wan's
    cross-attention has no mask and the padding positions are keys like any other."""
    return _text_len(_weights_record(folder))


def trained_flow_shift(preset: str, folder: Path | None = None) -> float | None:
    """The sampler shift the weights in ``folder`` (default: the mini weights) were trained with at ``preset``
    (``mini`` or ``mini-large``), from their ``training.json``; None when it records none (weights trained at
    the shift of their own scheduler config, 3)."""
    return _flow_shift(_weights_record(folder), preset)


def trained_clause_suffix(folder: Path | None = None) -> str:
    """What clause composition appends to each clause for the weights in ``folder`` (default: the mini weights):
    the partial-caption marker they were trained with (``mini.train --partial-prob``), from their ``training.json``;
    "" for weights trained without partial captions."""
    return _clause_suffix(_weights_record(folder))


def trained_generation(preset: str, folder: Path | None = None) -> dict:
    """The ``generation`` config keys the weights in ``folder`` (default: the mini weights) set at ``preset``, their
    ``training.json`` read once: ``max_sequence_length``, and ``flow_shift`` / ``clause_suffix`` where it records
    them (the functions above, one key each)."""
    record = _weights_record(folder)
    trained: dict = {"max_sequence_length": _text_len(record)}
    shift, suffix = _flow_shift(record, preset), _clause_suffix(record)
    if shift is not None:
        trained["flow_shift"] = shift
    if suffix:
        trained["clause_suffix"] = suffix
    return trained


__all__ = ["DEFAULT_TEXT_LEN", "WEIGHTS_DIR", "trained_clause_suffix", "trained_flow_shift", "trained_generation",
           "trained_text_len", "weights_dir"]
