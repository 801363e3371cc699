"""``xvid compare``'s speedup is a ratio of two times from one run, and its report keeps whole prompts."""

from xattn_video.eval.compare import speedup
from xattn_video.eval.compare_inputs import PAIRWISE
from xattn_video.eval.report import markdown, wrap_cell


def test_speedup_only_for_videos_timed_in_the_same_run():
    dense = {"seconds_total": 10.0, "run_id": "a"}
    assert speedup(dense, {"seconds_total": 4.0, "run_id": "a"}) == 2.5
    # a dense video kept from an earlier run, an XAttention video timed now: two machine states, no ratio
    assert speedup(dense, {"seconds_total": 4.0, "run_id": "b"}) is None
    assert speedup({"seconds_total": 10.0}, {"seconds_total": 4.0}) is None  # records of an older xvid
    assert speedup(dense, {"seconds_total": 0.0, "run_id": "a"}) is None


def test_pairwise_names_match_the_metrics_module():
    from xattn_video.eval.metrics import KNOWN_METRICS

    assert PAIRWISE == tuple(KNOWN_METRICS)


def test_prompt_cells_wrap_at_spaces_and_keep_every_word():
    prompt = "a slow-moving golden retriever | runs along the beach at sunset, cinematic lighting"
    cell = wrap_cell(prompt, 30)
    lines = cell.split("<br>")
    assert len(lines) > 1 and all(len(line) <= 32 for line in lines)
    assert " ".join(lines).replace("\\|", "|") == prompt  # no word cut, nothing lost
    report = {"config": {"model": {"path": "tiny"}, "generation": {"width": 32, "height": 32, "frames": 1, "steps": 2},
                         "xattn": {"threshold": 0.9, "stride": 8, "block_size": 32, "warmup_steps": 1}},
              "pairwise_metrics": [], "hook_metrics": [], "means": {}, "skipped": {},
              "items": [{"prompt": prompt, "seed": 0, "pairwise": {}, "hooks": {"dense": {}, "xattn": {}},
                         "mean_density": 0.5, "seconds": {"dense": 2.0, "xattn": 1.0}, "speedup": None}]}
    md = markdown(report)
    row = [line for line in md.splitlines() if line.startswith("| a slow")][0]
    columns = ["prompt", "seed", "density", "dense s", "xattn s", "speedup"]
    assert prompt.replace("|", "\\|") in row.replace("<br>", " ") and row.count(" | ") == len(columns) - 1
    assert "timed in different runs" in md
