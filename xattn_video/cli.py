"""``xvid``: generate videos with XAttention, compare them with dense attention, benchmark the kernels."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from .cli_options import DefaultsHelpFormatter, add_model_options, load_run, model_option_values
from .config import TINY_MODELS, ConfigError
from .signals import LAUNCHED_ENV, Terminated, sigterm_raises, silence_stderr
# Every user mistake is one of these: the CLI prints one line and exits 2. Anything else is a bug: traceback.
# torch and diffusers load only after every check that needs no model, so `xvid --help`, argument errors and
# refusals of the config, the environment, --out and --model are instant (tests/test_cli_refusals.py).


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the user's input: one line, exit code 2. A module not imported yet raised none."""
    errors: list[type[BaseException]] = [ConfigError, FileNotFoundError]
    for module, name in (("xattn_video.video_io", "OutputPathError"),
                         ("xattn_video.kernels.inputs", "XAttentionInputError"),
                         ("xattn_video.pipelines.loading", "ModelLoadError"),
                         ("xattn_video.eval.scorers.registry", "ScorerSpecError")):
        if module in sys.modules:
            errors.append(getattr(sys.modules[module], name))
    return tuple(errors)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    add_model_options(p)
    p.add_argument("--steps", type=int, help="denoising steps (default: the model's preset)")
    p.add_argument("--flow-shift", type=float, dest="flow_shift",
                   help="the sampler's flow-matching shift (config key generation.flow_shift; default: the model's)")
    p.add_argument("--clause-weight", type=float, dest="clause_weight",
                   help="blend in the prediction of each clause of an 'A and B' prompt with this weight (config key "
                        "generation.clause_weight; 0 off; Wan family; default: the model's)")
    p.add_argument("--cache", metavar="NAME",
                   help="a diffusers step cache: firstblock, taylorseer, magcache, fastercache or pab (config key "
                        "cache.name; its parameters: cache.<name>.<key>, see README 'Step caches')")


def _cli_values(args: argparse.Namespace) -> dict[str, Any]:
    """Options given on the command line, as a nested config dict (None = not given)."""
    extra = model_option_values(args)
    for key in ("steps", "flow_shift", "clause_weight", "prompt", "seed"):
        if getattr(args, key, None) is not None:
            extra["generation"][key] = getattr(args, key)
    if getattr(args, "dense", False):
        extra["dense"] = True
    if getattr(args, "cache", None) is not None:
        extra["cache"] = {"name": args.cache}
    return extra


def cmd_generate(args: argparse.Namespace) -> int:
    from .video_io import check_out

    run = load_run(args, _cli_values(args))
    check_out(args.out)
    if args.gpus is not None and args.gpus < 1:
        raise ConfigError(f"--gpus must be >= 1, got {args.gpus}")
    from .generate import NonFiniteVideoError, generate  # torch, diffusers: only now
    from .launch import check_launch, generate_on_ranks, in_rank, launch

    world = int(os.environ.get("WORLD_SIZE", "1")) if in_rank() else 1
    gpus = args.gpus if args.gpus is not None else world
    try:
        if gpus > 1 or world > 1:
            if not in_rank():  # the parent: check everything, then start the ranks (they re-run this command)
                check_launch(run, gpus)
                return launch(gpus, ["-m", "xattn_video.cli", *args.argv])
            generate_on_ranks(run, args.out, gpus, report=_report)
            return 0
        _report(run, generate(run, args.out))
    except NonFiniteVideoError as exc:  # not the user's input, but a failed run: one line, no video
        print(f"xvid generate: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _report(run: Any, result: Any) -> None:
    """The summary printed after a generation (rank 0 only in multi-GPU runs)."""
    g = run.generation
    steps = g.steps
    frames, height, width = result.frames.shape[:3]
    line = (f"wrote {result.video_path} ({frames} frames {width}x{height}, {steps} steps in "
            f"{result.seconds_total:.1f} s, {result.seconds_total / max(1, steps):.2f} s/step)")
    if result.xattn is not None:
        density = result.mean_density
        line += (f"; XAttention τ={run.xattn.threshold}, {run.xattn.warmup_steps} warmup steps, mean density "
                 f"{'n/a (all dense)' if density is None else f'{density:.3f}'} over "
                 f"{result.xattn['sparse_calls']} sparse layer calls")
    else:
        line += "; dense attention"
    if result.cache is not None:
        c = result.cache
        line += (f"; cache {c['name']}: computed-step fraction {c['computed_step_fraction']:.2f} ("
                 + ", ".join(f"{n} {k}" for k, n in c["calls"].items() if n) + " transformer calls)")
        window = c.get("window")
        if window:  # the cache was made to compute the composed steps and two after them (caches/window.py)
            changed = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in window["changed"].items())
            line += (f", steps 0-{window['compute_first'] - 1} computed around the clause composition"
                     + (f" ({changed})" if changed else ""))
    if result.clauses:  # each step costs (2 + clauses)x the batch: say why it is slower
        line += (f"; {'refereed ' if g.clause_referee else ''}clause composition: {len(result.clauses)} clauses "
                 f"at weight {g.clause_weight:g}"
                 f"{'' if not g.clause_start else f' from step {g.clause_start}'}"
                 f"{'' if g.clause_steps is None else f' before step {g.clause_steps}'}"
                 f"{'' if not g.clause_suffix else f', each clause + {g.clause_suffix!r}'}")
    parallel = result.meta.get("parallel")
    if parallel:
        line += (f"; {parallel['world_size']} ranks (Ulysses degree {parallel['ulysses_degree']}, "
                 f"{parallel['backend']})")
    print(line)
    print(f"run record: {result.json_path}")
    if result.meta.get("magcache_config"):
        print(f"MagCache ratios: {result.meta['magcache_config']} (use it with --config)")
    if run.model.path in TINY_MODELS:
        print("note: the built-in tiny models have random weights, so their videos are noise")


def cmd_compare(args: argparse.Namespace) -> int:
    from .eval.compare_inputs import check_compare_inputs
    from .prompts import read_prompts

    run = load_run(args, _cli_values(args))
    prompts = [args.prompt] if args.prompt is not None else read_prompts(args.prompts)
    inputs = check_compare_inputs(prompts, args.seeds, args.metrics, args.out_dir)
    from .eval.compare import compare_cli  # torch, diffusers: only now

    return compare_cli(inputs, run)


def cmd_bench(argv: Sequence[str]) -> int:
    if "--e2e" in argv:  # end-to-end model benchmark (xattn_video/bench/e2e.py)
        from .bench.e2e import main as e2e_main

        return e2e_main([a for a in argv if a != "--e2e"])
    if "--kernels" in argv:  # Hopper kernel variants and 8-bit attention vs cuDNN (xattn_video/bench/kernels_hopper.py)
        from .bench.kernels_hopper import main as kernels_main

        return kernels_main([a for a in argv if a != "--kernels"])
    from .bench.operator import main as bench_main

    return bench_main(list(argv))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xvid", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate one video (XAttention unless --dense)",
                         formatter_class=DefaultsHelpFormatter)
    gen.add_argument("--prompt", help="text to generate from (default: the model's default prompt, "
                                      "config key generation.prompt)")
    gen.add_argument("--seed", type=int, help="seed of the initial noise (default: config key generation.seed, 0)")
    gen.add_argument("--dense", action="store_true", help="stock dense attention (no XAttention)")
    gen.add_argument("--out", default="video.mp4", help="mp4 path; the run record goes next to it")
    gen.add_argument("--gpus", type=int, metavar="N",
                     help="spread one generation over N ranks (Ulysses context parallelism; N must divide the "
                          "attention heads); with --device cpu the ranks run on the CPU over gloo")
    _add_run_options(gen)
    gen.set_defaults(func=cmd_generate)

    cmp = sub.add_parser("compare", help="dense vs XAttention videos from the same noise, with quality metrics",
                         formatter_class=DefaultsHelpFormatter,
                         description="Dense vs XAttention videos from the same noise, scored. Resuming into an "
                         "existing --out-dir reuses a saved video or score only if what produced it (config, full "
                         "prompt, seed, metrics, scorer environment, versions) is unchanged; anything else is "
                         "recomputed, with a line on stderr saying what changed.")
    group = cmp.add_mutually_exclusive_group(required=True)
    group.add_argument("--prompt", help="one prompt to compare on")
    group.add_argument("--prompts", type=Path, help="text file, one prompt per line")
    cmp.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of the initial noise, one pair each")
    cmp.add_argument("--metrics", default="psnr,ssim,lpips,flicker",
                     help="comma list: psnr, ssim, lpips, flicker, vbench:<dim>[,<dim>...] or a registered scorer")
    cmp.add_argument("--out-dir", required=True, help="folder of the videos and the report (a re-run resumes)")
    _add_run_options(cmp)
    cmp.set_defaults(func=cmd_compare)

    from .calibrate.cli import add_parser as add_calibrate_parser

    add_calibrate_parser(sub)

    bench = sub.add_parser("bench", help="GPU benchmark of the kernels; --e2e: of whole models; --kernels: Hopper "
                                         "kernel variants and 8-bit attention (see benchmarks/); xvid bench --help, "
                                         "--e2e --help and --kernels --help list their options",
                           add_help=False)
    bench.set_defaults(func=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .cli_warnings import install as install_warnings

    argv = list(sys.argv[1:] if argv is None else argv)
    install_warnings(argv[0] if argv and not argv[0].startswith("-") else "")
    try:
        with sigterm_raises():  # a `kill` unwinds too, so temporary files are removed (signals.py)
            if argv and argv[0] == "bench":
                return cmd_bench(argv[1:])
            args = build_parser().parse_args(argv)
            args.argv = argv
            try:
                return args.func(args)
            except _user_errors() as exc:
                where = f" (rank {os.environ['RANK']})" if "RANK" in os.environ and "WORLD_SIZE" in os.environ else ""
                print(f"xvid {args.command}: error{where}: {exc}", file=sys.stderr)
                return 2
    except (KeyboardInterrupt, Terminated) as exc:
        stopped = isinstance(exc, KeyboardInterrupt)
        if os.environ.get(LAUNCHED_ENV):  # a rank of `--gpus N`: the parent prints the one line
            silence_stderr()
        else:
            print(f"xvid{' ' + argv[0] if argv else ''}: {'interrupted' if stopped else 'terminated'}", file=sys.stderr)
        return 130 if stopped else exc.exit_code  # 128 + the signal, as shells report it


if __name__ == "__main__":
    raise SystemExit(main())
