"""Input that would run but not do what it says gets an XvidWarning (the CLI prints it as one ``warning:`` line)."""

import datetime
import json
import warnings

import pytest

import xattn_video

from xattn_video.calibrate.checks import profiled_steps
from xattn_video.cli import main
from xattn_video.config import XvidWarning, load_config, warn_all_dense
from xattn_video.eval.compare_inputs import check_compare_inputs


def tiny_run(*overrides):
    return load_config(overrides=["model.path=tiny", *overrides])


def test_warmup_covering_every_step_warns_unless_dense():
    with pytest.warns(XvidWarning, match="every step runs dense"):
        warn_all_dense(tiny_run("generation.steps=2", "xattn.warmup_steps=2"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_all_dense(tiny_run("generation.steps=2", "xattn.warmup_steps=1"))
        warn_all_dense(tiny_run("generation.steps=2", "xattn.warmup_steps=5", "dense=true"))


def test_generate_cli_prints_the_warning_as_one_line(tmp_path, capsys):
    rc = main(["generate", "--model", "tiny", "--height", "32", "--width", "32", "--frames", "1", "--steps", "2",
               "--set", "xattn.warmup_steps=2", "--out", str(tmp_path / "v.mp4")])
    assert rc == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert err == [line for line in err if line.startswith("xvid generate: warning: xattn.warmup_steps (2)")]
    assert len(err) == 1
    record = json.loads((tmp_path / "v.json").read_text())  # the run record says which xvid made it, and when
    assert record["xattn_video_version"] == xattn_video.__version__
    created = datetime.datetime.fromisoformat(record["created"])
    age = datetime.datetime.now(datetime.timezone.utc) - created
    assert created.tzinfo is not None and abs(age.total_seconds()) < 600


@pytest.mark.parametrize("metrics", ["", " , "])
def test_empty_metrics_warn(tmp_path, metrics):
    with pytest.warns(XvidWarning, match="--metrics is empty"):
        inputs = check_compare_inputs(["a cat"], [0], metrics, tmp_path)
    assert inputs.pairwise == [] and inputs.scorer_specs == []


def test_repeated_seeds_and_prompts_run_once_with_a_warning(tmp_path):
    with pytest.warns(XvidWarning, match="seed listed more than once"):
        inputs = check_compare_inputs(["a cat"], [1, 1, 2], "psnr", tmp_path)
    assert inputs.seeds == [1, 2]
    with pytest.warns(XvidWarning, match="prompt listed more than once"):
        inputs = check_compare_inputs(["a cat", "a dog", "a cat"], [0], "psnr", tmp_path)
    assert inputs.prompts == ["a cat", "a dog"]


def test_distinct_compare_inputs_do_not_warn(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        inputs = check_compare_inputs(["a cat", "a dog"], [0, 1], "psnr,ssim", tmp_path)
    assert inputs.seeds == [0, 1] and inputs.pairwise == ["psnr", "ssim"]


def test_calibrate_steps_beyond_the_schedule_warn_and_are_capped():
    run = tiny_run("generation.steps=4", "xattn.warmup_steps=1")
    with pytest.warns(XvidWarning, match="only 3 sparse-eligible steps"):
        assert profiled_steps(run, 10) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert profiled_steps(run, 3) == 3
