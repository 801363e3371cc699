"""Config and prompts-file inputs people actually type: each mistake is one clear line, exit code 2."""

import pytest

from xattn_video.cli import main
from xattn_video.config import ConfigError, layer_thresholds, load_config
from xattn_video.prompts import parse_prompts, read_prompts


@pytest.mark.parametrize("value", ["{default:0.5,3:0.95}", "{default: 0.5, 3: 0.95}", "{default:0.5,3:[0.9,0.95]}"])
def test_threshold_mapping_without_spaces_parses(value):
    run = load_config(None, [f"xattn.threshold={value}"])
    taus = layer_thresholds(run.xattn.threshold, 60)
    assert taus[0] == 0.5 and taus[59] == 0.5
    assert taus[3] in (0.95, (0.9, 0.95))


def test_yaml_top_level_list_is_one_line_error(tmp_path, capsys):
    cfg = tmp_path / "list.yaml"
    cfg.write_text("- xattn:\n    threshold: 0.9\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(cfg)
    rc = main(["generate", "--model", "tiny", "--config", str(cfg), "--out", str(tmp_path / "x.mp4")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "top level must be a mapping" in err
    assert not list(tmp_path.glob("x*"))


def test_prompts_indented_comments_are_comments():
    assert parse_prompts("a cat\n   # indented comment\n\t#tab comment\n  a fox  \n#x\n\n") == ["a cat", "a fox"]


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", b"a prompt\x00\x01\x02\n"])
def test_binary_prompts_file_is_one_line_error(tmp_path, content):
    path = tmp_path / "prompts.txt"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match="is not UTF-8 text") as info:
        read_prompts(path)
    assert "\n" not in str(info.value)


def test_prompts_file_missing_or_empty(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        read_prompts(tmp_path / "nope.txt")
    (tmp_path / "c.txt").write_text("  # only a comment\n\n")
    with pytest.raises(ConfigError, match="has no prompts"):
        read_prompts(tmp_path / "c.txt")
    (tmp_path / "ok.txt").write_bytes("\ufeffun chat\n".encode("utf-8"))  # a BOM is not part of the prompt
    assert read_prompts(tmp_path / "ok.txt") == ["un chat"]


def test_compile_with_sequential_offload_is_one_line_error(tmp_path, capsys):
    with pytest.raises(ConfigError, match="model.compile.*sequential"):
        load_config(None, ["model.compile=true", "model.offload=sequential"])
    load_config(None, ["model.compile=true", "model.offload=model"])
    rc = main(["generate", "--model", "tiny", "--set", "model.compile=true", "--offload", "sequential",
               "--out", str(tmp_path / "x.mp4")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "model.compile" in err
    assert not list(tmp_path.glob("x*"))


@pytest.mark.parametrize("preset", ["hunyuan-720p-tau0.90", "hunyuan15-720p", "wan21-14b-720p-81f", "wan22-a14b-720p"])
def test_full_size_presets_compile_the_blocks(preset):
    from pathlib import Path

    run = load_config(Path(__file__).resolve().parents[1] / "configs" / f"{preset}.yaml")
    assert run.model.compile and run.generation.height == 720


@pytest.mark.parametrize("argv", [
    ["generate", "--seed", "99999999999999999999999"],
    ["generate", "--seed", "-1"],
    ["compare", "--prompt", "a cat", "--seeds", "1", "99999999999999999999999", "--out-dir", "{tmp}/cmp"],
    ["calibrate", "--prompts", "{tmp}/p.txt", "--target-recall", "0.9", "--seed", str(2**63), "--out", "{tmp}/c.yaml"],
])
def test_seed_out_of_torch_range_is_refused_before_loading(tmp_path, capsys, monkeypatch, argv):
    import xattn_video.pipelines.loading as loading

    def no_load(*a, **k):
        raise AssertionError("the model loaded before the seed was checked")

    monkeypatch.setattr(loading, "load_pipeline", no_load)
    monkeypatch.setattr("xattn_video.generate.load_pipeline", no_load)
    (tmp_path / "p.txt").write_text("a cat\n")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    rc = main([*argv, "--model", "tiny", "--steps", "2"] if argv[0] != "calibrate" else [*argv, "--model", "tiny"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "2**63-1" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.txt"]


def test_seed_range_edges():
    from xattn_video.config import SEED_MAX, check_seed

    import torch

    torch.Generator().manual_seed(SEED_MAX)  # the largest seed we accept is one torch takes
    assert load_config(None, [f"generation.seed={SEED_MAX}"]).generation.seed == SEED_MAX
    for bad in (SEED_MAX + 1, -1, True, 1.5):
        with pytest.raises(ConfigError, match="generation.seed"):
            check_seed(bad)
