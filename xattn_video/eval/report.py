"""``xvid compare``'s report: JSON with infinities, aggregation over items, markdown and PNG plots.

Infinite PSNR (identical videos) is stored as the string "inf" (JSON has no infinity) and shown as ∞.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..config import TINY_MODELS, RunConfig, to_container
from ..video_io import write_figure
from .timing import busy_warning, timing_summary

VARIANTS = ("dense", "xattn")


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe lower-case slug of ``text`` (at most ``limit`` characters)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "prompt"


def jsonable(x: Any) -> Any:
    """Infinite PSNR (identical videos) is written as the string "inf": JSON has no infinity."""
    if isinstance(x, float) and math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    return x


def _num(x: Any) -> float | None:
    """A number from a report value (\"inf\" back to math.inf); None for anything else."""
    if x == "inf":
        return math.inf
    return float(x) if isinstance(x, (int, float)) else None


def mean(values: list[Any]) -> float | None:
    """Mean of the numeric values (None if there are none)."""
    nums = [v for v in (_num(x) for x in values) if v is not None]
    return sum(nums) / len(nums) if nums else None


def build_report(run: RunConfig, results: list[dict], pairwise: list[str], scorers: list[Any]) -> dict:
    """The report dict (JSON-ready) from the per-item results: config, items, means over items, skip reasons."""
    means: dict[str, Any] = {m: mean([r["pairwise"].get(m) for r in results]) for m in pairwise}
    hook_metrics = sorted({m for r in results for v in VARIANTS for m in r["hooks"][v]})
    for m in hook_metrics:
        for v in VARIANTS:
            means[f"{m} ({v})"] = mean([r["hooks"][v].get(m) for r in results])
    means["speedup"] = mean([r["speedup"] for r in results])
    means["mean_density"] = mean([r["mean_density"] for r in results])
    if any(r.get("computed_step_fraction") is not None for r in results):  # --cache: the XAttention variant's
        means["computed_step_fraction"] = mean([r.get("computed_step_fraction") for r in results])
    means["seconds_dense"] = mean([r["seconds"]["dense"] for r in results])
    means["seconds_xattn"] = mean([r["seconds"]["xattn"] for r in results])
    skipped = {k: v for r in results for k, v in r["skipped"].items()}
    sources = {k: v for r in results for k, v in r.get("sources", {}).items()}
    timing = timing_summary(results)
    timing["warning"] = busy_warning(timing)
    return jsonable({"config": to_container(run), "pairwise_metrics": pairwise, "hooks": [h.name for h in scorers],
                      "hook_metrics": hook_metrics, "items": results, "means": means, "skipped": skipped,
                      "score_sources": sources, "timing": timing,
                      "note": "tiny random-weight model: videos are noise" if run.model.path in TINY_MODELS else None})


def fmt(x: Any) -> str:
    """A table cell: 4 significant digits, ∞ for infinity, – for missing."""
    if x is None:
        return "–"
    if x == "inf" or (isinstance(x, float) and math.isinf(x)):
        return "∞"
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def wrap_cell(text: str, width: int = 40) -> str:
    """A table cell holding all of ``text``, broken at spaces into lines of about ``width`` (``<br>``), never
    inside a word; ``|`` escaped so the row keeps its columns."""
    import textwrap

    lines = textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False) or [""]
    return "<br>".join(line.replace("|", "\\|") for line in lines)


def markdown(report: dict) -> str:
    """report.md: settings, one table per prompt, means over all videos, skipped metrics."""
    cfg = report["config"]
    x = cfg["xattn"]
    lines = ["# xvid compare: XAttention vs dense", "",
             f"Model `{cfg['model']['path']}`, {cfg['generation']['width']}×{cfg['generation']['height']}, "
             f"{cfg['generation']['frames']} frames, {cfg['generation']['steps']} steps; XAttention τ={x['threshold']}, "
             f"stride {x['stride']}, block {x['block_size']}, {x['warmup_steps']} dense warmup steps."
             + (f" Step cache `{cfg['cache']['name']}` on the XAttention video (the dense one is stock, no cache)."
                if (cfg.get("cache") or {}).get("name") else ""), ""]
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
            cells = ([wrap_cell(r["prompt"]), str(r["seed"])] + [fmt(r["pairwise"].get(m)) for m in pair]
                     + [fmt(r["hooks"][v].get(m)) for m in hooks for v in VARIANTS]
                     + [fmt(r["mean_density"]), fmt(r["seconds"]["dense"]), fmt(r["seconds"]["xattn"]),
                        fmt(r["speedup"]) + ("†" if r.get("timed_together") is False else "")])
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if any(r.get("speedup") is None for r in report["items"]):
        lines += ["No speedup (–) where the dense and the XAttention video were timed in different runs (one was "
                  "kept from an earlier run in this folder): their times come from two machine states. A fresh "
                  "--out-dir times both.", ""]
    lines += ["## Means over all videos", "", "| metric | mean |", "|---|---|"]
    lines += [f"| {k} | {fmt(v)} |" for k, v in report["means"].items()]
    lines += _timing_lines(report.get("timing") or {})
    if report.get("score_sources"):
        by_source: dict[str, list[str]] = {}
        for metric, source in report["score_sources"].items():
            by_source.setdefault(source, []).append(metric)
        lines += ["", "## What each score is computed from", ""]
        lines += [f"- {', '.join(metrics)}: {source}" for source, metrics in by_source.items()]
    if report["skipped"]:
        lines += ["", "## Skipped", ""] + [f"- **{k}**: {v}" for k, v in report["skipped"].items()]
    return "\n".join(lines) + "\n"


def _timing_lines(timing: dict) -> list[str]:
    """The "Timing spread" section: min/median/max over items of each variant's seconds and of the speedup."""
    rows = [(label, timing.get(key)) for key, label in (("dense_s", "dense s"), ("xattn_s", "xattn s"),
                                                         ("speedup", "speedup"))]
    lines: list[str] = []
    if any(s for _, s in rows):
        lines += ["", "## Timing spread over items", "", "| | items | min | median | max | max/min |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {label} | {s['n']} | {fmt(s['min'])} | {fmt(s['median'])} | {fmt(s['max'])} | "
                  f"{s['ratio']:.2f}× |" for label, s in rows if s]
    if timing.get("warning"):
        lines += ["", f"**Warning: {timing['warning']}.**"]
    if timing.get("not_timed_together"):
        lines += ["", "† one of the two videos was reused from an earlier run (its time was measured then): "
                  + ", ".join(timing["not_timed_together"])]
    return lines


def plots(report: dict, out_dir: Path) -> list[str]:
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
            v = mean([r["speedup"] if metric == "speedup" else r["pairwise"].get(metric) for r in rs])
            vals.append(np.nan if v is None or math.isinf(v) else v)
        ax.bar(range(len(prompts)), vals, color="tab:orange" if metric == "speedup" else "tab:blue")
        ax.set_xticks(range(len(prompts)), [slug(p, 18) for p in prompts], rotation=30, ha="right", fontsize=7)
        ax.set_title(f"{metric} (XAttention vs dense)" if metric != "speedup" else "speedup (dense time / ours)")
        if metric == "speedup":
            ax.axhline(1.0, color="k", lw=0.8, ls=":")
    written.append(_save(fig, out_dir / "quality_speed.png"))
    return written


def _save(fig: Any, path: Path) -> str:
    fig.tight_layout()
    write_figure(fig, path, dpi=110)
    return path.name
