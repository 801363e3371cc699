"""``xvid compare``: dense vs XAttention videos from the same initial noise, scored and reported.

For each prompt and seed: the dense video and the XAttention video are generated from the same latents; their
float frames are kept (``*.npy``, float16 — 8× finer than the mp4's 8 bits) and PSNR, SSIM, LPIPS and ``flicker``
are computed on them; both mp4s are written too. VBench can only read files, so ``vbench:*`` scores come from the
lossy mp4s; the report says, per metric, which input it was computed from (``score_sources``). Pairwise metrics
(PSNR, SSIM, LPIPS) compare the XAttention video with the dense one; scorers (temporal flickering, VBench, your
own) score each video on its own. An interrupted run resumes. Every video and every item's scores record what
produced them (``provenance``: the resolved config with the full prompt and seed, this package's version,
torch/diffusers/GPU; for scores also the metric set and each scorer's environment, e.g. VBench's interpreter and cache dir). A saved video
or score is reused only when its record equals what this run would produce; otherwise it is recomputed and a line
on stderr says which setting changed (the dense video does not depend on ``xattn.*`` and is kept across τ changes).
Timings: before the first timed generation, one untimed short generation of each variant (warm-up: compilation,
autotuning; for XAttention each path the timed run takes: its dense warmup step, a sparse step, selection reuse); the
order of the dense and the XAttention run alternates from item to item. Only the pipeline call is timed (not the mp4
encode, the metrics or the scorers, which run after both videos of an item). Each video records the ``run_id`` of the
run that timed it and the load average before it; a speedup is only given for two videos timed in the same run (a
re-run that reuses the dense video and regenerates the XAttention one shows both times and no ratio: two machine
states). The report gives the spread of per-item times and speedups (``timing.py``) and warns when they vary by more
than 1.25× (a busy machine: other processes on the same cores).
Outputs in ``--out-dir``: one folder per item, ``report.json``, ``report.md`` and PNG plots (see ``report.py``).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..config import ConfigError, RunConfig, to_container
from ..video_io import write_json, write_mp4, write_npy, write_text
from . import extras
from .compare_inputs import CompareInputs, check_compare_inputs, parse_metrics  # noqa: F401 (public here too)
from .report import VARIANTS, build_report, fmt, jsonable, markdown, plots, slug
from .timing import load_average, warm_up_plan


def _normalized(data: Any) -> Any:
    """``data`` as it reads back from JSON (tuples -> lists, int keys -> str, inf -> "inf"), for comparisons."""
    return json.loads(json.dumps(jsonable(data)))


def video_provenance(run: RunConfig, variant: str) -> dict:
    """What produces a video: the resolved config (with its full prompt and seed; no ``xattn`` section for the
    dense video, which does not depend on it), this package's version and the software/GPU it ran on."""
    from .. import __version__
    from ..generate import environment

    config = to_container(run)
    config.pop("dense", None)
    if variant == "dense":
        config.pop("xattn", None)
        config.pop("cache", None)  # the reference is stock diffusers: no step cache either
    return _normalized({"variant": variant, "config": config, "xattn_video": __version__,
                        "environment": environment()})


def scorer_provenance(scorer: Any) -> dict:
    """A scorer's identity and environment: its own ``provenance()`` if it has one (VBench: interpreter, cache
    dir, device), else its class."""
    own = getattr(scorer, "provenance", None)
    kind = f"{type(scorer).__module__}.{type(scorer).__qualname__}"
    return {"class": kind, **(own() if callable(own) else {})}


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys where ``old`` and ``new`` differ, each as ``key: old -> new`` (values cut to 60 characters)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            out += differences(old.get(key, "<absent>"), new.get(key, "<absent>"), f"{prefix}{key}.")
        return out
    if old == new:
        return []
    return [f"{prefix.rstrip('.')}: {str(old)[:60]!s} -> {str(new)[:60]!s}"]


def _stale_reason(record: dict | None, wanted: dict) -> str | None:
    """Why a saved record cannot be reused for ``wanted`` (its provenance differs), or None when it can."""
    if record is None:
        return None
    if "provenance" not in record:
        return "it has no provenance record (made by an older xvid)"
    diff = differences(record["provenance"], wanted)
    if not diff:
        return None
    more = f" (and {len(diff) - 3} more)" if len(diff) > 3 else ""
    return "it was made with " + "; ".join(diff[:3]) + more


def _reusable(path: Path, wanted: dict, what: str, say: Callable[[str], None]) -> dict | None:
    """The saved record at ``path`` if it exists and its provenance equals ``wanted``; else None, saying why."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        record = {}
    reason = _stale_reason(record, wanted)
    if reason is None:
        return record
    say(f"xvid compare: recomputing {what}: {reason}")
    return None


def variant_run(run: RunConfig, variant: str) -> RunConfig:
    """The run of one variant: ``dense`` is stock diffusers (no XAttention, no step cache: ``cache.name`` applies to
    the XAttention variant only), ``xattn`` is ``run`` with XAttention."""
    if variant == "dense":
        return dataclasses.replace(run, dense=True, cache=dataclasses.replace(run.cache, name=None))
    return dataclasses.replace(run, dense=False)


def warm_up(pipe: Any, run: RunConfig) -> None:
    """One untimed short generation of each variant at the item's sizes: dense 1 step; XAttention one step of each
    path the timed run takes (``timing.warm_up_plan``: its dense warmup path, a sparse step, selection reuse).
    Compilation, Triton autotuning, cuDNN plan search and first allocations happen here, not inside a timed video.

    A NaN warm-up video is ignored here: the timed generation reports it."""
    from ..generate import NonFiniteVideoError, run_pipeline

    x = run.xattn
    xattn_steps, xattn_warmup = warm_up_plan(run.generation.steps, x.warmup_steps, x.selection_reuse)
    plans = {"dense": dataclasses.replace(variant_run(run, "dense"),
                                          generation=dataclasses.replace(run.generation, steps=1)),
             "xattn": dataclasses.replace(run, dense=False,
                                          generation=dataclasses.replace(run.generation, steps=xattn_steps),
                                          xattn=dataclasses.replace(x, warmup_steps=xattn_warmup))}
    for variant in VARIANTS:
        try:
            run_pipeline(pipe, plans[variant], show_progress=False)
        except NonFiniteVideoError:
            pass


def _video(pipe: Any, run: RunConfig, variant: str, folder: Path, latents: Any, show_progress: bool,
           provenance: dict | None = None, run_id: str | None = None) -> dict:
    """Generate the video (the caller has checked that no reusable one exists); returns its record (with
    ``run_id``, the compare run that timed it, and the load average just before)."""
    from ..generate import run_pipeline

    frames_path, record_path = folder / f"{variant}.npy", folder / f"{variant}.json"
    load = load_average()
    result = run_pipeline(pipe, variant_run(run, variant), latents=latents, show_progress=show_progress)
    write_npy(result.frames.astype(np.float16), frames_path)
    write_mp4(result.frames, folder / f"{variant}.mp4", fps=run.generation.fps)
    record = {"seconds_total": result.seconds_total, "seconds_per_step": result.seconds_per_step,
              "mean_density": result.mean_density, "xattn": result.xattn, "cache": result.cache,
              "mp4": f"{variant}.mp4",
              "frames": f"{variant}.npy", "run_id": run_id, "load_1min": load, "provenance": provenance}
    write_json(jsonable(record), record_path)
    return record


def timed_together(dense: dict, xattn: dict) -> bool:
    """Whether two video records were timed in the same compare run (same ``run_id``)."""
    return dense.get("run_id") is not None and dense.get("run_id") == xattn.get("run_id")


def speedup(dense: dict, xattn: dict) -> float | None:
    """Dense time / XAttention time, only for two videos timed in the same run: a kept video from an earlier run
    was timed on another machine state, so a ratio across runs would mean nothing."""
    if not timed_together(dense, xattn) or not xattn["seconds_total"] > 0:
        return None
    return dense["seconds_total"] / xattn["seconds_total"]


def score_source(scorer: Any) -> str:
    """What a score is computed from, for the report: the float frames, or the lossy mp4 (a scorer's ``reads``)."""
    reads = "frames" if scorer is None else getattr(scorer, "reads", None)
    if reads == "frames":
        return "float frames (.npy)"
    if reads == "mp4":
        return "mp4 (8-bit, lossy encoding: includes the encoding error)"
    return "not stated by the scorer"


def _score_item(folder: Path, prompt: str, pairwise: list[str], scorers: list[Any]) -> dict:
    """Score one item's two videos from their saved float frames: pairwise metrics, then every scorer."""
    from .errors import Unavailable
    from .metrics import compare_videos
    from .scorers import VideoItem

    frames = {v: np.load(folder / f"{v}.npy").astype(np.float32) for v in VARIANTS}
    values, skipped = compare_videos(frames["xattn"], frames["dense"], metrics=tuple(pairwise))
    hook_scores: dict[str, dict[str, float]] = {v: {} for v in VARIANTS}
    sources = {metric: score_source(None) for metric in pairwise}
    items = [VideoItem(frames=frames[v], path=folder / f"{v}.mp4", prompt=prompt) for v in VARIANTS]
    for scorer in scorers:
        try:
            scores = scorer.score(items, [prompt, prompt])
        except Unavailable as exc:
            skipped[scorer.name] = str(exc)
            continue
        skipped.update(getattr(scorer, "skipped", None) or {})  # parts of it that could not run, with reasons
        for metric, per_video in scores.items():
            sources[metric] = score_source(scorer)
            for variant, value in zip(VARIANTS, per_video):
                hook_scores[variant][metric] = value
    return {"pairwise": values, "hooks": hook_scores, "skipped": skipped, "sources": sources}


def compare(run: RunConfig, prompts: Sequence[str], seeds: Sequence[int], metrics: str | Sequence[str],
            out_dir: str | Path, pipe: Any = None, show_progress: bool = True) -> dict:
    """Generate dense and XAttention videos for every (prompt, seed), score them, write the report."""
    from tqdm.auto import tqdm

    from ..generate import check_inputs, initial_latents
    from .scorers import make_scorers
    from ..pipelines.loading import load_pipeline

    # before the model loads: a bad place or metric fails in a second, not after an hour
    inputs = check_compare_inputs(prompts, seeds, metrics, out_dir)
    prompts, seeds, pairwise, hook_specs, out_dir = (inputs.prompts, inputs.seeds, inputs.pairwise,
                                                     inputs.scorer_specs, inputs.out_dir)
    if pairwise and not extras.importable("torchmetrics"):  # LPIPS without torchvision is only skipped, later
        raise ConfigError(extras.missing_message(pairwise))
    scorers = make_scorers(hook_specs) if hook_specs else []
    run_id = uuid.uuid4().hex[:12]  # which videos this run timed: only those give a speedup
    if pipe is None:
        check_inputs(run)  # I2V image present and readable, before any model loads
        pipe = load_pipeline(run.model)
    items = [(p, s) for p in prompts for s in seeds]
    results = []
    metric_set = {"pairwise": list(pairwise), "scorers": list(hook_specs),
                  "scorer_environment": {spec: scorer_provenance(sc) for spec, sc in zip(hook_specs, scorers)}}
    bar = tqdm(items, desc="xvid compare", unit="video pair", disable=not show_progress)

    def say(message: str) -> None:
        bar.write(message, file=sys.stderr)

    warmed = False  # one untimed warm-up before the first timed generation of this run
    for index, (prompt, seed) in enumerate(bar):
        folder = out_dir / f"{index:03d}-{slug(prompt)}-seed{seed}"
        folder.mkdir(exist_ok=True)
        item_run = dataclasses.replace(run, generation=dataclasses.replace(run.generation, prompt=prompt, seed=seed))
        wanted = {v: video_provenance(item_run, v) for v in VARIANTS}
        records = {v: _reusable(folder / f"{v}.json", wanted[v], f"{folder.name}/{v} video", say)
                   for v in VARIANTS}
        records = {v: r if r is not None and (folder / f"{v}.npy").is_file() else None for v, r in records.items()}
        result_wanted = _normalized({"videos": wanted, "metrics": metric_set})
        if all(r is not None for r in records.values()):
            result = _reusable(folder / "result.json", result_wanted, f"{folder.name} scores", say)
            if result is not None:
                result.pop("provenance", None)
                results.append(result)
                continue
        latents = None
        # Alternate which variant runs first, so that drift (clocks, caches, other load) does not favour one.
        order = VARIANTS if index % 2 == 0 else VARIANTS[::-1]
        for variant in order:
            if records[variant] is None:
                if not warmed:
                    warm_up(pipe, item_run)
                    warmed = True
                if latents is None:
                    latents = initial_latents(pipe, item_run)
                records[variant] = _video(pipe, item_run, variant, folder, latents, show_progress=False,
                                          provenance=wanted[variant], run_id=run_id)
        scores = _score_item(folder, prompt, pairwise, scorers)
        dense_s, xattn_s = records["dense"]["seconds_total"], records["xattn"]["seconds_total"]
        result = {
            "prompt": prompt, "seed": seed, "folder": folder.name, **scores,
            "seconds": {"dense": dense_s, "xattn": xattn_s}, "order": list(order),
            "seconds_per_step": {v: records[v]["seconds_per_step"] for v in VARIANTS},
            "speedup": speedup(records["dense"], records["xattn"]),
            # False when one video was reused from an earlier run (e.g. the dense one across a τ change)
            "timed_together": timed_together(records["dense"], records["xattn"]),
            "load_1min": {v: records[v].get("load_1min") for v in VARIANTS},
            "mean_density": records["xattn"]["mean_density"],
            "density_per_step_layer": (records["xattn"]["xattn"] or {}).get("density_per_step_layer"),
            "computed_step_fraction": (records["xattn"].get("cache") or {}).get("computed_step_fraction"),
        }
        write_json(jsonable({**result, "provenance": result_wanted}), folder / "result.json")
        results.append(jsonable(result))
    report = build_report(run, results, pairwise, scorers)
    report["plots"] = plots(report, out_dir)
    if not report["plots"]:
        report["skipped"]["plots"] = f"matplotlib is not installed: {extras.install_hint(['plots'])}"
    write_json(report, out_dir / "report.json")
    write_text(markdown(report), out_dir / "report.md")
    return report


def compare_cli(inputs: CompareInputs, run: RunConfig) -> int:
    """``xvid compare`` on checked inputs: run ``compare`` and print a summary (user errors propagate to the CLI's
    handler)."""
    report = compare(run, inputs.prompts, inputs.seeds, inputs.pairwise + inputs.scorer_specs, inputs.out_dir)
    means = report["means"]
    print(f"compared {len(report['items'])} video pairs in {inputs.out_dir}: "
          + ", ".join(f"{k} {fmt(v)}" for k, v in means.items() if v is not None))
    for name, reason in report["skipped"].items():
        print(f"skipped {name}: {reason}")
    if any(item.get("speedup") is None for item in report["items"]):
        print("note: no speedup for pairs timed in different runs (a video was kept from an earlier run); use a "
              "fresh --out-dir to time both")
    warning = report["timing"].get("warning")
    if warning:
        print(f"xvid compare: warning: {warning}", file=sys.stderr)
    print(f"report: {Path(inputs.out_dir) / 'report.md'}")
    return 0
