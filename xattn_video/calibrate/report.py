"""What calibration writes: the YAML config (atomic), a markdown report, a plot, the raw profile (JSON)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ..stats import layer_order
from ..video_io import write_figure, write_json, write_text
from .profile import CalibrationProfile
from .solver import Solution

OBJECTIVE_TEXT = {"recall": "target recall ≥ {:g}", "error": "target output error ≤ {:g}",
                  "density": "density budget {:g} (recall maximized)"}


def _fmt_tau(tau: float | list[float]) -> str:
    if isinstance(tau, list):
        return "[" + ", ".join(f"{t:g}" for t in tau) + "]"
    return f"{tau:g}"


def summary_line(sol: Solution) -> str:
    return (f"{OBJECTIVE_TEXT[sol.objective].format(sol.target)}{' per head' if sol.per_head else ' per layer'}: "
            f"predicted mean density {sol.mean_density:.3f}, recall {sol.mean_recall:.4f}, "
            f"output error {sol.mean_error:.4f}")


def yaml_text(config: dict[str, Any], sol: Solution, meta: dict[str, Any] | None = None) -> str:
    """The run config as YAML with a comment header (what it was calibrated for, the prediction)."""
    header = ["# written by xvid calibrate", f"# {summary_line(sol)}",
              "# (density: fraction of kept blocks over the sparse-eligible calls of the profiling run)"]
    for key, value in (meta or {}).items():
        header.append(f"# {key}: {value}")
    header += [f"# note: {n}" for n in sol.notes]
    return "\n".join(header) + "\n" + OmegaConf.to_yaml(OmegaConf.create(config))


def markdown(sol: Solution, profile: CalibrationProfile, meta: dict[str, Any] | None = None,
             plot: str | None = None) -> str:
    lines = ["# xvid calibrate", "", summary_line(sol) + ".", ""]
    for key, value in (meta or {}).items():
        lines.append(f"- {key}: {value}")
    lines += [f"- candidates τ: {', '.join(f'{t:g}' for t in profile.taus)}",
              f"- profiled calls: {profile.num_calls} over {len(profile.layers)} layers", ""]
    lines += [f"**Note:** {n}" for n in sol.notes] + ([""] if sol.notes else [])
    lines += ["## Per layer", "", "| layer | τ | density | recall | output error |", "|---|---|---|---|---|"]
    for row in sol.layer_rows():
        lines.append(f"| {row['layer']} | {_fmt_tau(row['tau'])} | {row['density']:.3f} | {row['recall']:.4f} | "
                     f"{row['error']:.4f} |")
    if sol.per_head:
        lines += ["", "## Per head", "", "(output error of a head: ‖O_τ − O‖ of that head over the layer's mean "
                  "head output norm)", "", "| layer | head | τ | density | recall | output error |",
                  "|---|---|---|---|---|---|"]
        for u in sol.units:
            lines.append(f"| {u.layer} | {u.head} | {sol.taus[u.choice]:g} | {float(u.density[u.choice]):.3f} | "
                         f"{float(u.recall[u.choice]):.4f} | {float(u.error[u.choice]):.4f} |")
    lines += ["", "## Candidates per layer (one τ on every head)", "",
              "| layer | " + " | ".join(f"τ={t:g}" for t in profile.taus) + " |",
              "|---|" + "---|" * len(profile.taus)]
    for layer, p in sorted(profile.layers.items(), key=lambda kv: layer_order(kv[0])):
        d, r, _ = p.layer_stats()
        cells = [f"{float(d[t]):.2f} / {float(r[t]):.3f}" for t in range(len(profile.taus))]
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    lines += ["", "(cells: density / recall)"]
    if plot:
        lines += ["", f"![calibration]({plot})"]
    return "\n".join(lines) + "\n"


def plot(sol: Solution, path: Path) -> str | None:
    """Chosen τ and predicted density / recall per layer; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = sol.layer_rows()
    layers = [r["layer"] for r in rows]
    x = {layer: i for i, layer in enumerate(layers)}  # positions: labels may be "t2.N" (Wan 2.2's transformer_2)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(6.0, 0.16 * len(layers) + 3), 6), sharex=True)
    for u in sol.units:
        ax1.scatter(x[u.layer], sol.taus[u.choice], s=10 if sol.per_head else 20, color="tab:blue", alpha=0.6)
    ax1.set_ylabel("τ" + (" (per head)" if sol.per_head else ""))
    ax1.set_title(summary_line(sol), fontsize=8)
    ax2.bar(range(len(layers)), [r["density"] for r in rows], color="tab:orange", label="density")
    ax2.axhline(sol.mean_density, color="k", lw=0.8, ls=":", label=f"mean {sol.mean_density:.3f}")
    ax2.plot(range(len(layers)), [r["recall"] for r in rows], "o-", ms=3, color="tab:green", label="recall")
    ax2.set_ylim(0, 1.05)
    ax2.set_xlabel("layer")
    ax2.legend(fontsize=7, loc="lower right")
    ticks = list(range(0, len(layers), max(1, len(layers) // 16)))
    ax2.set_xticks(ticks, [str(layers[i]) for i in ticks])
    fig.tight_layout()
    write_figure(fig, path, dpi=110)
    return path.name


def write_outputs(out: str | Path, config: dict[str, Any], sol: Solution, profile: CalibrationProfile,
                  meta: dict[str, Any] | None = None) -> dict[str, Path]:
    """``out`` (YAML), and next to it ``.md`` (report), ``.png`` (plot) and ``.json`` (profile + solution).

    Each file is written under a temporary name and renamed; the YAML is written last, so a failure
    leaves no YAML behind.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    png = out.with_suffix(".png")
    if plot(sol, png):
        paths["plot"] = png
    paths["report"] = write_text(markdown(sol, profile, meta, png.name if "plot" in paths else None),
                                 out.with_suffix(".md"))
    record = {"meta": meta or {}, "summary": summary_line(sol), "notes": sol.notes,
              "mean_density": sol.mean_density, "mean_recall": sol.mean_recall, "mean_error": sol.mean_error,
              "layers": sol.layer_rows(), "profile": profile.to_dict()}
    paths["profile"] = write_json(record, out.with_suffix(".json"))
    paths["config"] = write_text(yaml_text(config, sol, meta), out)
    return paths
