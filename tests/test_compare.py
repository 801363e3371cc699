"""`xvid compare` end to end on the tiny model: report, plots, hooks, resume."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import write_prompts
from xattn_video.cli import main
from xattn_video.config import ConfigError, load_config
from xattn_video.eval import compare as compare_module
from xattn_video.eval.errors import Unavailable
from xattn_video.eval.scorers import register_scorer, registry
from xattn_video.pipelines.tiny import build_tiny_pipeline

# the random-weight tiny model: these tests check mechanics (test_quality_mini.py checks quality on the mini model)
SMALL = ["model.path=tiny", "generation.steps=3", "generation.frames=5", "generation.height=128", "generation.width=128"]


def small_run(*overrides):
    """The tiny model's config at 5 frames of 128x128, 3 steps, with ``overrides`` on top (the tiny VAE's
    decoding at its default 256x256 was most of these tests' time)."""
    return load_config(overrides=SMALL + list(overrides))


def run_compare(run, out, pipe, metrics="psnr", prompts=("a cat",)):
    """``compare`` of ``prompts`` at seed 0 into ``out``, no progress bars; returns the report."""
    return compare_module.compare(run, list(prompts), [0], metrics, out, pipe=pipe, show_progress=False)


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_pipeline()


class FakeHook:
    name = "fake"

    def __init__(self, args):
        self.args = args

    def score(self, videos, prompts):
        return {"fake_mean": [float(v.frames.mean()) for v in videos],
                "fake_prompt_len": [float(len(p)) for p in prompts]}


@pytest.fixture
def isolated_scorers(monkeypatch):
    """Scorers registered by a test vanish after it (the registry is module state)."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def test_compare_two_prompts_writes_report_and_plots(tmp_path, capsys, isolated_scorers):
    register_scorer("fake", FakeHook)
    prompts = write_prompts(tmp_path, "a cat walks on the grass\n# a comment line\n\na red fox in the snow\n",
                            "prompts.txt")
    out = tmp_path / "cmp"
    rc = main(["compare", "--prompts", str(prompts), "--metrics", "psnr,ssim,lpips,flicker,fake",
               "--out-dir", str(out), *sum((["--set", s] for s in [*SMALL, "xattn.threshold=0.5"]), [])])
    assert rc == 0  # τ 0.5: at SMALL's 128 tokens τ 0.9 keeps every block of the near-uniform tiny model
    report = json.loads((out / "report.json").read_text())
    assert [i["prompt"] for i in report["items"]] == ["a cat walks on the grass", "a red fox in the snow"]
    item = report["items"][0]
    assert 0 < item["pairwise"]["ssim"] <= 1 and item["pairwise"]["psnr"] > 0
    assert item["pairwise"]["lpips"] is None and "lpips" in report["skipped"]
    assert 0 < item["hooks"]["dense"]["flicker"] <= 1
    frames = np.load(out / item["folder"] / "xattn.npy").astype(np.float32)
    assert item["hooks"]["xattn"]["fake_mean"] == pytest.approx(float(frames.mean()), rel=1e-5)
    assert item["hooks"]["dense"]["fake_prompt_len"] == len("a cat walks on the grass")
    assert 0 < item["mean_density"] < 1 and item["seconds"]["dense"] > 0 and item["speedup"] > 0
    assert len(item["seconds_per_step"]["xattn"]) == 3
    assert {"density_heatmap.png", "quality_speed.png"} <= {p.name for p in out.iterdir()}
    md = (out / "report.md").read_text()
    assert "## a red fox in the snow" in md and "Means over all videos" in md and "fake_mean xattn" in md
    assert "noise" in md
    assert "report:" in capsys.readouterr().out


def test_tau_one_videos_match(tmp_path, pipe):
    run = small_run("xattn.threshold=1.0", "xattn.dense_backend=stock")
    report = run_compare(run, tmp_path, pipe, "psnr,ssim")
    item = report["items"][0]
    assert item["pairwise"]["psnr"] == "inf"
    assert item["pairwise"]["ssim"] == pytest.approx(1.0)
    a, b = (np.load(tmp_path / item["folder"] / f"{v}.npy") for v in ("dense", "xattn"))
    np.testing.assert_array_equal(a, b)


def test_sparse_videos_differ(tmp_path, pipe):
    run = small_run("xattn.threshold=0.3", "xattn.warmup_steps=0")
    report = run_compare(run, tmp_path, pipe)
    psnr = report["items"][0]["pairwise"]["psnr"]
    assert psnr != "inf" and math.isfinite(psnr)


def test_vbench_absent_is_a_clear_skip(tmp_path, pipe, monkeypatch):
    # This interpreter has no vbench, and the cache is empty: both reasons must reach the report.
    monkeypatch.setenv("XVID_VBENCH_PYTHON", sys.executable)
    monkeypatch.setenv("VBENCH_CACHE_DIR", str(tmp_path / "empty-cache"))
    run = small_run()
    report = run_compare(run, tmp_path / "out", pipe, "psnr,vbench:subject_consistency")
    reason = report["skipped"]["vbench"]
    assert reason.startswith("VBench is unavailable: ")
    assert "vbench does not import" in reason
    assert "'subject_consistency' needs checkpoint(s) that are missing" in reason
    assert str(tmp_path / "empty-cache" / "dino_model") in reason
    assert report["items"][0]["pairwise"]["psnr"] is not None  # the other metrics still ran
    assert f"- **vbench**: {reason}" in (tmp_path / "out" / "report.md").read_text()


@pytest.fixture
def generations(monkeypatch):
    """Records (folder, variant) of every video compare generates."""
    calls = []
    real = compare_module._video

    def counting(pipe, run, variant, folder, latents, show_progress, **kwargs):
        calls.append((folder.name, variant))
        return real(pipe, run, variant, folder, latents, show_progress, **kwargs)

    monkeypatch.setattr(compare_module, "_video", counting)
    return calls


def test_resume_skips_finished_videos(tmp_path, pipe, generations):
    run = small_run()
    run_compare(run, tmp_path, pipe, prompts=("a cat", "a dog"))
    first = json.loads((tmp_path / "report.json").read_text())
    # "interrupt": the second item lost its XAttention video and its result
    folder = tmp_path / first["items"][1]["folder"]
    for name in ("xattn.npy", "xattn.json", "result.json"):
        (folder / name).unlink()
    generations.clear()
    second = run_compare(run, tmp_path, pipe, prompts=("a cat", "a dog"))
    assert generations == [(folder.name, "xattn")]  # item 0 untouched, item 1's dense video reused
    assert second["items"][1]["pairwise"]["psnr"] == pytest.approx(first["items"][1]["pairwise"]["psnr"], rel=1e-6)


def test_resume_with_another_threshold_regenerates_the_xattention_video(tmp_path, pipe, generations, capsys):
    first = run_compare(small_run("xattn.threshold=0.9", "xattn.warmup_steps=0"), tmp_path, pipe)
    run = small_run("xattn.threshold=0.3", "xattn.warmup_steps=0")
    generations.clear()
    capsys.readouterr()
    again = run_compare(run, tmp_path, pipe)
    assert [v for _, v in generations] == ["xattn"]  # the dense video does not depend on τ: reused
    assert "xattn.threshold: 0.9 -> 0.3" in capsys.readouterr().err
    record = json.loads((tmp_path / again["items"][0]["folder"] / "xattn.json").read_text())
    assert record["provenance"]["config"]["xattn"]["threshold"] == 0.3
    assert again["items"][0]["mean_density"] == pytest.approx(record["mean_density"])
    assert again["items"][0]["mean_density"] < first["items"][0]["mean_density"]  # not the τ=0.9 result


def test_resume_with_other_metrics_rescores_without_regenerating(tmp_path, pipe, generations, capsys):
    run = small_run()
    run_compare(run, tmp_path, pipe)
    generations.clear()
    report = run_compare(run, tmp_path, pipe, "psnr,ssim,flicker")
    assert generations == []
    item = report["items"][0]
    assert item["pairwise"]["ssim"] is not None and item["hooks"]["xattn"]["flicker"] is not None
    assert "recomputing 000-a-cat-seed0 scores" in capsys.readouterr().err
    assert "| – |" not in (tmp_path / "report.md").read_text()


def test_resume_with_a_prompt_changed_after_its_slug_regenerates(tmp_path, pipe, generations, capsys):
    run = small_run()
    base = "a very long prompt that shares its first forty characters"
    first = run_compare(run, tmp_path, pipe, prompts=[base + ", cat"])
    generations.clear()
    second = run_compare(run, tmp_path, pipe, prompts=[base + ", dog"])
    assert first["items"][0]["folder"] == second["items"][0]["folder"]  # same folder name...
    assert sorted(v for _, v in generations) == ["dense", "xattn"]  # ...but nothing of the old prompt is reused
    assert second["items"][0]["prompt"] == base + ", dog"
    record = json.loads((tmp_path / second["items"][0]["folder"] / "dense.json").read_text())
    assert record["provenance"]["config"]["generation"]["prompt"] == base + ", dog"
    assert "generation.prompt" in capsys.readouterr().err


def test_metric_parsing():
    assert compare_module.parse_metrics("psnr,ssim,vbench:subject_consistency,motion_smoothness,flicker") == (
        ["psnr", "ssim"], ["vbench:subject_consistency,motion_smoothness", "flicker"])
    with pytest.raises(ConfigError, match="unknown metric 'psnrr'"):
        compare_module.parse_metrics("psnrr")


def test_hook_unavailable_message_reaches_report(tmp_path, pipe, isolated_scorers):
    class Broken:
        name = "broken"

        def __init__(self, args):
            pass

        def score(self, videos, prompts):
            raise Unavailable("needs weights at /x/y")

    register_scorer("broken", Broken)
    run = small_run()
    report = run_compare(run, tmp_path, pipe, "broken")
    assert report["skipped"]["broken"] == "needs weights at /x/y"


def test_prompt_file_errors(tmp_path, capsys):
    empty = write_prompts(tmp_path, "# nothing\n", "empty.txt")
    assert main(["compare", "--prompts", str(empty), "--out-dir", str(tmp_path / "o")]) == 2
    assert "has no prompts" in capsys.readouterr().err
    assert main(["compare", "--prompts", str(tmp_path / "missing.txt"), "--out-dir", str(tmp_path / "o")]) == 2
    assert "prompt file not found" in capsys.readouterr().err


def _read_only_place(tmp_path):
    """A folder where files cannot be created, even by root (then /sys, which refuses new files)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        (ro / "probe").touch()
    except OSError:
        return ro
    return Path("/sys")


@pytest.fixture
def no_model_load(monkeypatch):
    from xattn_video.pipelines import loading

    def refuse(*_args, **_kwargs):
        raise AssertionError("the model was loaded before the bad input was refused")

    monkeypatch.setattr(loading, "load_pipeline", refuse)


@pytest.mark.parametrize("argv,message", [
    (["--prompt", ""], "a prompt is empty"),
    (["--prompt", "   "], "a prompt is empty"),
    (["--prompt", "a cat", "--out-dir", "{ro}/cmp"], "cannot write in --out-dir"),
    (["--prompt", "a cat", "--out-dir", "{file}"], "exists and is not a directory"),
])
def test_bad_compare_input_is_one_line_exit_2_before_the_model_loads(tmp_path, capsys, no_model_load, argv, message):
    (tmp_path / "a_file").write_text("x")
    ro = _read_only_place(tmp_path)
    argv = [a.format(ro=ro, file=tmp_path / "a_file") for a in argv]
    if "--out-dir" not in argv:
        argv += ["--out-dir", str(tmp_path / "out")]
    rc = main(["compare", "--model", "tiny", *argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and message in err, err


def test_timed_generations_are_warmed_up_and_alternate_their_order(tmp_path, monkeypatch):
    from xattn_video import generate
    from xattn_video.generate import GenerationResult

    calls = []
    rng = np.random.default_rng(0)

    def fake_run_pipeline(pipe, run, latents=None, show_progress=True):
        variant = "dense" if run.dense else "xattn"
        calls.append((variant, run.generation.steps, run.xattn.warmup_steps, latents is not None))
        warm = run.generation.steps == 1  # only the warm-up runs one step here
        return GenerationResult(frames=rng.random((5, 8, 8, 3), dtype=np.float32),
                                seconds_total=100.0 if warm else 1.0, seconds_per_step=[1.0 / 3] * 3,
                                xattn=None if run.dense else {"mean_density_sparse_calls": 0.5})

    monkeypatch.setattr(generate, "run_pipeline", fake_run_pipeline)
    monkeypatch.setattr(generate, "initial_latents", lambda pipe, run: "latents")
    run = small_run("xattn.warmup_steps=2")
    report = run_compare(run, tmp_path, object(), prompts=("a", "b", "c"))
    # warm-up, untimed: dense 1 step; XAttention 2 steps, its dense warmup path then a sparse step
    assert calls == [("dense", 1, 2, False), ("xattn", 2, 1, False),
                     ("dense", 3, 2, True), ("xattn", 3, 2, True),
                     ("xattn", 3, 2, True), ("dense", 3, 2, True),
                     ("dense", 3, 2, True), ("xattn", 3, 2, True)]
    assert [i["order"] for i in report["items"]] == [["dense", "xattn"], ["xattn", "dense"], ["dense", "xattn"]]
    assert all(i["seconds"] == {"dense": 1.0, "xattn": 1.0} for i in report["items"])  # warm-up time not counted
    assert all(i["timed_together"] for i in report["items"])
    assert report["timing"]["speedup"] == {"n": 3, "min": 1.0, "median": 1.0, "max": 1.0, "ratio": 1.0}
    assert report["timing"]["warning"] is None


def test_busy_machine_warning_and_items_timed_in_different_runs(tmp_path, monkeypatch, capsys):
    from xattn_video import generate
    from xattn_video.generate import GenerationResult

    seconds = {"dense": iter([9.1, 1.5]), "xattn": iter([15.4, 0.4])}  # the swing: dense 9.1 s, then 1.5 s

    def fake_run_pipeline(pipe, run, latents=None, show_progress=True):
        timed = latents is not None  # the warm-up passes no latents
        return GenerationResult(frames=np.zeros((5, 8, 8, 3), np.float32),
                                seconds_total=next(seconds["dense" if run.dense else "xattn"]) if timed else 0.0,
                                seconds_per_step=[0.1] * 3,
                                xattn=None if run.dense else {"mean_density_sparse_calls": 0.5})

    monkeypatch.setattr(generate, "run_pipeline", fake_run_pipeline)
    monkeypatch.setattr(generate, "initial_latents", lambda pipe, run: "latents")
    from xattn_video.pipelines import loading

    monkeypatch.setattr(loading, "load_pipeline", lambda *a, **k: object())
    out = tmp_path / "cmp"
    argv = ["compare", "--model", "tiny", "--prompt", "a cat", "--seeds", "0", "1", "--metrics", "flicker",
            "--out-dir", str(out), *sum((["--set", s] for s in SMALL), [])]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert err.count("xvid compare: warning: timings vary") == 1 and "machine was busy" in err
    report = json.loads((out / "report.json").read_text())
    assert report["timing"]["dense_s"]["ratio"] == pytest.approx(9.1 / 1.5)
    assert "## Timing spread over items" in (out / "report.md").read_text()
    # resume after the XAttention video of item 1 was lost: its dense time is from the first run
    folder = out / report["items"][1]["folder"]
    for name in ("xattn.npy", "xattn.json", "result.json"):
        (folder / name).unlink()
    seconds["xattn"] = iter([0.5])
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert [i["timed_together"] for i in report["items"]] == [True, False]
    assert report["timing"]["not_timed_together"] == [folder.name]
    assert "† one of the two videos was reused" in (out / "report.md").read_text()


def test_partly_skipped_scorer_and_score_sources_reach_the_report(tmp_path, pipe, isolated_scorers):
    class FromFiles:
        name = "files"
        reads = "mp4"

        def __init__(self, args):
            self.skipped = {}

        def score(self, videos, prompts):
            self.skipped = {"files:needs_weights": "weights missing at /w"}
            return {"runs": [float(v.path.stat().st_size) for v in videos]}

    register_scorer("files", FromFiles)
    report = run_compare(small_run(), tmp_path, pipe, "psnr,flicker,files")
    assert report["skipped"] == {"files:needs_weights": "weights missing at /w"}
    assert report["items"][0]["hooks"]["xattn"]["runs"] > 0  # the part that could run did
    sources = report["score_sources"]
    assert sources["psnr"].startswith("float frames") and sources["flicker"].startswith("float frames")
    assert sources["runs"].startswith("mp4") and "lossy" in sources["runs"]
    md = (tmp_path / "report.md").read_text()
    assert "- runs: mp4 (8-bit, lossy" in md and "- psnr, flicker: float frames" in md
