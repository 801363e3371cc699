"""Command-line options shared by every command that loads a model (generate, compare, calibrate).

Kept apart from ``cli.py`` so that ``calibrate/cli.py`` can use them without importing the command table. Only
argparse here: ``xvid --help`` stays instant.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .config import TINY_MODELS


def add_model_options(p: argparse.ArgumentParser) -> None:
    """--model, --image, --config, --set, --height/--width/--frames, --offload, --device."""
    p.add_argument("--model", help=f"a built-in random-weight model ({', '.join(TINY_MODELS)}), a local diffusers "
                                   f"folder or a hub id; the pipeline class comes from its model_index.json")
    p.add_argument("--image", help="conditioning image file (image-to-video pipelines only)")
    p.add_argument("--config", type=Path, help="YAML preset (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set xattn.threshold=0.95 (repeatable)")
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--frames", type=int, help="number of frames (4k+1)")
    p.add_argument("--offload", choices=["model", "sequential"], help="diffusers CPU offload")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")


def model_option_values(args: argparse.Namespace) -> dict[str, Any]:
    """The options of :func:`add_model_options` that were given, as a nested config dict."""
    extra: dict[str, Any] = {"model": {}, "generation": {}}
    for key, dest in (("path", "model"), ("offload", "offload"), ("device", "device")):
        if getattr(args, dest) is not None:
            extra["model"][key] = getattr(args, dest)
    for key in ("height", "width", "frames", "image"):
        if getattr(args, key) is not None:
            extra["generation"][key] = getattr(args, key)
    return extra


__all__ = ["add_model_options", "model_option_values"]
