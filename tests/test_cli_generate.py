"""`xvid generate` end to end on the tiny model, configs, presets and loading errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from xattn_video.cli import main
from xattn_video.config import ConfigError, load_config
from xattn_video.pipelines.loading import ModelLoadError, load_pipeline
from xattn_video.video_io import read_video

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


def test_generate_tiny_writes_playable_mp4_and_run_record(tmp_path, capsys):
    out = tmp_path / "fox.mp4"
    rc = main(["generate", "--model", "tiny", "--prompt", "a red fox in the snow", "--frames", "5", "--steps", "3",
               "--set", "xattn.threshold=0.8", "--out", str(out)])
    assert rc == 0
    frames = read_video(out)
    assert frames.shape == (5, 256, 256, 3)
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["config"]["generation"]["prompt"] == "a red fox in the snow"
    assert record["config"]["xattn"]["threshold"] == 0.8
    assert len(record["seconds_per_step"]) == 3
    table = record["xattn"]["density_per_step_layer"]
    assert set(table) == {"0", "1", "2"} and set(table["0"]) == {"0", "1", "2", "3"}
    assert all(v == 1.0 for v in table["0"].values())  # warmup step (tiny preset: 1 warmup step)
    assert all(0 < v < 1 for v in table["2"].values())
    assert "noise" in record["note"]
    assert record["sparse_kernel"] == "torch"  # the CPU's backend ("gluon" on a Hopper GPU with triton 3.6)
    printed = capsys.readouterr().out
    assert "mean density" in printed and str(out) in printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fox.json", "fox.mp4"]  # no temp files left


def test_generate_dense_flag(tmp_path):
    out = tmp_path / "dense.mp4"
    assert main(["generate", "--dense", "--frames", "5", "--steps", "2", "--out", str(out)]) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["xattn"] is None and record["sparse_kernel"] is None


@pytest.mark.parametrize(
    "args,message",
    [
        (["--set", "xattn.treshold=0.9"], "xattn.treshold"),
        (["--set", "xattn.stride=eight"], "xattn.stride"),
        (["--set", "xattn.threshold=0"], "xattn.threshold"),
        (["--frames", "10"], "generation.frames"),
        (["--height", "250"], "generation.height"),
        (["--flow-shift", "0"], "generation.flow_shift"),
        (["--clause-weight", "-1"], "generation.clause_weight"),
        (["--model", str(Path("/nonexistent/hunyuan"))], "does not exist"),
        (["--config", "no-such-preset.yaml"], "config file not found"),
    ],
)
def test_generate_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "v.mp4"
    rc = main(["generate", "--steps", "2", *args, "--out", str(out)])
    assert rc == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("preset", CONFIGS, ids=lambda p: p.name)
def test_presets_load(preset):
    run = load_config(preset)
    assert run.xattn.block_size % run.xattn.stride == 0


def test_paper_preset_values():
    run = load_config(Path(__file__).parents[1] / "configs" / "hunyuan-720p-tau0.90.yaml")
    assert (run.xattn.stride, run.xattn.threshold, run.xattn.warmup_steps) == (8, 0.9, 5)
    assert (run.generation.height, run.generation.width, run.generation.frames) == (720, 1280, 129)


def test_overrides_win_over_preset_and_tiny_defaults():
    preset = Path(__file__).parents[1] / "configs" / "tiny-cpu.yaml"
    run = load_config(preset, ["xattn.threshold=0.7", "generation.steps=2"], extra={"generation": {"seed": 5}})
    assert (run.xattn.threshold, run.generation.steps, run.generation.seed) == (0.7, 2, 5)
    assert load_config().generation.height == 128  # mini is the default model, with its sizes
    assert load_config(overrides=["model.path=tiny"]).generation.height == 256
    assert load_config(overrides=["model.path=/some/checkpoint"]).generation.height == 720


def test_unknown_nested_key_is_named():
    with pytest.raises(ConfigError, match="generation.fames"):
        load_config(overrides=["generation.fames=9"])


def test_loading_errors(tmp_path, monkeypatch):
    from xattn_video.config import ModelConfig

    (tmp_path / "not-a-pipeline").mkdir()
    with pytest.raises(ModelLoadError, match="no model_index.json"):
        load_pipeline(ModelConfig(path=str(tmp_path / "not-a-pipeline"), device="cpu"))
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_pipeline(ModelConfig(path="./missing/folder", device="cpu"))
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache"):
        load_pipeline(ModelConfig(path="someone/some-video-model", device="cpu"))


def test_offload_without_gpu_is_refused():
    from xattn_video.config import ModelConfig

    with pytest.raises(ModelLoadError, match="model.offload"):
        load_pipeline(ModelConfig(path="tiny", device="cpu", offload="model"))


def test_load_pipeline_from_a_local_folder(tmp_path):
    from xattn_video.config import ModelConfig
    from xattn_video.pipelines.tiny import build_tiny_pipeline

    build_tiny_pipeline(seed=3).save_pretrained(tmp_path / "ckpt")
    pipe = load_pipeline(ModelConfig(path=str(tmp_path / "ckpt"), device="cpu"))
    assert pipe.transformer.dtype.is_floating_point and pipe.vae.use_tiling  # tiling on for real checkpoints
    assert pipe.transformer.config.attention_head_dim == 64


def test_console_script_help():
    proc = subprocess.run([sys.executable, "-m", "xattn_video.cli", "generate", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "--prompt" in proc.stdout and "--set" in proc.stdout


@pytest.mark.parametrize(
    "metrics,message",
    [
        ("vbench:foo", "unknown VBench dimension 'foo'"),
        ("flicker:x", "the flicker scorer takes no arguments"),
        ("vbench:color", "custom_input"),
        ("psnr,nope", "unknown metric 'nope'"),
    ],
    ids=["vbench-dim", "flicker-args", "vbench-unsupported", "unknown-metric"],
)
def test_compare_metric_mistakes_are_one_line_and_exit_2(tmp_path, capsys, metrics, message):
    out = tmp_path / "cmp"
    assert main(["compare", "--prompt", "a cat", "--metrics", metrics, "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("xvid compare: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())  # refused before anything was written


@pytest.mark.parametrize(
    "model,image,message",
    [
        ("tiny-wan", "cond.png", "text-to-video and takes no --image"),
        ("tiny-wan-i2v", None, "image-to-video: pass --image"),
        ("tiny-hunyuan-i2v", None, "HunyuanVideoImageToVideoPipeline is image-to-video: pass --image"),
        ("tiny-wan-i2v", "missing.png", "image file not found"),
        ("tiny-hunyuan15-i2v", "garbage.png", "cannot read"),
    ],
)
def test_bad_image_is_a_clear_error_and_writes_nothing(tmp_path, capsys, model, image, message):
    from PIL import Image

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    Image.new("RGB", (32, 32)).save(inputs / "cond.png")
    (inputs / "garbage.png").write_bytes(b"not an image")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    args = ["generate", "--model", model, "--steps", "1", "--out", str(out_dir / "v.mp4")]
    if image is not None:
        args += ["--image", str(inputs / image)]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert list(out_dir.iterdir()) == []


def test_generate_tiny_hunyuan_i2v_with_image(tmp_path):
    from PIL import Image

    image = tmp_path / "cond.png"
    Image.new("RGB", (80, 48), (200, 100, 50)).save(image)
    out = tmp_path / "out" / "h.mp4"
    assert main(["generate", "--model", "tiny-hunyuan-i2v", "--image", str(image), "--steps", "2", "--height", "64",
                 "--width", "64", "--set", "xattn.block_size=16", "--set", "xattn.threshold=0.3",
                 "--out", str(out)]) == 0
    # latent_concat: diffusers drops the first 4 decoded frames (9 -> 5)
    assert read_video(out).shape == (5, 64, 64, 3)
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["config"]["generation"]["image"] == str(image) and "noise" in record["note"]
    table = record["xattn"]["density_per_step_layer"]
    assert set(table) == {"0", "1"} and set(table["1"]) == {"0", "1"} and all(v < 1 for v in table["1"].values())


def test_generate_tiny_wan22_records_both_experts(tmp_path):
    out = tmp_path / "w.mp4"
    assert main(["generate", "--model", "tiny-wan22", "--frames", "5", "--steps", "2", "--height", "96", "--width",
                 "96", "--set", "xattn.warmup_steps=0", "--set", "xattn.block_size=16", "--out", str(out)]) == 0
    table = json.loads(out.with_suffix(".json").read_text())["xattn"]["density_per_step_layer"]
    assert set(table["0"]) == {"0", "1"} and set(table["1"]) == {"t2.0", "t2.1"}  # boundary 0.5 of 2 steps


def test_pipeline_class_comes_from_model_index(tmp_path):
    from xattn_video.config import ModelConfig
    from xattn_video.pipelines.loading import pipeline_class_for

    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "WanImageToVideoPipeline"}))
    assert pipeline_class_for(ModelConfig(path=str(folder))).__name__ == "WanImageToVideoPipeline"
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(ModelLoadError, match="StableDiffusionPipeline, which XAttention does not support; "
                                             "supported pipelines: .*HunyuanVideo15Pipeline"):
        load_pipeline(ModelConfig(path=str(folder), device="cpu"))


def test_family_presets_state_their_token_counts():
    configs = Path(__file__).parents[1] / "configs"
    for name, tokens in [("wan21-14b-720p-81f.yaml", "75,600"), ("wan22-a14b-720p.yaml", "75,600"),
                         ("hunyuan15-720p.yaml", "111,600")]:
        text = (configs / name).read_text()
        run = load_config(configs / name)
        assert tokens in text and (run.xattn.stride, run.xattn.threshold, run.xattn.warmup_steps) == (8, 0.9, 5)
        g = run.generation
        latent = ((g.frames - 1) // 4 + 1) * (g.height // 16) * (g.width // 16)  # Wan 8x + patch 2 = HV1.5 16x
        assert f"{latent:,}" in text


def test_generate_with_model_compile_and_xattention(tmp_path, capsys, monkeypatch):
    """model.compile with XAttention on HunyuanVideo (once refused): says that the first step compiles, and runs."""
    import torch

    import xattn_video.compile as compile_module

    real = compile_module.compile_transformer
    monkeypatch.setattr(compile_module, "compile_transformer",
                        lambda t, **kw: real(t, backend="eager", **kw))  # dynamo's tracing, no C++ build
    out = tmp_path / "c.mp4"
    try:
        rc = main(["generate", "--model", "tiny", "--steps", "2", "--height", "64", "--width", "64", "--set",
                   "model.compile=true", "--set", "xattn.block_size=16", "--set", "xattn.threshold=0.3", "--set",
                   "xattn.warmup_steps=1", "--out", str(out)])
    finally:
        torch._dynamo.reset()
    assert rc == 0, capsys.readouterr().err
    assert "model.compile: the first denoising step compiles" in capsys.readouterr().err
    record = json.loads(out.with_suffix(".json").read_text())
    sparse_step = record["xattn"]["density_per_step_layer"]["1"]
    assert record["config"]["model"]["compile"] and all(v < 1 for v in sparse_step.values())


def test_hunyuan15_i2v_writes_the_asked_size(tmp_path):
    """HunyuanVideo 1.5 I2V picked its own size from the image's aspect ratio (144x112 for an asked 256x256) while
    the run record said the asked one; the video, the frames and the record now all have the asked size."""
    from PIL import Image

    from xattn_video.video_io import read_video

    Image.new("RGB", (400, 300), (200, 40, 40)).save(tmp_path / "cond.png")  # 4:3, unlike the asked 2:3
    out = tmp_path / "v.mp4"
    assert main(["generate", "--model", "tiny-hunyuan15-i2v", "--image", str(tmp_path / "cond.png"), "--steps", "1",
                 "--frames", "5", "--height", "96", "--width", "64", "--out", str(out)]) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    assert (record["height"], record["width"]) == (96, 64) == (record["config"]["generation"]["height"],
                                                               record["config"]["generation"]["width"])
    assert read_video(out).shape[1:3] == (96, 64)


def test_generate_says_when_it_composes_clauses(tmp_path, capsys):
    """The mini presets compose an "A and B" prompt by default (a composed step costs 4x the batch; the first 4
    steps are composed; at mini refereed): the summary says so; a one-clause prompt, or --clause-weight 0, does not."""
    small = ["--model", "mini", "--frames", "5", "--steps", "2", "--set", "generation.height=32",
             "--set", "generation.width=32"]
    two = "a red ball moving left and a blue square moving up"
    assert main(["generate", *small, "--prompt", two, "--out", str(tmp_path / "a.mp4")]) == 0
    assert "refereed clause composition: 2 clauses at weight 1 before step 4" in capsys.readouterr().out
    assert json.loads((tmp_path / "a.json").read_text())["clauses"] == ["a red ball moving left",
                                                                       "a blue square moving up"]
    assert main(["generate", *small, "--prompt", two, "--clause-weight", "0", "--out", str(tmp_path / "b.mp4")]) == 0
    assert main(["generate", *small, "--prompt", "a red ball moving left", "--out", str(tmp_path / "c.mp4")]) == 0
    assert "clause composition" not in capsys.readouterr().out
    assert json.loads((tmp_path / "b.json").read_text())["clauses"] is None
