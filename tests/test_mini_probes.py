"""The mini model's diagnostic scripts: the per-pair direction tally and the text encoder's linear probe."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_right_by_object_count_splits_lone_and_paired_objects():
    tally = load_script("mini_prompt_match").right_by_object_count([
        {"directions": ["right"]}, {"directions": ["opposite"]},
        {"directions": ["right", "sideways"]}, {"directions": ["right", "right"]}])
    assert tally == {1: (1, 2), 2: (3, 4)}


def test_probe_accuracy_reads_a_linear_code_and_not_noise():
    probe_accuracy = load_script("mini_text_probe").probe_accuracy
    seed = int(np.random.SeedSequence().entropy % 2**31)
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randn(4, 16, generator=gen) * 3
    labels = torch.randint(0, 4, (600,), generator=gen)
    states = codes[labels] + torch.randn(600, 16, generator=gen)
    assert probe_accuracy(states[:400], labels[:400], states[400:], labels[400:], 4) > 0.95, seed
    noise = torch.randn(600, 16, generator=gen)
    assert probe_accuracy(noise[:400], labels[:400], noise[400:], labels[400:], 4) < 0.45, seed


def test_tuning_pairs_are_apart_from_the_held_out_pairs():
    """--pair-seed: settings are chosen on other prompts and seeds than the held-out pairs they are reported on; the
    held-out pairs themselves do not change (every committed prompt_match table uses them)."""
    from xattn_video.mini.grammar import held_out_pairs

    held_out = held_out_pairs(32)
    assert held_out[1] == ("a white ball moving left and a red square moving right", 10_001)  # as in the tables
    assert held_out[:2] == held_out_pairs(2) and [seed for _, seed in held_out] == list(range(10_000, 10_032))
    tuning = held_out_pairs(32, seed=77, first_seed=20_000)
    assert not {p for p, _ in tuning[1::2]} & {p for p, _ in held_out[1::2]}  # two-object prompts all differ
    assert {s for _, s in tuning}.isdisjoint(s for _, s in held_out)


def test_shape_readings_count_which_way_shapes_go_wrong():
    readings = load_script("mini_prompt_match").shape_readings([
        {"shapes": [["ball", "ball"]]}, {"shapes": [["square", "ball"], ["ball", None]]},
        {"shapes": [["square", "square"], ["square", "ball"]]}])
    assert readings == {"ball": {"ball": 1, "square": 0, "not found": 1},
                        "square": {"ball": 2, "square": 1, "not found": 0}}


def test_mini_look_selects_held_out_pairs_by_seed(tmp_path):
    """--seeds picks those held-out pairs (the prompts the prompt_match tables name by seed); a seed below the
    held-out range is one clear argparse line, before any model loads."""
    from xattn_video.mini.grammar import held_out_pairs

    look = load_script("mini_look")
    pairs = held_out_pairs(32)
    assert look.select_pairs(3) == pairs[:3]
    assert look.select_pairs(6, [10025, 10009]) == [pairs[9], pairs[25]]
    with pytest.raises(SystemExit) as e:
        look.main(["--out", str(tmp_path / "x.png"), "--seeds", "5"])
    assert e.value.code == 2
    assert not (tmp_path / "x.png").exists()


def test_contrast_prompts_change_only_the_named_attribute():
    contrast = load_script("mini_prompt_match").contrast_prompt
    two = "a red ball moving left and a white square moving down"
    assert contrast(two, "shapes") == "a red square moving left and a white ball moving down"
    assert contrast(two, "opposite") == "a red ball moving right and a white square moving up"
    assert contrast(two, "exchange") == "a red ball moving down and a white square moving left"
    assert contrast("a red ball moving left and a blue ball moving left", "exchange") == ""  # same direction
    assert contrast(two, "empty") == ""


def test_checkpoint_folder_holds_the_checkpoints_ema_weights(tmp_path):
    """mini_checkpoint_folder.py: a run's checkpoint, given as the 15 MB parts a device call returns, becomes a
    pipeline folder holding its EMA transformer (float16), EMA text encoder and VAE with its latent statistics."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from helpers import TINY_RECIPE, tiny_args
    from transformers import UMT5EncoderModel

    from xattn_video.mini import train

    checkpoint = tmp_path / "run.ckpt"
    recipe = {"phases": [TINY_RECIPE["phases"][0]]}
    assert train.main(tiny_args(tmp_path, "--time-limit", "0", "--checkpoint", str(checkpoint), recipe=recipe)) == 3
    parts = tmp_path / "parts"
    parts.mkdir()
    data = checkpoint.read_bytes()
    size = len(data) // 3 + 1
    for i, suffix in enumerate(("aa", "ab", "ac")):
        (parts / f"ckpt.part-{suffix}").write_bytes(data[i * size:(i + 1) * size])
    out = tmp_path / "interim"
    assert load_script("mini_checkpoint_folder").main([str(parts), str(out)]) == 0
    saved = torch.load(checkpoint, weights_only=False)
    transformer = WanTransformer3DModel.from_pretrained(out / "transformer")
    for key, value in saved["ema_transformer"].items():
        assert torch.equal(transformer.state_dict()[key], value.to(torch.float16)), key
    text_encoder = UMT5EncoderModel.from_pretrained(out / "text_encoder")
    for key, value in saved["ema_text_encoder"].items():
        assert torch.equal(text_encoder.state_dict()[key], value), key
    vae = AutoencoderKLWan.from_pretrained(out / "vae")
    assert list(vae.config.latents_mean) == pytest.approx(saved["latents_mean"])
    assert (out / "tokenizer").is_dir() and not (tmp_path / "interim.tmp").exists()


def test_paired_objects_counts_each_object_against_dense():
    paired = load_script("mini_prompt_match").paired_objects
    dense = [{"prompt": "a", "seed": 1, "right": [True]}, {"prompt": "b", "seed": 2, "right": [True, False]}]
    sparse = [{"prompt": "a", "seed": 1, "right": [False]}, {"prompt": "b", "seed": 2, "right": [True, True]}]
    assert paired(dense, sparse) == {"both": 1, "lost": 1, "gained": 1, "neither": 0}
    assert paired(dense, dense) == {"both": 2, "lost": 0, "gained": 0, "neither": 1}
    with pytest.raises(ValueError, match="pairs differ"):
        paired(dense, sparse[::-1])


def test_prompt_match_xattn_rows_pair_with_dense(tmp_path):
    """--attention dense xattn: the same pairs sparse (density below 1 at τ 0.5, no warmup), each object counted
    against its dense twin, both rows in the report. Tiny shape (192 tokens, 2 blocks per row), 2 steps."""
    import json

    script = load_script("mini_prompt_match")
    shape = ["--set", "generation.frames=9", "--set", "generation.height=64", "--set", "generation.width=64"]
    args = ["--model", "mini", "--pairs", "2", "--steps", "2", "--guidance", "1", "--device", "cpu", *shape,
            "--set", "xattn.warmup_steps=0", "--set", "xattn.threshold=0.5", "--set", "generation.clause_weight=0",
            "--attention", "xattn", "dense",
            "--out-dir", str(tmp_path), "--name", "pm"]
    assert script.main(args) == 0
    rows = json.loads((tmp_path / "pm.json").read_text())["rows"]
    assert [r["attention"] for r in rows] == ["dense", "xattn"]  # dense first whatever the order asked
    assert rows[0]["density"] == 1.0 and 0 < rows[1]["density"] < 1, rows[1]["density"]
    assert rows[1]["model"] == "mini xattn τ 0.5" and "vs_dense" not in rows[0]
    assert sum(rows[1]["vs_dense"].values()) == 3  # one lone and one two-object prompt: 3 objects
    for r in rows:  # the per-object "right" the paired count uses is the scorer's own all-three rule
        assert r["prompt_match"] == pytest.approx(np.mean([np.mean(p["right"]) for p in r["per_pair"]]))
    report = (tmp_path / "pm.md").read_text()
    assert "dense attention and XAttention" in report and "mini xattn τ 0.5, guidance 1: density" in report
