"""``xvid compare``: dense vs XAttention videos from the same initial noise, scored and reported.

For each prompt and seed: the dense video and the XAttention video are generated from the same latents; their
float frames are kept (``*.npy``, float16 — 8× finer than the mp4's 8 bits) and every metric is computed on
them, never on the mp4s; both mp4s are written for viewing. Pairwise metrics (PSNR, SSIM, LPIPS) compare the
XAttention video with the dense one; scoring hooks (temporal flickering, VBench, your own) score each video on
its own. An interrupted run resumes: finished videos and finished items are skipped.
Outputs in ``--out-dir``: one folder per item, ``report.json``, ``report.md`` and PNG plots.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .config import TINY_MODELS, ConfigError, RunConfig, to_container
from .metrics import KNOWN_METRICS
from .video_io import write_json, write_mp4, write_text

PAIRWISE = tuple(KNOWN_METRICS)  # psnr, ssim, lpips: the XAttention video against the dense one
VARIANTS = ("dense", "xattn")


def parse_metrics(spec: str | Sequence[str]) -> tuple[list[str], list[str]]:
    """Split ``"psnr,ssim,flicker,vbench:a,b"`` into pairwise metrics and hook specs (``["flicker", "vbench:a,b"]``).

    Items after ``name:`` that are neither a pairwise metric nor a registered hook are arguments of that hook.
    """
    from .hooks import available_hooks

    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    hooks_known = set(available_hooks())
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


def read_prompts(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"prompt file not found: {path}")
    prompts = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not prompts:
        raise ConfigError(f"prompt file {path} has no prompts (one per line; # starts a comment)")
    return prompts


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "prompt"


def _jsonable(x: Any) -> Any:
    """Infinite PSNR (identical videos) is written as the string "inf": JSON has no infinity."""
    if isinstance(x, float) and math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def _video(pipe: Any, run: RunConfig, variant: str, folder: Path, latents: Any, show_progress: bool) -> dict:
    """Generate (or reuse a finished) video; returns its record with the frames' path."""
    from .generate import run_pipeline

    frames_path, record_path = folder / f"{variant}.npy", folder / f"{variant}.json"
    if frames_path.is_file() and record_path.is_file():
        return json.loads(record_path.read_text())
    result = run_pipeline(pipe, dataclasses.replace(run, dense=variant == "dense"), latents=latents,
                          show_progress=show_progress)
    tmp = folder / f".{variant}.tmp.npy"
    np.save(tmp, result.frames.astype(np.float16))
    tmp.replace(frames_path)
    write_mp4(result.frames, folder / f"{variant}.mp4", fps=run.generation.fps)
    record = {"seconds_total": result.seconds_total, "seconds_per_step": result.seconds_per_step,
              "mean_density": result.mean_density, "xattn": result.xattn, "mp4": f"{variant}.mp4",
              "frames": f"{variant}.npy"}
    write_json(record, record_path)
    return record


def _score_item(folder: Path, prompt: str, pairwise: list[str], hooks: list[Any]) -> dict:
    from .hooks import HookUnavailable, VideoItem
    from .metrics import compare_videos

    frames = {v: np.load(folder / f"{v}.npy").astype(np.float32) for v in VARIANTS}
    values, skipped = compare_videos(frames["xattn"], frames["dense"], metrics=tuple(pairwise))
    hook_scores: dict[str, dict[str, float]] = {v: {} for v in VARIANTS}
    items = [VideoItem(frames=frames[v], path=folder / f"{v}.mp4", prompt=prompt) for v in VARIANTS]
    for hook in hooks:
        try:
            scores = hook.score(items, [prompt, prompt])
        except HookUnavailable as exc:
            skipped[hook.name] = str(exc)
            continue
        for metric, per_video in scores.items():
            for variant, value in zip(VARIANTS, per_video):
                hook_scores[variant][metric] = value
    return {"pairwise": values, "hooks": hook_scores, "skipped": skipped}


def compare(run: RunConfig, prompts: Sequence[str], seeds: Sequence[int], metrics: str | Sequence[str],
            out_dir: str | Path, pipe: Any = None, show_progress: bool = True) -> dict:
    """Generate dense and XAttention videos for every (prompt, seed), score them, write the report."""
    from tqdm.auto import tqdm

    from .generate import check_inputs, initial_latents
    from .hooks import make_hooks
    from .pipelines.loading import load_pipeline

    pairwise, hook_specs = parse_metrics(metrics)
    if pairwise and importlib.util.find_spec("torchmetrics") is None:
        raise ConfigError(f"metrics {', '.join(pairwise)} need torchmetrics: pip install 'xattn-video[eval]'")
    hooks = make_hooks(hook_specs) if hook_specs else []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if pipe is None:
        check_inputs(run)  # I2V image present and readable, before any model loads
        pipe = load_pipeline(run.model)
    items = [(p, s) for p in prompts for s in seeds]
    results = []
    bar = tqdm(items, desc="xvid compare", unit="video pair", disable=not show_progress)
    for index, (prompt, seed) in enumerate(bar):
        folder = out_dir / f"{index:03d}-{_slug(prompt)}-seed{seed}"
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
        scores = _score_item(folder, prompt, pairwise, hooks)
        dense_s, xattn_s = records["dense"]["seconds_total"], records["xattn"]["seconds_total"]
        result = {
            "prompt": prompt, "seed": seed, "folder": folder.name, **scores,
            "seconds": {"dense": dense_s, "xattn": xattn_s},
            "seconds_per_step": {v: records[v]["seconds_per_step"] for v in VARIANTS},
            "speedup": dense_s / xattn_s if xattn_s > 0 else None,
            "mean_density": records["xattn"]["mean_density"],
            "density_per_step_layer": (records["xattn"]["xattn"] or {}).get("density_per_step_layer"),
        }
        write_json(_jsonable(result), result_path)
        results.append(_jsonable(result))
    report = _report(run, results, pairwise, hooks)
    report["plots"] = _plots(report, out_dir)
    if not report["plots"]:
        report["skipped"]["plots"] = "matplotlib is not installed: pip install 'xattn-video[eval]'"
    write_json(report, out_dir / "report.json")
    write_text(markdown(report), out_dir / "report.md")
    return report


def _num(x: Any) -> float | None:
    if x == "inf":
        return math.inf
    return float(x) if isinstance(x, (int, float)) else None


def _mean(values: list[Any]) -> float | None:
    nums = [v for v in (_num(x) for x in values) if v is not None]
    return sum(nums) / len(nums) if nums else None


def _report(run: RunConfig, results: list[dict], pairwise: list[str], hooks: list[Any]) -> dict:
    means: dict[str, Any] = {m: _mean([r["pairwise"].get(m) for r in results]) for m in pairwise}
    hook_metrics = sorted({m for r in results for v in VARIANTS for m in r["hooks"][v]})
    for m in hook_metrics:
        for v in VARIANTS:
            means[f"{m} ({v})"] = _mean([r["hooks"][v].get(m) for r in results])
    means["speedup"] = _mean([r["speedup"] for r in results])
    means["mean_density"] = _mean([r["mean_density"] for r in results])
    means["seconds_dense"] = _mean([r["seconds"]["dense"] for r in results])
    means["seconds_xattn"] = _mean([r["seconds"]["xattn"] for r in results])
    skipped = {k: v for r in results for k, v in r["skipped"].items()}
    return _jsonable({"config": to_container(run), "pairwise_metrics": pairwise, "hooks": [h.name for h in hooks],
                      "hook_metrics": hook_metrics, "items": results, "means": means, "skipped": skipped,
                      "note": "tiny random-weight model: videos are noise" if run.model.path in TINY_MODELS else None})


def _fmt(x: Any) -> str:
    if x is None:
        return "–"
    if x == "inf" or (isinstance(x, float) and math.isinf(x)):
        return "∞"
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def markdown(report: dict) -> str:
    cfg = report["config"]
    x = cfg["xattn"]
    lines = ["# xvid compare: XAttention vs dense", "",
             f"Model `{cfg['model']['path']}`, {cfg['generation']['width']}×{cfg['generation']['height']}, "
             f"{cfg['generation']['frames']} frames, {cfg['generation']['steps']} steps; XAttention τ={x['threshold']}, "
             f"stride {x['stride']}, block {x['block_size']}, {x['warmup_steps']} dense warmup steps.", ""]
    if report.get("note"):
        lines += [f"**Note: {report['note']}.**", ""]
    pair, hooks = report["pairwise_metrics"], report["hook_metrics"]
    head = (["prompt", "seed"] + [f"{m} vs dense" for m in pair] + [f"{m} {v}" for m in hooks for v in VARIANTS]
            + ["density", "dense s", "xattn s", "speedup"])
    by_prompt: dict[str, list[dict]] = {}
    for r in report["items"]:
        by_prompt.setdefault(r["prompt"], []).append(r)
    for prompt, rows in by_prompt.items():
        lines += [f"## {prompt}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            cells = ([r["prompt"][:40], str(r["seed"])] + [_fmt(r["pairwise"].get(m)) for m in pair]
                     + [_fmt(r["hooks"][v].get(m)) for m in hooks for v in VARIANTS]
                     + [_fmt(r["mean_density"]), _fmt(r["seconds"]["dense"]), _fmt(r["seconds"]["xattn"]),
                        _fmt(r["speedup"])])
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Means over all videos", "", "| metric | mean |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in report["means"].items()]
    if report["skipped"]:
        lines += ["", "## Skipped", ""] + [f"- **{k}**: {v}" for k, v in report["skipped"].items()]
    return "\n".join(lines) + "\n"


def _plots(report: dict, out_dir: Path) -> list[str]:
    """density_heatmap.png (layer × step, mean over videos) and quality_speed.png (per prompt)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    tables = [r["density_per_step_layer"] for r in report["items"] if r.get("density_per_step_layer")]
    if tables:
        steps = sorted({int(s) for t in tables for s in t if s not in ("None", "null")})
        # labels: "5" (transformer) and "t2.5" (Wan 2.2's transformer_2), one row each, second expert on top
        layers = sorted({layer for t in tables for row in t.values() for layer in row},
                        key=lambda label: (label.startswith("t2."), int(label.removeprefix("t2."))))
        grid = np.full((len(layers), len(steps)), np.nan)
        for i, layer in enumerate(layers):
            for j, step in enumerate(steps):
                vals = [t[str(step)][str(layer)] for t in tables if str(layer) in t.get(str(step), {})]
                if vals:
                    grid[i, j] = float(np.mean(vals))
        fig, ax = plt.subplots(figsize=(max(6.5, 0.18 * len(steps) + 3), max(3.5, 0.09 * len(layers) + 2)))
        im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=1, origin="lower",
                       extent=(min(steps) - 0.5, max(steps) + 0.5, -0.5, len(layers) - 0.5))
        fig.colorbar(im, ax=ax, label="density (kept blocks; 1 = dense)")
        ax.set_xlabel("denoising step")
        ax.set_ylabel("layer")
        ticks = list(range(0, len(layers), max(1, len(layers) // 12)))
        ax.set_yticks(ticks, [layers[i] for i in ticks])
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title("XAttention density per layer × step\n(mean over videos; warmup steps and dense layers = 1)",
                     fontsize=9)
        written.append(_save(fig, out_dir / "density_heatmap.png"))
    prompts = list(dict.fromkeys(r["prompt"] for r in report["items"]))
    measured = {m for r in report["items"] for m, v in r["pairwise"].items() if v is not None}
    panels = [m for m in ("psnr", "ssim", "lpips") if m in report["pairwise_metrics"] and m in measured] + ["speedup"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.5), squeeze=False)
    for ax, metric in zip(axes[0], panels):
        vals = []
        for p in prompts:
            rs = [r for r in report["items"] if r["prompt"] == p]
            v = _mean([r["speedup"] if metric == "speedup" else r["pairwise"].get(metric) for r in rs])
            vals.append(np.nan if v is None or math.isinf(v) else v)
        ax.bar(range(len(prompts)), vals, color="tab:orange" if metric == "speedup" else "tab:blue")
        ax.set_xticks(range(len(prompts)), [_slug(p, 18) for p in prompts], rotation=30, ha="right", fontsize=7)
        ax.set_title(f"{metric} (XAttention vs dense)" if metric != "speedup" else "speedup (dense time / ours)")
        if metric == "speedup":
            ax.axhline(1.0, color="k", lw=0.8, ls=":")
    written.append(_save(fig, out_dir / "quality_speed.png"))
    return written


def _save(fig: Any, path: Path) -> str:
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path.name


def compare_cli(args: Any, run: RunConfig) -> int:
    prompts = [args.prompt] if args.prompt else read_prompts(args.prompts)
    report = compare(run, prompts, args.seeds, args.metrics, args.out_dir)
    means = report["means"]
    print(f"compared {len(report['items'])} video pairs in {args.out_dir}: "
          + ", ".join(f"{k} {_fmt(v)}" for k, v in means.items() if v is not None))
    for name, reason in report["skipped"].items():
        print(f"skipped {name}: {reason}")
    print(f"report: {Path(args.out_dir) / 'report.md'}")
    return 0
