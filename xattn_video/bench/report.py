"""Report of the operator benchmark: markdown table and plot of ``bench.operator``'s results dict."""

from __future__ import annotations

import json
from pathlib import Path

from ..video_io import write_figure

_ROW_KEYS = ("tokens", "name", "ms", "density")


def load_results(path: Path) -> dict:
    """An earlier ``<gpu>.json`` of ``xvid bench``; ValueError (one line) if it is not one."""
    try:
        results = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {path} as xvid bench results (JSON): {exc}") from None
    rows = results.get("rows") if isinstance(results, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and all(k in r for k in _ROW_KEYS) for r in rows):
        raise ValueError(f"{path} is not an xvid bench results file: it needs 'rows' with {', '.join(_ROW_KEYS)}")
    results.setdefault("gpu", path.stem if isinstance(path, Path) else str(path))
    return results


def markdown(results: dict) -> str:
    """<gpu>.md: settings, the correctness checks, one timing row per measurement."""
    lines = [f"# XAttention benchmark: {results['gpu']}", "",
             f"torch {results['torch']}, triton {results['triton']}, sparse kernel "
             f"{results.get('sparse_kernel', 'triton')}, bf16, B=1, H={results['heads']}, "
             f"D={results['head_dim']}, block 128, median of triton.testing.do_bench after one untimed warm-up call "
             "(compilation and autotuning excluded); dense SDPA measured before the sparse paths at the 1st, 3rd, ... "
             f"token count and after them at the others. Date {results['date']}.", "",
             "## Correctness (bf16 Triton vs float32 reference, same selection, poisoned output)", "",
             "| tokens | sparse attention rel. L2 err | all outputs written | scores max abs err | ok |",
             "|---:|---:|:-:|---:|:-:|"]
    for c in results["checks"]:
        lines.append(f"| {c['tokens']:,} | {c['attn_rel_err']:.2e} | {c['all_written']} | "
                     f"{c['score_max_abs_err']:.2e} | {'yes' if c['ok'] else 'NO'} |")
    lines += ["", "## Timings", "",
              "ratio = time / dense cuDNN time in the same run; rate = TFLOP/s on kept blocks ÷ cuDNN's TFLOP/s.",
              "", "| tokens | what | density | ms | TFLOP/s | % of cuDNN time | speedup | rate vs cuDNN | rel. L2 err |",
              "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results["rows"]:
        def f(x, fmt):
            return "" if x is None else format(x, fmt)
        lines.append(
            f"| {r['tokens']:,} | {r['name']} | {f(r['density'], '.3f')} | {r['ms']:.3f} | {f(r['tflops'], '.1f')} | "
            f"{r['pct_of_cudnn']:.1f}% | {r['speedup_vs_cudnn']:.2f}× | {f(r['rate_vs_cudnn'], '.2f')} | "
            f"{f(r.get('rel_l2_err'), '.2e')} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    """<gpu>.png: ms against density per token count, dense SDPA as horizontal lines. Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["tokens"] for r in results["rows"]})
    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 4), squeeze=False)
    for ax, S in zip(axes[0], sizes):
        rows = [r for r in results["rows"] if r["tokens"] == S]
        for label, prefix, style in (("ours (block-sparse)", "ours block-sparse", "o-"),
                                     ("FlexAttention", "FlexAttention", "s--")):
            pts = sorted((r["density"], r["ms"]) for r in rows if r["name"].startswith(prefix))
            if pts:
                ax.plot(*zip(*pts), style, label=label)
        whole = sorted((r["density"], r["ms"]) for r in rows if r["name"].startswith("ours xattention"))
        if whole:
            ax.plot(*zip(*whole), "^", label="ours whole xattention (video-like)")
        for r in rows:
            if r["name"] == "dense cuDNN SDPA":
                ax.axhline(r["ms"], color="k", ls=":", label="dense cuDNN")
            if r["name"] == "dense flash SDPA":
                ax.axhline(r["ms"], color="gray", ls="-.", label="dense flash")
        ax.set_title(f"{S:,} tokens")
        ax.set_xlabel("density (kept blocks)")
        ax.set_ylabel("ms")
        ax.set_xlim(0, 1)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"XAttention vs dense and FlexAttention — {results['gpu']}")
    fig.tight_layout()
    write_figure(fig, path, dpi=120)
