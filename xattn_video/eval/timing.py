"""How far ``xvid compare``'s timings can be trusted: the warm-up plan, the spread over items, a busy-machine warning.

All items of one compare run have the same sizes and steps, so their per-item times should agree; when they do
not, something else took the machine (other processes on the same cores, clock changes), and a speedup of one item
says little. Measured on a shared 2-core CPU (load average 6): the same warm 4-step tiny-model generation took
2.6 s, 6.8 s and 9.6 s in one process; a first-run cost (what the warm-up removes) was 0.4 s of it.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

BUSY_RATIO = 1.25  # max/min of per-item times above this: the machine was busy, speedups are unreliable
TIMED = ("dense_s", "xattn_s", "speedup")


def warm_up_plan(steps: int, warmup_steps: int, selection_reuse: int = 0) -> tuple[int, int]:
    """``(steps, warmup_steps)`` of the untimed XAttention warm-up generation: one dense step when the timed run
    has dense warmup steps (XAttention's own dense path), then one sparse step, two when selections are reused
    (the reuse path) - each path the timed run takes runs once before it."""
    dense = 1 if warmup_steps > 0 else 0
    sparse_steps = max(0, steps - warmup_steps)
    sparse = 0 if sparse_steps == 0 else (2 if selection_reuse > 1 and sparse_steps >= 2 else 1)
    return max(1, dense + sparse), dense


def spread(values: Iterable[Any]) -> dict[str, float] | None:
    """``{"n", "min", "median", "max", "ratio"}`` (ratio = max/min) of the finite positive numbers in ``values``;
    None with fewer than two."""
    nums = sorted(float(v) for v in values
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0)
    if len(nums) < 2:
        return None
    return {"n": len(nums), "min": nums[0], "median": statistics.median(nums), "max": nums[-1],
            "ratio": nums[-1] / nums[0]}


def timing_summary(items: Sequence[dict]) -> dict[str, Any]:
    """Spread over items of the dense and XAttention seconds and of the speedup (None where fewer than two items),
    the items whose two videos were not timed in the same run, and the highest load average seen."""
    loads = [v for i in items for v in (i.get("load_1min") or {}).values() if isinstance(v, (int, float))]
    return {
        "dense_s": spread(i["seconds"]["dense"] for i in items),
        "xattn_s": spread(i["seconds"]["xattn"] for i in items),
        "speedup": spread(i.get("speedup") for i in items),
        "not_timed_together": [i["folder"] for i in items if i.get("timed_together") is False],
        "max_load_1min": max(loads) if loads else None,
        "cpus": os.cpu_count(),
    }


def busy_warning(summary: dict[str, Any], limit: float = BUSY_RATIO) -> str | None:
    """One line when per-item times or speedups vary by more than ``limit`` (max/min), else None."""
    spreads = {k: summary.get(k) for k in TIMED if summary.get(k)}
    if not spreads:
        return None
    worst, s = max(spreads.items(), key=lambda kv: kv[1]["ratio"])
    if s["ratio"] <= limit:
        return None
    unit = "×" if worst == "speedup" else " s"
    load = summary.get("max_load_1min")
    busy = f" (load average up to {load:.1f} on {summary.get('cpus')} CPUs)" if load is not None else ""
    return (f"timings vary {s['ratio']:.2f}× between items with the same settings ({worst.replace('_s', ' seconds')} "
            f"{s['min']:.3g}-{s['max']:.3g}{unit}, median {s['median']:.3g}{unit}): the machine was busy{busy}, "
            "so speedups are unreliable - rerun on an idle machine")


def load_average() -> float | None:
    """The 1-minute load average (None where the platform has none), recorded with each timed video."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
