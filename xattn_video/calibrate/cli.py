"""``xvid calibrate``: argument parsing and the command (cli.py only registers it)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..cli_options import DefaultsHelpFormatter, add_model_options, load_run, model_option_values
from ..config import TINY_MODELS, ConfigError
from .defaults import DEFAULT_SAMPLES, DEFAULT_TAUS


def _taus(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of numbers, got {text!r}") from None


def add_parser(sub: Any) -> None:
    p = sub.add_parser("calibrate", formatter_class=DefaultsHelpFormatter, help="per-layer / per-head τ from a short profiling run; writes a config YAML",
                       description="Profile a few prompts (dense trajectory) and choose τ per layer (or head) for "
                                   "one target; writes a YAML that `xvid generate --config` takes as is, plus "
                                   "a report (.md), a plot (.png) and the profile (.json) next to it.")
    p.add_argument("--prompts", type=Path, required=True, help="text file, one prompt per line (# comments)")
    p.add_argument("--steps", type=int, default=2, dest="profile_steps",
                   help="sparse-eligible denoising steps profiled per prompt, after the warmup steps; the "
                        "schedule length is generation.steps")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-recall", type=float, help="keep at least this attention mass, in (0, 1]")
    target.add_argument("--target-error", type=float, help="output relative error vs dense at most this, >= 0")
    target.add_argument("--density", type=float, help="mean density budget in (0, 1], spent where recall gains most")
    p.add_argument("--per-head", action="store_true", help="one τ per head (default: one per layer)")
    p.add_argument("--out", required=True, help="YAML to write (report, plot, profile go next to it)")
    p.add_argument("--taus", type=_taus, default=list(DEFAULT_TAUS),
                   help="candidate τ, comma list")
    p.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, help="query blocks sampled per attention call")
    p.add_argument("--seed", type=int, help="generation seed (initial noise)")
    add_model_options(p)
    p.set_defaults(func=cmd_calibrate)


def _extra(args: argparse.Namespace) -> dict[str, Any]:
    extra = model_option_values(args)
    if args.seed is not None:
        extra["generation"]["seed"] = args.seed
    return extra


def cmd_calibrate(args: argparse.Namespace) -> int:
    from ..prompts import read_prompts
    from .checks import check_samples, check_target, check_yaml_out, profiled_steps

    # every check that needs no model first, before torch loads: a bad input is refused in a second
    check_target(args.target_recall, args.target_error, args.density)
    if not str(args.out).strip():
        raise ConfigError("--out is empty; give the YAML file to write, e.g. calib.yaml")
    out = Path(args.out)
    check_yaml_out(out)
    prompts = read_prompts(args.prompts)
    run = load_run(args, _extra(args))
    profiled_steps(run, args.profile_steps)
    check_samples(args.samples)
    from .report import summary_line  # torch, diffusers: only now
    from .run import run_calibration

    result = run_calibration(run, prompts, args.profile_steps, target_recall=args.target_recall,
                             target_error=args.target_error, density=args.density, per_head=args.per_head,
                             out=out, taus=args.taus, samples=args.samples)
    print(f"{summary_line(result.solution)}; {result.profile.num_calls} attention calls profiled in "
          f"{result.seconds:.1f} s")
    for note in result.solution.notes:
        print(f"note: {note}")
    print(f"wrote {result.files['config']} (use: xvid generate --config {result.files['config']}); report "
          f"{result.files['report']}")
    if run.model.path in TINY_MODELS:
        print("note: the built-in tiny model has random weights; its thresholds say nothing about real models")
    return 0
