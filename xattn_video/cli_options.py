"""The model options that ``xvid generate``, ``compare`` and ``calibrate`` share, and the config dict they give.

No torch import here: ``xvid --help`` builds every subcommand's parser. ``--steps`` is left to each command
(denoising steps in generate/compare, profiled steps in calibrate).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

MODEL_HELP = ("a built-in random-weight model (tiny, tiny-wan, tiny-wan22, tiny-wan-i2v, tiny-wan22-i2v, "
              "tiny-hunyuan15, tiny-hunyuan15-i2v), a local diffusers folder or a hub id; the pipeline class comes "
              "from its model_index.json")


def add_model_options(p: argparse.ArgumentParser, *, image: bool = True, model_help: str = MODEL_HELP,
                      set_example: str = "xattn.threshold=0.95") -> None:
    """Add --model, [--image,] --config, --set, --height, --width, --frames, --offload, --device to ``p``."""
    p.add_argument("--model", help=model_help)
    if image:
        p.add_argument("--image", help="conditioning image file (image-to-video pipelines only)")
    p.add_argument("--config", type=Path, help="YAML preset (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override any config key, e.g. --set {set_example} (repeatable)")
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--frames", type=int, help="number of frames (4k+1)")
    p.add_argument("--offload", choices=["model", "sequential"], help="diffusers CPU offload")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")


def model_values(args: argparse.Namespace, also: tuple[str, ...] = ()) -> dict[str, Any]:
    """The options of ``add_model_options``, plus --steps and the generation keys ``also`` where the command has
    them, given on the command line, as a nested config dict; options not given (None) are left out."""
    extra: dict[str, Any] = {"model": {}, "generation": {}}
    for key, dest in (("path", "model"), ("offload", "offload"), ("device", "device")):
        if getattr(args, dest) is not None:
            extra["model"][key] = getattr(args, dest)
    # `steps` only where it means denoising steps: calibrate's --steps has dest profile_steps
    for key in ("height", "width", "frames", "steps", "image", *also):
        if getattr(args, key, None) is not None:
            extra["generation"][key] = getattr(args, key)
    return extra
