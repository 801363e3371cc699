"""``xvid compare``: dense vs XAttention videos from the same initial noise, scored and reported.

For each prompt and seed: the dense video and the XAttention video are generated from the same latents; their
float frames are kept (``*.npy``, float16 — 8× finer than the mp4's 8 bits) and every metric is computed on
them, never on the mp4s; both mp4s are written for viewing. Pairwise metrics (PSNR, SSIM, LPIPS) compare the
XAttention video with the dense one; scorers (temporal flickering, VBench, your own) score each video on
its own. An interrupted run resumes: finished videos and finished items are skipped.
Outputs in ``--out-dir``: one folder per item, ``report.json``, ``report.md`` and PNG plots (see ``report.py``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..prompts import read_prompts
from ..config import ConfigError, RunConfig
from ..video_io import write_json, write_mp4, write_npy, write_text
from .metrics import KNOWN_METRICS
from .report import VARIANTS, build_report, fmt, jsonable, markdown, plots, slug

PAIRWISE = tuple(KNOWN_METRICS)  # psnr, ssim, lpips: the XAttention video against the dense one


def parse_metrics(spec: str | Sequence[str]) -> tuple[list[str], list[str]]:
    """Split ``"psnr,ssim,flicker,vbench:a,b"`` into pairwise metrics and scorer specs (``["flicker", "vbench:a,b"]``).

    Items after ``name:`` that are neither a pairwise metric nor a registered scorer are arguments of that scorer.
    """
    from .scorers import available_scorers

    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    hooks_known = set(available_scorers())
    pairwise: list[str] = []
    hooks: list[str] = []
    for item in items:
        name = item.split(":", 1)[0]
        if item in PAIRWISE:
            pairwise.append(item)
        elif name in hooks_known:
            hooks.append(item)
        elif hooks and ":" in hooks[-1]:
            hooks[-1] += "," + item  # another argument of the previous hook, e.g. a VBench dimension
        else:
            raise ConfigError(f"unknown metric {item!r} in --metrics: use {', '.join(PAIRWISE)} or a hook "
                             f"({', '.join(sorted(hooks_known))})")
    return pairwise, hooks


def check_out_dir(out_dir: str | Path) -> Path:
    """Create ``out_dir`` if needed and check that files can be created in it (one-line ConfigError if not)."""
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out-dir {out_dir} exists and is not a directory")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".xvid-probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"cannot write in --out-dir {out_dir}: {exc.strerror or exc}") from None
    return out_dir


def check_prompts(prompts: Sequence[str]) -> None:
    """At least one prompt, and none empty (an empty prompt gives NaN videos): one-line ConfigError."""
    if not prompts:
        raise ConfigError("no prompts to compare")
    if any(not isinstance(p, str) or not p.strip() for p in prompts):
        raise ConfigError("a prompt is empty: give the text to generate from (e.g. --prompt \"a cat walks\")")


def _video(pipe: Any, run: RunConfig, variant: str, folder: Path, latents: Any, show_progress: bool) -> dict:
    """Generate (or reuse a finished) video; returns its record with the frames' path."""
    from ..generate import run_pipeline

    frames_path, record_path = folder / f"{variant}.npy", folder / f"{variant}.json"
    if frames_path.is_file() and record_path.is_file():
        return json.loads(record_path.read_text())
    result = run_pipeline(pipe, dataclasses.replace(run, dense=variant == "dense"), latents=latents,
                          show_progress=show_progress)
    write_npy(result.frames.astype(np.float16), frames_path)
    write_mp4(result.frames, folder / f"{variant}.mp4", fps=run.generation.fps)
    record = {"seconds_total": result.seconds_total, "seconds_per_step": result.seconds_per_step,
              "mean_density": result.mean_density, "xattn": result.xattn, "mp4": f"{variant}.mp4",
              "frames": f"{variant}.npy"}
    write_json(record, record_path)
    return record


def _score_item(folder: Path, prompt: str, pairwise: list[str], scorers: list[Any]) -> dict:
    """Score one item's two videos from their saved float frames: pairwise metrics, then every scorer."""
    from .errors import Unavailable
    from .metrics import compare_videos
    from .scorers import VideoItem

    frames = {v: np.load(folder / f"{v}.npy").astype(np.float32) for v in VARIANTS}
    values, skipped = compare_videos(frames["xattn"], frames["dense"], metrics=tuple(pairwise))
    hook_scores: dict[str, dict[str, float]] = {v: {} for v in VARIANTS}
    items = [VideoItem(frames=frames[v], path=folder / f"{v}.mp4", prompt=prompt) for v in VARIANTS]
    for scorer in scorers:
        try:
            scores = scorer.score(items, [prompt, prompt])
        except Unavailable as exc:
            skipped[scorer.name] = str(exc)
            continue
        for metric, per_video in scores.items():
            for variant, value in zip(VARIANTS, per_video):
                hook_scores[variant][metric] = value
    return {"pairwise": values, "hooks": hook_scores, "skipped": skipped}


def compare(run: RunConfig, prompts: Sequence[str], seeds: Sequence[int], metrics: str | Sequence[str],
            out_dir: str | Path, pipe: Any = None, show_progress: bool = True) -> dict:
    """Generate dense and XAttention videos for every (prompt, seed), score them, write the report."""
    from tqdm.auto import tqdm

    from ..generate import initial_latents
    from .scorers import make_scorers
    from ..pipelines.loading import load_pipeline

    pairwise, hook_specs = parse_metrics(metrics)
    if pairwise and importlib.util.find_spec("torchmetrics") is None:
        raise ConfigError(f"metrics {', '.join(pairwise)} need torchmetrics: pip install 'xattn-video[eval]'")
    scorers = make_scorers(hook_specs) if hook_specs else []
    check_prompts(prompts)
    out_dir = check_out_dir(out_dir)  # before the model loads: a bad place fails in a second, not after an hour
    if pipe is None:
        pipe = load_pipeline(run.model)
    items = [(p, s) for p in prompts for s in seeds]
    results = []
    bar = tqdm(items, desc="xvid compare", unit="video pair", disable=not show_progress)
    for index, (prompt, seed) in enumerate(bar):
        folder = out_dir / f"{index:03d}-{slug(prompt)}-seed{seed}"
        folder.mkdir(exist_ok=True)
        result_path = folder / "result.json"
        if result_path.is_file():
            results.append(json.loads(result_path.read_text()))
            continue
        item_run = dataclasses.replace(run, generation=dataclasses.replace(run.generation, prompt=prompt, seed=seed))
        latents = None
        records = {}
        for variant in VARIANTS:
            if not (folder / f"{variant}.npy").is_file() and latents is None:
                latents = initial_latents(pipe, item_run)
            records[variant] = _video(pipe, item_run, variant, folder, latents, show_progress=False)
        scores = _score_item(folder, prompt, pairwise, scorers)
        dense_s, xattn_s = records["dense"]["seconds_total"], records["xattn"]["seconds_total"]
        result = {
            "prompt": prompt, "seed": seed, "folder": folder.name, **scores,
            "seconds": {"dense": dense_s, "xattn": xattn_s},
            "seconds_per_step": {v: records[v]["seconds_per_step"] for v in VARIANTS},
            "speedup": dense_s / xattn_s if xattn_s > 0 else None,
            "mean_density": records["xattn"]["mean_density"],
            "density_per_step_layer": (records["xattn"]["xattn"] or {}).get("density_per_step_layer"),
        }
        write_json(jsonable(result), result_path)
        results.append(jsonable(result))
    report = build_report(run, results, pairwise, scorers)
    report["plots"] = plots(report, out_dir)
    if not report["plots"]:
        report["skipped"]["plots"] = "matplotlib is not installed: pip install 'xattn-video[eval]'"
    write_json(report, out_dir / "report.json")
    write_text(markdown(report), out_dir / "report.md")
    return report


def compare_cli(args: Any, run: RunConfig) -> int:
    """``xvid compare``: run ``compare`` and print a summary (user errors propagate to the CLI's handler)."""
    prompts = [args.prompt] if args.prompt is not None else read_prompts(args.prompts)
    report = compare(run, prompts, args.seeds, args.metrics, args.out_dir)
    means = report["means"]
    print(f"compared {len(report['items'])} video pairs in {args.out_dir}: "
          + ", ".join(f"{k} {fmt(v)}" for k, v in means.items() if v is not None))
    for name, reason in report["skipped"].items():
        print(f"skipped {name}: {reason}")
    print(f"report: {Path(args.out_dir) / 'report.md'}")
    return 0
