"""Step caches (diffusers' hooks) and XAttention on the trained mini model: each cache alone, XAttention alone and
the combinations, each against the stock dense video from the same noise.

    python benchmarks/quality_caches.py --model mini --pairs 3 --out-dir benchmarks/results            # CPU
    python benchmarks/quality_caches.py --model mini-large --pairs 8 --out-dir $OUT                     # GPU

Per setting, means over held-out (prompt, seed) pairs (``xattn_video.mini.grammar.held_out_pairs``): PSNR / SSIM
/ LPIPS (when available) against dense, ``prompt_match`` (dense's on the dense row), seconds per video and the
computed-step fraction (the share of denoising steps the cache computed; XAttention alone: 1). Caches run at
diffusers' default parameters, plus the variants of ``--variants``; MagCache's ratios come from one calibration
run per calibration prompt (held-out pairs of another seed, not the evaluation ones). Writes
``quality-caches-<model>-<device>.md|json|png`` after every pair (the plot: PSNR against speedup, the frontier).
The computed-step fractions of FirstBlockCache and MagCache are what ``xvid bench --e2e --cache NAME
--computed-fraction F`` takes for the full-size projection.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_CACHES = ["firstblock", "taylorseer", "magcache", "fastercache", "pab"]
DEFAULT_VARIANTS = ["taylorseer:cache_interval=2", "firstblock:threshold=0.2"]
PSNR_CAP = 100.0  # identical videos (PSNR inf) count as this in means


def parse_variant(text: str) -> tuple[str, dict]:
    """``name[:key=value,...]`` -> (name, params); values as YAML."""
    import yaml

    name, _, rest = text.partition(":")
    params = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        params[key] = yaml.safe_load(value)
    return name, params


def label(name: str, params: dict) -> str:
    return name + (" (" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")" if params else "")


def main(argv: list[str] | None = None) -> int:
    import torch

    from xattn_video.caches.params import CacheConfig, cache_problem
    from xattn_video.config import load_config
    from xattn_video.eval.compare import warm_up
    from xattn_video.eval.metrics import compare_videos
    from xattn_video.eval.scorers.prompt_match import format_attributes, score_video
    from xattn_video.generate import run_pipeline
    from xattn_video.mini.grammar import held_out_pairs, parse_prompt
    from xattn_video.pipelines.loading import load_pipeline
    from xattn_video.video_io import write_json, write_text

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mini", help="mini or mini-large")
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--caches", nargs="*", default=DEFAULT_CACHES, help="caches at diffusers' defaults")
    p.add_argument("--variants", nargs="*", default=DEFAULT_VARIANTS, help="more settings, name:key=value,...")
    p.add_argument("--metrics", default="psnr,ssim,lpips")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the preset's, 20)")
    p.add_argument("--device", default="auto")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any other config key (e.g. xattn.threshold=0.8)")
    p.add_argument("--rerender", type=Path, help="only rewrite md/json/png from this results JSON (same options)")
    p.add_argument("--tag", default="", help="suffix of the result files' names (e.g. variants)")
    p.add_argument("--out-dir", type=Path, required=True)
    args = p.parse_args(argv)

    overrides = [f"model.path={args.model}", f"model.device={args.device}", *args.overrides]
    base = load_config(None, overrides + ([f"generation.steps={args.steps}"] if args.steps else []))
    pipe = load_pipeline(base.model)
    pairs = held_out_pairs(args.pairs)
    metrics = [m for m in args.metrics.split(",") if m]
    caches = [(c, {}) for c in args.caches] + [parse_variant(v) for v in args.variants]
    for name, params in caches:
        problem = cache_problem(CacheConfig(name=name, **{name: params}))
        if problem:
            p.error(problem)

    def for_pair(run, prompt: str, seed: int):
        return dataclasses.replace(run, generation=dataclasses.replace(run.generation, prompt=prompt, seed=seed))

    def with_cache(run, name: str | None, params: dict):
        cache = CacheConfig(name=name, **({name: params} if name else {}))
        return dataclasses.replace(run, cache=cache)

    started = time.time()
    if args.rerender is not None:  # the same settings, no generation: MagCache's ratios are not needed
        caches = [(n, {"mag_ratios": [1.0]} if n == "magcache" else prm) for n, prm in caches]
    # MagCache's ratios: one calibration run per calibration prompt (not the evaluation pairs), mean per step
    if args.rerender is None and any(name == "magcache" for name, _ in caches):
        series = []
        for prompt, seed in held_out_pairs(2, seed=99):
            r = with_cache(for_pair(dataclasses.replace(base, dense=True), prompt, seed), "magcache", {"calibrate": True})
            series.append(run_pipeline(pipe, r, show_progress=False, decode=False).cache["calibrated_mag_ratios"])
        ratios = [round(float(v), 5) for v in np.mean(series, axis=0)]
        caches = [(n, {**({"mag_ratios": ratios} if n == "magcache" else {}), **prm}) for n, prm in caches]
        print(f"MagCache ratios ({len(series)} calibration runs): {ratios}", file=sys.stderr, flush=True)

    # settings: name -> (run, shown params); XAttention uses the preset (τ 0.9, warmup 2 on mini)
    settings: list[tuple[str, object, dict]] = [("XAttention", dataclasses.replace(base, dense=False), {})]
    for name, params in caches:
        shown = {k: v for k, v in params.items() if k != "mag_ratios"}
        settings.append((label(name, shown), with_cache(dataclasses.replace(base, dense=True), name, params), shown))
        settings.append((f"XAttention + {label(name, shown)}", with_cache(dataclasses.replace(base, dense=False), name,
                                                                          params), shown))

    if args.rerender is None:
        warm_up(pipe, for_pair(base, *pairs[0]))  # xvid compare's untimed warm-up: each path the timed runs take
    rows: dict[str, dict[str, list[float]]] = {}
    dense_frames = []

    def record(name: str, result, prompt: str, ref) -> None:
        row = rows.setdefault(name, {})
        row.setdefault("seconds", []).append(result.seconds_total)
        fraction = (result.cache or {}).get("computed_step_fraction")
        row.setdefault("computed_step_fraction", []).append(1.0 if fraction is None else fraction)
        density = result.mean_density
        row.setdefault("density", []).append(1.0 if density is None else density)
        for key, value in score_video(result.frames, parse_prompt(prompt)).items():
            row.setdefault(key, []).append(value)
        if ref is not None:
            values, _ = compare_videos(result.frames, ref, metrics)
            for key, value in values.items():
                if value is not None:
                    row.setdefault(key, []).append(value)

    device = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else "cpu"
    stem = f"quality-caches-{args.model}-{device.lower().replace(' ', '-')}" + (f"-{args.tag}" if args.tag else "")

    def write_results(done: int) -> None:
        table_rows = []
        for name, row in rows.items():
            mean = {k: float(np.nanmean(np.minimum(v, PSNR_CAP) if k == "psnr" else v)) for k, v in row.items()}
            if "psnr" in row:
                mean["identical_pairs"] = int(np.sum(np.isinf(row["psnr"])))
            mean["setting"] = name
            mean["pairs"] = len(row["seconds"])
            table_rows.append(mean)
        dense_s, dense_pm = table_rows[0]["seconds"], table_rows[0]["prompt_match"]
        for r in table_rows:
            r["speedup"] = dense_s / r["seconds"]
            r["prompt_match_vs_dense_points"] = 100 * (r["prompt_match"] - dense_pm)
        header = ("| setting | pairs | computed steps | density | PSNR dB | SSIM | LPIPS | prompt_match (Δ vs dense, "
                  "points; colour/shape/dir) | s/video | × dense |")
        lines = [header, "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
        for r in table_rows:
            def fmt(key: str, spec: str) -> str:
                return format(r[key], spec) if key in r else "–"
            psnr = fmt("psnr", ".2f") + (f" ({r['identical_pairs']} identical)" if r.get("identical_pairs") else "")
            lines.append(f"| {r['setting']} | {r['pairs']} | {r['computed_step_fraction']:.2f} | {r['density']:.3f} | "
                         f"{psnr} | {fmt('ssim', '.4f')} | {fmt('lpips', '.4f')} | "
                         f"{r['prompt_match']:.2f} ({r['prompt_match_vs_dense_points']:+.0f}; {format_attributes(r)}) | "
                         f"{r['seconds']:.2f} | "
                         f"{r['speedup']:.2f} |")
        table = "\n".join(lines)
        print(table)
        g = base.generation
        spread = max(max(r["seconds"]) / min(r["seconds"]) for r in rows.values())
        title = (f"# Step caches and XAttention on the mini model: `{args.model}` ({g.frames}x{g.height}x{g.width}, "
                 f"{g.steps} steps), {device}")
        note = (f"{done} of {len(pairs)} held-out (prompt, seed) pairs; every setting from the dense video's noise; "
                f"caches at diffusers' defaults unless given; XAttention τ {base.xattn.threshold}, "
                f"{base.xattn.warmup_steps} dense warmup steps. PSNR: a pair whose video equals dense (the cache never "
                f"served a step there) counts as {PSNR_CAP:g} dB in the mean. 'computed steps': the share of denoising steps the "
                f"cache computed (FirstBlockCache/MagCache: skipped steps; TaylorSeer: predicted; PAB/FasterCache: "
                f"attention reused). prompt_match: the share of objects with all three attributes right, then per "
                f"attribute (a video's share, then the mean over pairs: with few pairs one object moves a column by 25 "
                f"points or more); read each attribute as 'keeps what dense does'. Times: "
                + (f"a CPU, where the `torch` backend does not skip dropped blocks (XAttention costs what dense does there) and "
                   f"one setting's videos took up to {spread:.1f}x longer on one pair than on another, so these times "
                   f"are not speed; the plot uses the computed-step fraction instead (XAttention's own saving, cheaper "
                   "computed steps, is not on that axis), and the speed that matters is `xvid bench --e2e --cache` "
                   "on a GPU." if device == "cpu" else "this GPU.")
                + f" `python benchmarks/quality_caches.py {' '.join(argv if argv is not None else sys.argv[1:])}`.")
        args.out_dir.mkdir(parents=True, exist_ok=True)
        write_text(f"{title}\n\n{note}\n\n{table}\n", args.out_dir / f"{stem}.md")
        write_json({"model": args.model, "device": device, "pairs": pairs[:done], "generation": dataclasses.asdict(g),
                    "settings": {name: shown for name, _, shown in settings}, "rows": table_rows, "per_pair": rows},
                   args.out_dir / f"{stem}.json")
        plot(table_rows, args.out_dir / f"{stem}.png", title.lstrip("# "),
             "computed_step_fraction" if device == "cpu" else "speedup")
        print(f"wrote {args.out_dir / stem}.md|json|png", file=sys.stderr)

    if args.rerender is not None:
        import json

        saved = json.loads(args.rerender.read_text())
        rows.update({name: {k: [float(x) for x in v] for k, v in row.items()} for name, row in saved["per_pair"].items()})
        pairs = [tuple(p) for p in saved["pairs"]]
        write_results(len(pairs))
        return 0
    print(f"{args.model}: {len(pairs)} pairs, {len(settings)} settings + dense", file=sys.stderr, flush=True)
    for i, (prompt, seed) in enumerate(pairs):
        r = dataclasses.replace(for_pair(base, prompt, seed), dense=True)
        dense = run_pipeline(pipe, r, show_progress=False)
        dense_frames.append(dense.frames)
        record("dense (stock)", dense, prompt, None)
        for name, run, _ in settings:
            record(name, run_pipeline(pipe, for_pair(run, prompt, seed), show_progress=False), prompt, dense.frames)
        print(f"  pair {i + 1}/{len(pairs)} done ({time.time() - started:.0f} s)", file=sys.stderr, flush=True)
        write_results(i + 1)
    return 0


def plot(rows: list[dict], path: Path, title: str, x_key: str = "speedup") -> None:
    """PSNR against ``x_key``: caches alone, with XAttention, XAttention alone, and the frontier.

    ``speedup`` (measured, GPU runs) or ``computed_step_fraction`` (CPU runs on a shared machine, whose times are
    too noisy to plot: the share of steps computed, lower is faster)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot", file=sys.stderr)
        return
    from xattn_video.video_io import write_figure

    fig, ax = plt.subplots(figsize=(7.2, 4.8))
    pts = [r for r in rows if "psnr" in r]
    for group, marker, pick in (("cache alone (dense attention)", "o", lambda s: not s.startswith("XAttention")),
                                ("XAttention + cache", "s", lambda s: s.startswith("XAttention +")),
                                ("XAttention alone", "*", lambda s: s == "XAttention")):
        sel = [r for r in pts if pick(r["setting"])]
        if sel:
            ax.scatter([r[x_key] for r in sel], [r["psnr"] for r in sel], marker=marker, s=70 if marker == "*" else 30,
                       label=group)
        for r in sel:
            ax.annotate(r["setting"].replace("XAttention + ", "X+"), (r[x_key], r["psnr"]), fontsize=6,
                        textcoords="offset points", xytext=(3, 3))
    faster = (lambda r: -r[x_key]) if x_key == "speedup" else (lambda r: r[x_key])
    frontier, best = [], -np.inf
    for r in sorted(pts, key=faster):
        if r["psnr"] > best:
            best = r["psnr"]
            frontier.append(r)
    if len(frontier) > 1:
        ax.plot([r[x_key] for r in frontier], [r["psnr"] for r in frontier], "k--", lw=0.8, label="frontier")
    ax.axhline(25, color="grey", lw=0.6, ls=":")
    if x_key == "speedup":
        ax.set_xlabel("speedup vs dense (measured wall time per video)")
    else:
        ax.set_xlabel("computed-step fraction (share of steps the cache computed; lower = faster)")
        ax.invert_xaxis()
    ax.set_ylabel(f"PSNR against dense (dB; identical = {PSNR_CAP:g})")
    ax.set_title(title, fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    write_figure(fig, path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
