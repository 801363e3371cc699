"""`xvid generate` fails early and cleanly: bad --out and impossible sizes before any model loads, and a video
with non-finite frames is never written as a success."""

import os
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from xattn_video import generate as generate_module
from xattn_video.cli import main
from xattn_video.config import load_config
from xattn_video.memory import GenerationTooLarge
from xattn_video.video_io import write_mp4


@pytest.fixture
def no_model_load(monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("the model was loaded before the bad input was refused")

    monkeypatch.setattr(generate_module, "load_pipeline", refuse)


def _read_only_dir(tmp_path: Path) -> Path:
    """A folder where files cannot be created, even by root (then /sys, which refuses new files)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    probe = ro / "probe"
    try:
        probe.touch()
    except OSError:
        return ro
    probe.unlink()
    try:
        (Path("/sys") / f"xvid-probe-{os.getpid()}").touch()
    except OSError:
        return Path("/sys")
    pytest.skip("no read-only place to write to on this machine")


def _assert_one_line_exit_2(capsys, argv, message):
    start = time.perf_counter()
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and message in err, err
    assert time.perf_counter() - start < 5  # no model, no generation


@pytest.mark.parametrize("name,message", [
    ("video", "got no extension"), ("video.json", "got '.json'"), ("video.gif", "got '.gif'"),
    ("existing_dir", "is a directory"), ("a_file/video.mp4", "is not a directory"),
])
def test_bad_out_is_refused_before_the_model_loads(tmp_path, capsys, no_model_load, name, message):
    (tmp_path / "existing_dir").mkdir()
    (tmp_path / "a_file").write_text("x")
    before = sorted(tmp_path.rglob("*"))
    _assert_one_line_exit_2(capsys, ["generate", "--model", "tiny", "--out", str(tmp_path / name)], message)
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


def test_read_only_out_is_refused_before_the_model_loads(tmp_path, capsys, no_model_load):
    ro = _read_only_dir(tmp_path)
    _assert_one_line_exit_2(capsys, ["generate", "--model", "tiny", "--out", str(ro / "v.mp4")], "cannot write")


def test_write_mp4_in_a_read_only_place_reports_the_first_error(tmp_path):
    ro = _read_only_dir(tmp_path)
    with pytest.raises(PermissionError, match=f"cannot write {ro / 'v.mp4'}"):
        write_mp4(np.zeros((2, 16, 16, 3), np.float32), ro / "v.mp4", fps=8)


def test_impossible_size_is_refused_at_once_naming_the_memory(tmp_path, capsys, no_model_load):
    run = load_config(None, ["model.path=tiny", "generation.frames=100001"])  # HunyuanVideo: no rotary-table limit
    start = time.perf_counter()
    with pytest.raises(GenerationTooLarge, match=r"100001 frames at 256x256 needs about [\d.]+ GiB .* has [\d.]+ GiB"):
        generate_module.generate(run, tmp_path / "v.mp4")
    assert time.perf_counter() - start < 1.0
    _assert_one_line_exit_2(capsys, ["generate", "--model", "tiny", "--frames", "100001", "--out", str(tmp_path / "v.mp4")], "GiB")
    assert not list(tmp_path.iterdir())


def test_default_tiny_size_fits():
    from xattn_video.memory import check_fits

    assert check_fits(load_config(None), torch.device("cpu")).host_bytes < 2**30


class _NaNPipe:
    """Stands in for a pipeline whose model produced NaN (what `--prompt ""` did on the tiny model)."""

    _execution_device = torch.device("cpu")
    transformer = SimpleNamespace(config=SimpleNamespace(in_channels=4))

    def __init__(self) -> None:
        from diffusers import FlowMatchEulerDiscreteScheduler

        self.scheduler = FlowMatchEulerDiscreteScheduler()  # the default model's preset sets the sampler's shift

    def prepare_latents(self, *args):
        return torch.zeros(1)

    def set_progress_bar_config(self, **kwargs):
        pass

    def __call__(self, **kwargs):
        frames = np.random.rand(5, 32, 32, 3).astype(np.float32)
        frames[3, 1, 2, 0] = np.nan
        return SimpleNamespace(frames=[frames])


def test_non_finite_frames_are_never_written(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(generate_module, "load_pipeline", lambda *_: _NaNPipe())
    rc = main(["generate", "--dense", "--frames", "5", "--out", str(tmp_path / "v.mp4")])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "non-finite" in err and "1 of 5 frames" in err, err
    assert not list(tmp_path.iterdir())  # no mp4, no JSON, no temp file


def test_empty_prompt_gives_a_finite_video(tmp_path, capsys):
    from xattn_video.pipelines.tiny import TINY_PROMPT_TEMPLATE, build_tiny_pipeline

    pipe = build_tiny_pipeline()
    _, _, mask = pipe.encode_prompt(prompt="", prompt_template=TINY_PROMPT_TEMPLATE, max_sequence_length=32,
                                    device="cpu")
    assert mask.sum() >= 1  # one valid text token (the BOS), as real tokenizers give
    out = tmp_path / "empty.mp4"
    rc = main(["generate", "--prompt", "", "--steps", "1", "--height", "64", "--width", "64", "--frames", "5",
               "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert out.is_file()


# ------------------------------------------------------------------ size limits from the configs (pipelines/limits.py)


def test_wan_limits_are_the_rotary_tables_limits():
    """The limits computed from the config are exactly where the tiny Wan transformer's rotary table stops."""
    from xattn_video.pipelines.limits import size_limits
    from xattn_video.pipelines.tiny import _tiny_wan_transformer, tiny_transformer_config

    limits = size_limits(*tiny_transformer_config("tiny-wan"))
    assert (limits.frames, limits.height, limits.width) == (253, 1024, 1024)
    rope = _tiny_wan_transformer().rope

    def latent(frames, height, width):  # VAE 4x8x8
        return torch.empty(1, 1, (frames - 1) // 4 + 1, height // 8, width // 8)

    rope(latent(limits.frames, limits.height, limits.width))
    for too_big in ((limits.frames + 4, 16, 16), (5, limits.height + 16, 16), (5, 16, limits.width + 16)):
        with pytest.raises(RuntimeError):
            rope(latent(*too_big))


def test_limits_of_real_and_mini_configs():
    from xattn_video.config import ModelConfig
    from xattn_video.pipelines.limits import size_limits
    from xattn_video.pipelines.parallel import read_transformer_config

    wan14b = size_limits("WanTransformer3DModel", {"patch_size": [1, 2, 2], "rope_max_seq_len": 1024})
    assert (wan14b.frames, wan14b.height, wan14b.width) == (4093, 16384, 16384)
    mini = size_limits(*read_transformer_config(ModelConfig(path="mini")))  # VAE 4x4x4 from its shipped config
    assert (mini.frames, mini.height, mini.width) == (4093, 8192, 8192)
    for family in ("HunyuanVideoTransformer3DModel", "HunyuanVideo15Transformer3DModel"):
        assert size_limits(family, {}).width is None  # rotary grids built for the asked size


@pytest.mark.parametrize("args, option", [
    (["--model", "tiny-wan", "--width", "1280"], "--width 1280"),
    (["--model", "tiny-wan", "--height", "1040"], "--height 1040"),
    (["--model", "tiny-wan", "--frames", "257"], "--frames 257"),
    (["--config", "configs/wan21-14b-720p-81f.yaml", "--model", "tiny-wan"], "--width 1280"),
    (["--model", "tiny-wan22-i2v", "--width", "1280", "--image", "x.png"], "--width 1280"),
    (["--model", "tiny-wan", "--width", "1280", "--gpus", "2", "--device", "cpu"], "--width 1280"),
])
def test_too_large_for_the_rotary_table_is_refused_before_loading(tmp_path, capsys, no_model_load, monkeypatch,
                                                                  args, option):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    monkeypatch.setattr("xattn_video.launch.launch", lambda *a, **k: pytest.fail("ranks started"))
    rc = main(["generate", *args, "--out", str(tmp_path / "w.mp4")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and option in err and "rope_max_seq_len=64" in err, err
    assert list(tmp_path.iterdir()) == []
