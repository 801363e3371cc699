"""generation.flow_shift: the sampler's shift for one generation, and the shift the mini weights record."""

import json

import numpy as np
import pytest

from xattn_video.config import ConfigError, builtin_defaults, load_config
from xattn_video.generate import run_pipeline
from xattn_video.mini import trained_generation
from xattn_video.pipelines.loading import load_pipeline
from xattn_video.pipelines.sampler import sampler_shift, shift_key


class _Pipe:
    def __init__(self, scheduler):
        self.scheduler = scheduler


def _sigmas(scheduler, steps: int = 10) -> np.ndarray:
    scheduler.set_timesteps(steps)
    return np.asarray(scheduler.sigmas[:steps], dtype=np.float64)


@pytest.mark.parametrize("family", ["unipc", "euler"])
def test_sampler_shift_moves_the_steps_towards_noise_and_restores_the_scheduler(family):
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    from xattn_video.mini.model import SCHEDULER_CONFIG

    original = (UniPCMultistepScheduler(**SCHEDULER_CONFIG) if family == "unipc"
                else FlowMatchEulerDiscreteScheduler(shift=3.0))
    pipe = _Pipe(original)
    before = _sigmas(original)
    with sampler_shift(pipe, 12.0):
        assert pipe.scheduler is not original and type(pipe.scheduler) is type(original)
        assert pipe.scheduler.config[shift_key(original)] == 12.0
        shifted = _sigmas(pipe.scheduler)
    assert pipe.scheduler is original and original.config[shift_key(original)] == 3.0
    assert (shifted[1:] > before[1:]).all()  # every step after the first nearer to noise
    if family == "unipc":  # UniPC's flow sigmas: shift·u / (1 + (shift-1)·u) on an even grid
        base = before[1] / (3 - 2 * before[1])  # the u of the second step
        assert shifted[1] == pytest.approx(12 * base / (1 + 11 * base), rel=1e-4)
    with sampler_shift(pipe, None):
        assert pipe.scheduler is original


def test_sampler_shift_refuses_a_scheduler_without_a_fixed_shift():
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

    for scheduler, words in ((DDIMScheduler(), "has no shift"),
                             (FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True), "use_dynamic_shifting")):
        pipe = _Pipe(scheduler)
        with pytest.raises(ConfigError, match=f"generation.flow_shift.*{words}"):
            with sampler_shift(pipe, 5.0):
                pass
        assert pipe.scheduler is scheduler


def test_flow_shift_must_be_positive():
    with pytest.raises(ConfigError, match="generation.flow_shift"):
        load_config(None, ["model.path=tiny", "generation.flow_shift=-1"])
    assert load_config(None, ["model.path=tiny", "generation.flow_shift=5"]).generation.flow_shift == 5.0


def test_generation_with_the_models_own_shift_is_unchanged_and_another_shift_changes_it():
    base = ["model.path=tiny", "model.device=cpu", "generation.frames=5", "generation.steps=3",
            "generation.height=64", "generation.width=64"]
    pipe = load_pipeline(load_config(None, base).model)
    own = pipe.scheduler
    key = shift_key(own)

    def frames(*extra: str) -> np.ndarray:
        run = load_config(None, base + list(extra))
        run.dense = True
        return run_pipeline(pipe, run, show_progress=False).frames

    plain = frames()
    same = frames(f"generation.flow_shift={own.config[key]}")
    other = frames("generation.flow_shift=1.5")
    assert pipe.scheduler is own
    np.testing.assert_array_equal(plain, same)
    assert np.abs(plain.astype(np.float32) - other.astype(np.float32)).max() > 1e-3


def test_mini_presets_take_the_shift_their_weights_were_trained_with(tmp_path, monkeypatch):
    (tmp_path / "training.json").write_text(json.dumps({"flow_shift": {"mini": 12.0, "mini-large": 30.0}}))
    assert trained_generation("mini", tmp_path)["flow_shift"] == 12.0
    assert trained_generation("mini-large", tmp_path)["flow_shift"] == 30.0
    (tmp_path / "training.json").write_text(json.dumps({"text_len": 128}))  # weights from before the record
    assert "flow_shift" not in trained_generation("mini", tmp_path)
    import xattn_video.mini as mini

    (tmp_path / "training.json").write_text(json.dumps({"flow_shift": {"mini": 12.0, "mini-large": 30.0}}))
    monkeypatch.setattr(mini, "WEIGHTS_DIR", tmp_path)
    shifts = [d.get("generation", {}).get("flow_shift") for d in builtin_defaults("mini-large")]
    assert 30.0 in shifts
    assert load_config(None, ["model.path=mini-large"]).generation.flow_shift == 30.0
    assert load_config(None, ["model.path=mini-large", "generation.flow_shift=4"]).generation.flow_shift == 4.0
