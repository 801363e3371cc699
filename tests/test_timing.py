"""xattn_video.eval.timing: warm-up plan, spread over items, busy-machine warning (pure functions, no model)."""

import pytest

from xattn_video.eval.report import markdown
from xattn_video.eval.timing import BUSY_RATIO, busy_warning, spread, timing_summary, warm_up_plan


@pytest.mark.parametrize("steps,warmup,reuse,plan", [
    (20, 5, 0, (2, 1)),   # XAttention's dense path, then one sparse step
    (20, 0, 0, (1, 0)),   # sparse from step 0: one sparse step
    (20, 5, 3, (3, 1)),   # + a step that reuses the selection
    (6, 5, 3, (2, 1)),    # one sparse step only in the timed run: no reuse to warm
    (4, 5, 0, (1, 1)),    # all steps dense: the dense path only
    (1, 0, 2, (1, 0)),
])
def test_warm_up_plan_runs_each_path_of_the_timed_run_once(steps, warmup, reuse, plan):
    assert warm_up_plan(steps, warmup, reuse) == plan


def test_spread():
    assert spread([3.0, 1.0, 2.0, 4.0]) == {"n": 4, "min": 1.0, "median": 2.5, "max": 4.0, "ratio": 4.0}
    assert spread([2.0]) is None and spread([]) is None
    assert spread([None, "inf", float("inf"), 0.0, True, 2.0, 3.0])["n"] == 2  # only finite positive numbers


def _item(i, dense, xattn, **extra):
    return {"folder": f"{i:03d}-x-seed{i}", "prompt": "a cat", "seed": i, "pairwise": {}, "hooks": {"dense": {},
            "xattn": {}}, "mean_density": 0.5, "seconds": {"dense": dense, "xattn": xattn},
            "speedup": dense / xattn, **extra}


def test_summary_spread_and_items_timed_apart():
    items = [_item(0, 2.0, 1.0, load_1min={"dense": 1.0, "xattn": 6.5}), _item(1, 2.2, 1.1),
             _item(2, 2.1, 1.0, timed_together=False)]
    summary = timing_summary(items)
    assert summary["dense_s"]["min"] == 2.0 and summary["dense_s"]["max"] == 2.2
    assert summary["speedup"]["median"] == pytest.approx(2.0)
    assert summary["not_timed_together"] == ["002-x-seed2"]
    assert summary["max_load_1min"] == 6.5
    assert timing_summary(items[:1])["dense_s"] is None  # one item: no spread


def test_busy_warning_over_the_limit_only():
    steady = timing_summary([_item(0, 2.0, 1.0), _item(1, 2.2, 1.1), _item(2, 2.1, 1.05)])
    assert busy_warning(steady) is None
    # the numbers: first dense video 9.1 s, then 1.5 s; speedup 0.59x vs 3.9x
    busy = timing_summary([_item(0, 9.1, 15.4), _item(1, 1.5, 0.385)])
    warning = busy_warning(busy)
    assert warning.startswith("timings vary 40.00× between items") and "machine was busy" in warning
    assert "\n" not in warning
    edge = timing_summary([_item(0, 1.0, 1.0), _item(1, BUSY_RATIO, BUSY_RATIO)])
    assert busy_warning(edge) is None and busy_warning(edge, limit=1.2) is not None


def test_markdown_shows_the_spread_and_the_warning():
    items = [_item(0, 9.1, 15.4), _item(1, 1.5, 0.385, timed_together=False)]
    timing = timing_summary(items)
    timing["warning"] = busy_warning(timing)
    report = {"config": {"model": {"path": "tiny"}, "xattn": {"threshold": 0.9, "stride": 8, "block_size": 128,
                                                              "warmup_steps": 5},
                         "generation": {"width": 64, "height": 64, "frames": 5, "steps": 3}},
              "pairwise_metrics": [], "hook_metrics": [], "items": items, "means": {}, "skipped": {},
              "timing": timing}
    md = markdown(report)
    assert "## Timing spread over items" in md
    assert "| speedup | 2 | 0.5909 | 2.244 | 3.896 | 6.59× |" in md
    assert "**Warning: timings vary" in md
    assert "| 3.896† |" in md and "† one of the two videos was reused" in md
