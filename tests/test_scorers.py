"""Scorers (xattn_video.eval.scorers): registry, in-house VBench temporal flickering, VBench preflight and driver."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from xattn_video.eval.scorers import (
    VBENCH_DIMENSION_WEIGHTS,
    FlickerScorer,
    Unavailable,
    VBenchScorer,
    VideoItem,
    available_scorers,
    frames_to_uint8,
    make_scorers,
    register_scorer,
    registry,
    temporal_flickering_score,
)
from xattn_video.eval.scorers import vbench as vbench_scorer


@pytest.fixture
def isolated_registry(monkeypatch):
    """A private copy of the scorer registry, so test registrations do not leak."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    return registry._REGISTRY


# ------------------------------------------------------------------------------------------------------- registry
class _FakeScorer:
    def __init__(self, args: list[str]) -> None:
        self.name = "fake"
        self.args = args

    def score(self, videos, prompts):
        return {"n": [float(len(self.args))] * len(videos)}


def test_builtin_scorers_are_registered():
    assert {"flicker", "vbench"} <= set(available_scorers())


def test_register_and_make_a_custom_scorer(isolated_registry):
    register_scorer("fake", _FakeScorer)
    assert "fake" in available_scorers()
    (hook,) = make_scorers("fake:a,b")
    assert isinstance(hook, _FakeScorer) and hook.args == ["a", "b"]
    (hook,) = make_scorers(["fake: x , y,,"])
    assert hook.args == ["x", "y"]
    both = make_scorers("flicker;fake")
    assert [type(h) for h in both] == [FlickerScorer, _FakeScorer] and both[1].args == []


def test_unknown_scorer_lists_registered_names(isolated_registry):
    register_scorer("fake", _FakeScorer)
    with pytest.raises(ValueError) as info:
        make_scorers(["flicker", "nope:1"])
    message = str(info.value)
    assert "nope" in message and all(name in message for name in ("fake", "flicker", "vbench"))


def test_register_rejects_duplicates_and_bad_factories(isolated_registry):
    register_scorer("fake", _FakeScorer)
    with pytest.raises(ValueError, match="already registered"):
        register_scorer("fake", _FakeScorer)
    register_scorer("fake", lambda args: _FakeScorer(["replaced", *args]), replace=True)
    assert make_scorers("fake:z")[0].args == ["replaced", "z"]
    with pytest.raises(ValueError, match="scorer name"):
        register_scorer("bad:name", _FakeScorer)
    register_scorer("junk", lambda args: object())
    with pytest.raises(TypeError, match="junk"):
        make_scorers("junk")


# ------------------------------------------------------------------------------------------------------- flicker
def _flicker_reference(frames: np.ndarray) -> float:
    """VBench temporal flickering written out: (255 - mean_pairs(mean|f[i] - f[i+1]|)) / 255 on uint8 frames."""
    u8 = np.clip(np.round(frames.astype(np.float64) * 255), 0, 255)
    pair_mae = np.abs(np.diff(u8, axis=0)).mean(axis=(1, 2, 3))
    return (255.0 - pair_mae.mean()) / 255.0


def test_flicker_constant_frames_score_one(rng):
    frame = rng.random((12, 9, 3), dtype=np.float32)
    assert temporal_flickering_score(np.repeat(frame[None], 6, axis=0)) == 1.0


def test_flicker_alternating_black_white_scores_zero():
    frames = np.zeros((7, 8, 8, 3), dtype=np.float32)
    frames[1::2] = 1.0
    assert temporal_flickering_score(frames) == 0.0


def test_flicker_quarter_of_pixels_toggling_scores_three_quarters(rng):
    frames = np.zeros((5, 8, 8, 3), dtype=np.float32)
    frames[1::2, :4, :4] = 1.0  # a quarter of the pixels jump by 255 between every pair of frames
    assert temporal_flickering_score(frames) == pytest.approx(0.75, abs=1e-9)


def test_flicker_random_video_matches_the_formula(rng):
    frames = rng.random((int(rng.integers(2, 9)), 10, 14, 3), dtype=np.float32)
    assert temporal_flickering_score(frames) == pytest.approx(_flicker_reference(frames), abs=1e-6)
    u8 = frames_to_uint8(frames)
    assert temporal_flickering_score(u8) == pytest.approx(_flicker_reference(frames), abs=1e-6)


def test_flicker_needs_two_frames(rng):
    with pytest.raises(ValueError, match="2 frames"):
        temporal_flickering_score(rng.random((1, 4, 4, 3), dtype=np.float32))


def test_frames_to_uint8_rounds_and_clips(rng):
    levels = rng.integers(0, 256, size=(2, 4, 4, 3))
    jitter = rng.uniform(-0.49, 0.49, size=levels.shape) / 255
    frames = (levels / 255 + jitter).astype(np.float32)
    assert np.array_equal(frames_to_uint8(frames), levels.astype(np.uint8))
    assert frames_to_uint8(np.array([[[[-0.2, 1.3, 0.5]]]])).tolist() == [[[[0, 255, 128]]]]


def test_flicker_hook_scores_each_video_in_order(rng):
    still = np.repeat(rng.random((1, 8, 8, 3), dtype=np.float32), 4, axis=0)
    noisy = rng.random((4, 8, 8, 3), dtype=np.float32)
    (hook,) = make_scorers("flicker")
    scores = hook.score([VideoItem(still, None, "a"), VideoItem(noisy, None, "b")], ["a", "b"])
    assert list(scores) == ["flicker"]
    assert scores["flicker"][0] == 1.0
    assert scores["flicker"][1] == pytest.approx(_flicker_reference(noisy), abs=1e-6)
    with pytest.raises(ValueError, match="takes no arguments"):
        make_scorers("flicker:x")


# ------------------------------------------------------------------------------------------------ VBench preflight
def test_vbench_unknown_or_unsupported_dimension_is_a_value_error():
    with pytest.raises(ValueError) as info:
        VBenchScorer(["subject_consistency", "sharpness"])
    assert "sharpness" in str(info.value) and "motion_smoothness" in str(info.value)
    with pytest.raises(ValueError, match="custom_input"):
        VBenchScorer(["color"])
    with pytest.raises(ValueError, match="at least one dimension"):
        make_scorers("vbench")


def test_vbench_missing_interpreter_is_unavailable(tmp_path):
    fake_python = tmp_path / "no-such-env" / "bin" / "python"
    hook = VBenchScorer(["temporal_flickering"], python=str(fake_python), cache_dir=tmp_path)
    with pytest.raises(Unavailable) as info:
        hook.check_available()
    assert str(fake_python) in str(info.value) and "does not exist" in str(info.value)
    video = tmp_path / "v.mp4"
    video.write_bytes(b"x")
    with pytest.raises(Unavailable):  # score() runs the same checks before anything else
        hook.score([VideoItem(np.zeros((2, 4, 4, 3), np.float32), video, "p")], ["p"])


@pytest.mark.skipif(importlib.util.find_spec("vbench") is not None, reason="vbench is installed here")
def test_vbench_not_importable_is_unavailable(tmp_path):
    hook = VBenchScorer(["temporal_flickering"], python=sys.executable, cache_dir=tmp_path)
    with pytest.raises(Unavailable) as info:
        hook.check_available()
    assert "vbench does not import" in str(info.value) and "No module named 'vbench'" in str(info.value)


def test_vbench_missing_weights_name_dimension_and_file(tmp_path, monkeypatch):
    monkeypatch.setattr(vbench_scorer, "_vbench_import_problem", lambda python, env, timeout_s=60.0: None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cache = tmp_path / "vbench_cache"
    hook = VBenchScorer(["temporal_flickering", "motion_smoothness", "subject_consistency"], cache_dir=cache)
    cannot = hook.check_available()  # temporal_flickering needs no weights: the scorer still runs
    assert set(cannot) == {"motion_smoothness", "subject_consistency"}
    assert str(cache / "amt_model" / "amt-s.pth") in cannot["motion_smoothness"]
    dino = tmp_path / "torch" / "hub" / "checkpoints" / "dino_vitbase16_pretrain.pth"
    assert str(dino) in cannot["subject_consistency"]
    assert not cache.exists()  # nothing created, nothing downloaded
    # When no requested dimension can run, the whole scorer is unavailable, with every reason.
    with pytest.raises(Unavailable) as info:
        VBenchScorer(["motion_smoothness", "subject_consistency"], cache_dir=cache).check_available()
    assert "'motion_smoothness'" in str(info.value) and "'subject_consistency'" in str(info.value)

    # Put every file in place: the preflight passes.
    missing = hook.missing_weights()
    assert set(missing) == {"motion_smoothness", "subject_consistency"}
    for files in missing.values():
        for path, _source in files:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")
    assert hook.missing_weights() == {}
    assert hook.check_available() == {}


def test_vbench_weight_table_covers_the_custom_input_dimensions():
    assert set(VBENCH_DIMENSION_WEIGHTS) == {
        "subject_consistency", "background_consistency", "aesthetic_quality", "imaging_quality", "human_action",
        "temporal_flickering", "motion_smoothness", "dynamic_degree", "temporal_style", "overall_consistency",
    }  # fmt: skip
    assert VBENCH_DIMENSION_WEIGHTS["temporal_flickering"] == ()
    assert all(VBENCH_DIMENSION_WEIGHTS[d] for d in VBENCH_DIMENSION_WEIGHTS if d != "temporal_flickering")


def test_vbench_default_python_and_cache_come_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("XVID_VBENCH_PYTHON", "/opt/vbench-env/bin/python")
    monkeypatch.setenv("VBENCH_CACHE_DIR", str(tmp_path))
    hook = VBenchScorer(["dynamic_degree"])
    assert hook.python == "/opt/vbench-env/bin/python" and hook.cache_dir == tmp_path
    env = hook.subprocess_env()
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"
    assert env["VBENCH_CACHE_DIR"] == str(tmp_path)
    monkeypatch.delenv("XVID_VBENCH_PYTHON")
    assert VBenchScorer(["dynamic_degree"]).python == sys.executable


def test_vbench_file_names_follow_vbench_custom_input_naming():
    assert vbench_scorer.vbench_file_name("a cat playing piano", 3) == "a cat playing piano-3.mp4"
    assert vbench_scorer.vbench_file_name("left/right\nnext", 0, ".gif") == "left right next-0.gif"
    assert vbench_scorer.vbench_file_name("", 1) == "video-1.mp4"
    assert len(vbench_scorer.vbench_file_name("é" * 500, 12).encode()) <= 180 + len("-12.mp4")


def test_parse_vbench_results_orders_by_file_and_fills_gaps():
    results = {
        "dynamic_degree": [0.5, [{"video_path": "/x/b-1.mp4", "video_results": True},
                                 {"video_path": "/x/a-0.mp4", "video_results": False}]],
        "temporal_flickering": [0.9, [{"video_path": "/x/b-1.mp4", "video_results": 0.9}]],
    }  # fmt: skip
    scores = vbench_scorer._parse_vbench_results(results, ["a-0.mp4", "b-1.mp4"], ["dynamic_degree", "temporal_flickering"])
    assert scores["dynamic_degree"] == [0.0, 1.0]
    assert math.isnan(scores["temporal_flickering"][0]) and scores["temporal_flickering"][1] == 0.9
    with pytest.raises(Unavailable, match="motion_smoothness"):
        vbench_scorer._parse_vbench_results(results, ["a-0.mp4"], ["motion_smoothness"])


# ------------------------------------------------------------------------------------------------------- VBench run
_FAKE_VBENCH = textwrap.dedent(
    '''
    """Stand-in for the vbench package: records its call and scores each video by its file size."""
    import json, os, time

    class VBench:
        def __init__(self, device, full_info_dir, output_path):
            self.device, self.output_path = device, output_path

        def evaluate(self, videos_path, name, prompt_list=[], dimension_list=None, local=False, read_frame=False,
                     mode="vbench_standard", **kwargs):
            if os.environ.get("FAKE_VBENCH_FAIL"):
                raise RuntimeError("fake VBench exploded")
            if os.environ.get("FAKE_VBENCH_SLEEP"):
                time.sleep(float(os.environ["FAKE_VBENCH_SLEEP"]))
            files = sorted(f for f in os.listdir(videos_path) if f.endswith(".mp4"))
            record = {"device": str(self.device), "videos_path": videos_path, "files": files, "name": name,
                      "prompt_list": prompt_list, "dimension_list": dimension_list, "local": local, "mode": mode,
                      "kwargs": kwargs, "env": {k: os.environ.get(k) for k in
                                                ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "VBENCH_CACHE_DIR")}}
            with open(os.environ["FAKE_VBENCH_RECORD"], "w") as f:
                json.dump(record, f)
            results = {}
            for k, dim in enumerate(dimension_list):
                per_video = [{"video_path": os.path.join(videos_path, f),
                              "video_results": os.path.getsize(os.path.join(videos_path, f)) + 1000 * k}
                             for f in files]
                results[dim] = [0.0, per_video]
            with open(os.path.join(self.output_path, name + "_eval_results.json"), "w") as f:
                json.dump(results, f)
    '''
)


@pytest.fixture
def fake_vbench(tmp_path, monkeypatch):
    """Make `import vbench` work in a subprocess of this interpreter, with the stand-in above."""
    package = tmp_path / "fake_site" / "vbench"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(_FAKE_VBENCH)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(package.parent), os.environ.get("PYTHONPATH")])))
    record = tmp_path / "record.json"
    monkeypatch.setenv("FAKE_VBENCH_RECORD", str(record))
    return record


def _mp4s(tmp_path: Path, rng: np.random.Generator, n: int) -> list[VideoItem]:
    items = []
    sizes = rng.permutation(np.arange(10, 10 + 7 * n, 7))[:n]
    for i, size in enumerate(sizes):
        path = tmp_path / "out" / f"video_{i}.mp4"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"\0" * int(size))
        items.append(VideoItem(np.zeros((2, 4, 4, 3), np.float32), path, f"prompt {i}"))
    return items


def test_vbench_runs_custom_input_through_the_driver(tmp_path, rng, fake_vbench):
    items = _mp4s(tmp_path, rng, 3)
    prompts = ["a dog / running", "a dog / running", "ocean at dusk"]  # duplicate prompt, path separator
    hook = VBenchScorer(["temporal_flickering", "dynamic_degree"], python=sys.executable, cache_dir=tmp_path / "c",
                      device="cpu", timeout_s=120)  # fmt: skip
    sizes = [float(item.path.stat().st_size) for item in items]
    # dynamic_degree's RAFT weights are missing: it alone is skipped, with its reason; temporal_flickering runs.
    assert hook.score(items, prompts) == {"temporal_flickering": sizes}
    assert list(hook.skipped) == ["vbench:dynamic_degree"]
    assert "raft-things.pth" in hook.skipped["vbench:dynamic_degree"]
    assert json.loads(fake_vbench.read_text())["dimension_list"] == ["temporal_flickering"]
    raft = tmp_path / "c" / "raft_model" / "models" / "raft-things.pth"
    raft.parent.mkdir(parents=True)
    raft.write_bytes(b"")
    scores = hook.score(items, prompts)
    assert hook.skipped == {}
    assert scores == {"temporal_flickering": sizes, "dynamic_degree": [s + 1000 for s in sizes]}

    record = json.loads(fake_vbench.read_text())
    assert record["mode"] == "custom_input" and record["local"] is True and record["device"] == "cpu"
    assert record["dimension_list"] == ["temporal_flickering", "dynamic_degree"]
    assert record["files"] == sorted(["a dog   running-0.mp4", "a dog   running-1.mp4", "ocean at dusk-2.mp4"])
    assert record["prompt_list"] == {
        "a dog   running-0.mp4": prompts[0], "a dog   running-1.mp4": prompts[1], "ocean at dusk-2.mp4": prompts[2],
    }  # fmt: skip
    offline = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    assert record["env"] == {**offline, "VBENCH_CACHE_DIR": str(tmp_path / "c")}
    assert not Path(record["videos_path"]).exists()  # the temporary folder is cleaned up


def test_vbench_run_failure_carries_stderr(tmp_path, rng, fake_vbench, monkeypatch):
    monkeypatch.setenv("FAKE_VBENCH_FAIL", "1")
    items = _mp4s(tmp_path, rng, 1)
    hook = VBenchScorer(["temporal_flickering"], python=sys.executable, cache_dir=tmp_path, device="cpu")
    with pytest.raises(Unavailable) as info:
        hook.score(items, ["p"])
    assert "exit code" in str(info.value) and "fake VBench exploded" in str(info.value)


def test_vbench_run_timeout_is_reported(tmp_path, rng, fake_vbench, monkeypatch):
    monkeypatch.setenv("FAKE_VBENCH_SLEEP", "60")
    items = _mp4s(tmp_path, rng, 1)
    hook = VBenchScorer(["temporal_flickering"], python=sys.executable, cache_dir=tmp_path, device="cpu", timeout_s=2)
    with pytest.raises(Unavailable, match="did not finish within 2 s"):
        hook.score(items, ["p"])


def test_vbench_needs_written_files(tmp_path, fake_vbench):
    hook = VBenchScorer(["temporal_flickering"], python=sys.executable, cache_dir=tmp_path)
    frames = np.zeros((2, 4, 4, 3), np.float32)
    with pytest.raises(Unavailable, match=r"video\(s\) \[1\]"):
        hook.score([VideoItem(frames, Path(__file__), "a"), VideoItem(frames, None, "b")], ["a", "b"])
    with pytest.raises(ValueError, match="2 videos but 1 prompts"):
        hook.score([VideoItem(frames, None, "a"), VideoItem(frames, None, "b")], ["a"])
