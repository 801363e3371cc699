"""Command-line options shared by every command that loads a model (generate, compare, calibrate).

Kept apart from ``cli.py`` so that ``calibrate/cli.py`` can use them without importing the command table. Only
argparse and the light checks here (no torch): ``xvid --help`` and refusals stay instant.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .config import BUILTIN_MODELS, RunConfig, check_model_name, load_config
from .env import check_environment


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Help that shows an option's default when it has one of its own (not None, False or empty: those defaults
    come from the config and the model, and the help text says so)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("%(default)" not in text and action.option_strings and action.default is not argparse.SUPPRESS
                and action.default not in (None, False, [], "")):
            text += " (default: %(default)s)"
        return text


def add_model_options(p: argparse.ArgumentParser) -> None:
    """--model, --image, --config, --set, --height/--width/--frames, --offload, --device."""
    p.add_argument("--model", help=f"a built-in model ({', '.join(BUILTIN_MODELS)}; default mini, trained; the "
                                   f"tiny ones have random weights), a local diffusers folder or a hub id "
                                   f"(owner/name); the pipeline class comes from its model_index.json")
    p.add_argument("--image", help="conditioning image file (image-to-video pipelines only)")
    p.add_argument("--config", type=Path, help="YAML preset (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set xattn.threshold=0.95 (repeatable)")
    p.add_argument("--height", type=int, help="video height in pixels, a multiple of 16 (default: the model's "
                                               "preset, config key generation.height)")
    p.add_argument("--width", type=int, help="video width in pixels, a multiple of 16 (default: the model's preset)")
    p.add_argument("--frames", type=int, help="number of frames, 4k+1 (default: the model's preset)")
    p.add_argument("--offload", choices=["model", "sequential"], help="diffusers CPU offload")
    p.add_argument("--device", help="auto (the default: a CUDA GPU if there is one), cpu, cuda or cuda:N")


def load_run(args: argparse.Namespace, extra: dict[str, Any]) -> RunConfig:
    """The run config of a command after every check that needs no model and no heavy import: environment
    variables, config file, options (``extra``), the --model name."""
    check_environment()
    run = load_config(args.config, args.overrides, extra=extra)
    check_model_name(run.model.path)
    return run


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


__all__ = ["DefaultsHelpFormatter", "add_model_options", "load_run", "model_option_values"]
