"""``xvid compare``'s inputs, checked before torch or diffusers load: prompts, seeds, metrics, the output folder.

A refusal costs a second (exit 2, one line); input that would run but do nothing useful (a seed listed twice, no
metric) gets an ``XvidWarning``. ``compare()`` runs the same checks for Python callers.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..config import ConfigError, XvidWarning, check_seed

# The full-reference metrics of eval/metrics.py (the XAttention video against the dense one), named here so that
# checking --metrics needs no torch; tests/test_compare.py checks that both lists agree.
PAIRWISE = ("psnr", "ssim", "lpips")


@dataclass
class CompareInputs:
    """Checked inputs of one ``compare`` run: unique prompts and seeds, metrics split, the output folder."""

    prompts: list[str]
    seeds: list[int]
    pairwise: list[str]
    scorer_specs: list[str]
    out_dir: Path


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
    if not str(out_dir).strip():
        raise ConfigError("--out-dir is empty; give the folder for the videos and the report")
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


def unique(values: Sequence, what: str) -> list:
    """``values`` without repeats (first occurrence kept), with an ``XvidWarning`` naming the repeats: the same
    (prompt, seed) pair twice would generate and score the same videos twice."""
    kept = list(dict.fromkeys(values))
    if len(kept) < len(values):
        repeats = sorted({v for v in values if values.count(v) > 1}, key=str)
        shown = ", ".join(repr(v) if isinstance(v, str) else str(v) for v in repeats[:3])
        warnings.warn(f"{what} listed more than once ({shown}); each runs once", XvidWarning)
    return kept


def check_compare_inputs(prompts: Sequence[str], seeds: Sequence[int], metrics: str | Sequence[str],
                         out_dir: str | Path) -> CompareInputs:
    """Every check of ``compare``'s inputs that needs no model (``ConfigError`` on a refusal).

    Warnings are raised from this module, so the CLI's early check and ``compare()``'s own say each once."""
    check_prompts(prompts)
    if not seeds:
        raise ConfigError("no seeds to compare")
    for seed in seeds:  # torch takes 0..2**63-1: a larger one would crash after the model loads
        check_seed(seed, "--seeds")
    pairwise, scorer_specs = parse_metrics(metrics)
    if not pairwise and not scorer_specs:
        warnings.warn("--metrics is empty: the videos are generated and timed, nothing is scored", XvidWarning)
    return CompareInputs(prompts=unique(list(prompts), "prompt"), seeds=unique(list(seeds), "seed"),
                         pairwise=pairwise, scorer_specs=scorer_specs, out_dir=check_out_dir(out_dir))


__all__ = ["PAIRWISE", "CompareInputs", "check_compare_inputs", "check_out_dir", "check_prompts", "parse_metrics",
           "unique"]
