"""The mini model: a small Wan-family text-to-video model trained by this project on procedural videos, shipped
as a diffusers pipeline folder inside the package (``weights/``), the default model and the quality reference.

``grammar`` (the prompts it knows), ``data`` (the videos it was trained on), ``model`` (its components),
``train`` (``python -m xattn_video.mini.train``). Importing this package imports no torch.
"""

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


__all__ = ["WEIGHTS_DIR", "weights_dir"]
