"""When does the mini model commit an object's colour and its motion? The clean-video prediction at each sampling
step, read like a finished video.

    python benchmarks/mini_commit_probe.py --pairs 16 --out-dir benchmarks/results

For held-out two-object (prompt, seed) pairs whose objects move different ways, the sample is drawn with a plain
Euler sampler (``--steps``, shift ``--shift``, guidance 1) and at every step the predicted clean video
x0 = x_σ − σ·v is decoded and read by ``prompt_match``'s object reader. Per step, over the objects: "colour" — a
blob of the object's colour is found; "final" — found and moving the way it moves in the finished video (the motion
of that colour is decided); "prompt" — moving the asked way. Two-object binding fails (README: 13–16 of 32
directions) if the blobs' trajectories are fixed before each blob's colour is: then, when the motion is decided,
nothing tells which blob is the red one. CPU: ~30 s per pair.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xattn_video.eval.scorers.prompt_match import read_objects  # noqa: E402
from xattn_video.mini.euler import decode_frames, euler_sample  # noqa: E402
from xattn_video.mini.grammar import held_out_pairs, parse_prompt  # noqa: E402
from xattn_video.mini.model import load_folder  # noqa: E402
from xattn_video.video_io import write_text  # noqa: E402


def trajectory(pipe, prompt: str, seed: int, steps: int, shift: float, shape: tuple[int, int, int]):
    """[(σ, readings of the x0 prediction)] per step, then (0, readings of the sample)."""
    objects = parse_prompt(prompt)
    out = []

    def read(z):
        return read_objects(decode_frames(pipe, z), objects)

    z = euler_sample(pipe, prompt, seed, steps, shift, shape,
                     after_step=lambda sigma, x, v: out.append((float(sigma), read(x - sigma * v))))
    out.append((0.0, read(z)))
    return objects, out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=16, help="two-object pairs with different directions to read")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--shift", type=float, default=6.0, help="the shipped sampler's shift")
    p.add_argument("--shape", type=int, nargs=3, default=(33, 128, 128))
    p.add_argument("--out-dir", type=Path, default=None)
    args = p.parse_args(argv)
    _, pipe = load_folder()
    pairs = [(pr, s) for pr, s in held_out_pairs(200) if len(parse_prompt(pr)) == 2
             and len({o.direction for o in parse_prompt(pr)}) == 2][:args.pairs]
    per_step: dict[int, dict[str, list[bool]]] = {}
    sigmas: list[float] = []
    for prompt, seed in pairs:
        objects, traj = trajectory(pipe, prompt, seed, args.steps, args.shift, tuple(args.shape))
        final = traj[-1][1]
        sigmas = [s for s, _ in traj]
        for i, (_, readings) in enumerate(traj):
            row = per_step.setdefault(i, {"colour": [], "final": [], "prompt": []})
            for obj, r, f in zip(objects, readings, final):
                row["colour"].append(r.found)
                row["final"].append(bool(r.found and f.found and r.direction == f.direction))
                row["prompt"].append(bool(r.found and r.direction == obj.direction))
        print(f"{prompt!r} seed {seed}: final directions "
              + ", ".join(f"{o.colour} {f.direction if f.found else 'not found'} (asked {o.direction})"
                          for o, f in zip(objects, final)), flush=True)
    lines = ["| step | σ | colour found | moving as in the finished video | moving the asked way |",
             "|---:|---:|---:|---:|---:|"]
    for i, row in per_step.items():
        label = "sample" if i == len(per_step) - 1 else str(i)
        lines.append(f"| {label} | {sigmas[i]:.3f} | {np.mean(row['colour']):.2f} | {np.mean(row['final']):.2f} | "
                     f"{np.mean(row['prompt']):.2f} |")
    table = "\n".join(lines)
    print(table)
    if args.out_dir is not None:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        write_text(f"# When the mini model commits colour and motion ({len(pairs)} two-object pairs, "
                   f"{args.steps} Euler steps, shift {args.shift:g}, CPU)\n\n"
                   f"`python benchmarks/mini_commit_probe.py --pairs {args.pairs}`. Per step: the clean-video "
                   f"prediction x0 = x − σ·v read by prompt_match's object reader; shares of the "
                   f"{2 * len(pairs)} objects.\n\n{table}\n", args.out_dir / "mini-commit-probe-cpu.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
