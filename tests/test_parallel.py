"""Multi-rank generation (Ulysses context parallelism) on the CPU over gloo, and its up-front checks.

The multi-process tests launch 2 ranks through ``xattn_video.launch.launch`` (the launcher ``xvid generate
--gpus`` uses); each costs two Python start-ups, so they are few and small.
"""

import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from xattn_video.cli import main
from xattn_video.config import ConfigError, GenerationConfig, load_config
from xattn_video.launch import launch, merge_rank_summaries
from xattn_video.video_io import to_uint8
from xattn_video.pipelines.parallel import check_heads, check_sequence, token_counts, ulysses_token_order

WORKER = str(Path(__file__).with_name("parallel_worker.py"))
HV = "HunyuanVideoTransformer3DModel"
# Small sizes: 128x128x5 frames → 128 image tokens + 32 text tokens on the tiny model (2 heads, 1 per rank).
SMALL = ["generation.height=128", "generation.width=128", "generation.frames=5", "generation.steps=3",
         "generation.seed=7", "generation.prompt=a red fox runs in snow"]  # 22 of 32 text tokens valid
# HunyuanVideo: our plan, [video_r, text_r] per rank (the reorder); Wan: diffusers' plan, no text in self-attention.
MODELS = {"tiny-hunyuan": ["model.path=tiny"], "tiny-wan": ["model.path=tiny-wan"]}
# step 0 dense (warmup), steps 1-2 sparse: every XAttention case checks dense and sparse steps across ranks
XATTN = ["xattn.warmup_steps=1", "xattn.threshold=0.6", "xattn.block_size=16"]  # 10 blocks of 16 tokens
# Modes per model, all in one 2-process launch (start-ups dominate on 2 shared cores). xattn: parallelism, then
# apply_xattention; xattn-first: the other order. The stock dense path and the other order on HunyuanVideo only
# (Wan's dense path is diffusers' own plan; its warmup step is dense anyway).
MODES = {"tiny-hunyuan": ["dense", "xattn", "xattn-first"], "tiny-wan": ["xattn"]}


def test_token_order_puts_gathered_chunks_in_single_gpu_order():
    # rank-chunk order after the all-to-all: [img_0, txt_0, img_1, txt_1] with 3 image and 2 text tokens per rank
    chunked = torch.tensor([0, 1, 2, 100, 101, 3, 4, 5, 102, 103])
    perm = ulysses_token_order(3, 2, 2)
    assert chunked[perm].tolist() == [0, 1, 2, 3, 4, 5, 100, 101, 102, 103]
    assert torch.equal(chunked[perm][torch.argsort(perm)], chunked)


def test_head_count_must_divide_by_the_degree():
    for degree in (1, 2, 3, 4, 6, 8):
        check_heads(24, degree)
    with pytest.raises(ConfigError, match="24 attention heads.*--gpus 2/3/4/6/8"):
        check_heads(24, 5)
    for degree in (2, 4, 5, 8):
        check_heads(40, degree)
    with pytest.raises(ConfigError, match="40 attention heads.*--gpus 2/4/5/8"):
        check_heads(40, 3)


def test_sequence_must_split_evenly():
    g = GenerationConfig(height=720, width=1280, frames=129, max_sequence_length=256)
    config = {"patch_size": 2, "patch_size_t": 1}
    assert token_counts(HV, config, g) == (118_800, 256)  # 119,056 tokens in all
    for degree in (2, 4, 8):
        check_sequence(HV, config, g, degree)
    with pytest.raises(ConfigError, match="256 text tokens.*3"):  # 24 heads split 3 ways, 256 text tokens don't
        check_sequence(HV, config, g, 3)
    odd = GenerationConfig(height=720, width=1264, frames=129, max_sequence_length=256)
    with pytest.raises(ConfigError, match="117,315 image tokens.*2 GPUs"):
        check_sequence(HV, config, odd, 2)


def test_layout_read_from_a_local_checkpoint_without_weights(tmp_path):
    from xattn_video.config import ModelConfig
    from xattn_video.pipelines.parallel import validate_parallel

    (tmp_path / "transformer").mkdir()
    (tmp_path / "vae").mkdir()
    (tmp_path / "model_index.json").write_text("{}")
    (tmp_path / "transformer" / "config.json").write_text(json.dumps(
        {"_class_name": "WanTransformer3DModel", "num_attention_heads": 40, "patch_size": [1, 2, 2]}))
    (tmp_path / "vae" / "config.json").write_text(json.dumps({"scale_factor_spatial": 16, "scale_factor_temporal": 4}))
    g = GenerationConfig(height=704, width=1280, frames=121, max_sequence_length=512)
    layout = validate_parallel(ModelConfig(path=str(tmp_path)), g, 4)
    assert (layout["heads_per_rank"], layout["image_tokens"]) == (10, 31 * 22 * 40)  # text is not split for Wan
    with pytest.raises(ConfigError, match="40 attention heads"):
        validate_parallel(ModelConfig(path=str(tmp_path)), g, 3)


def test_degree_not_dividing_heads_fails_fast_with_exit_2(tmp_path, capsys):
    start = time.perf_counter()
    rc = main(["generate", "--model", "tiny", "--gpus", "3", "--device", "cpu", "--steps", "2",
               "--out", str(tmp_path / "v.mp4")])
    assert rc == 2
    assert "2 attention heads" in capsys.readouterr().err
    assert time.perf_counter() - start < 20  # checked before any rank starts or any weight loads
    assert list(tmp_path.iterdir()) == []


def test_merge_rank_summaries_averages_equal_head_shares():
    def summary(d0, d1):
        return {"calls": 4, "sparse_calls": 2, "mean_density_sparse_calls": (d0 + d1) / 2,
                "density_per_step_layer": {"0": {"0": 1.0, "1": 1.0}, "1": {"0": d0, "1": d1}}}

    merged = merge_rank_summaries([summary(0.2, 0.4), summary(0.6, 0.8)])
    assert merged["mean_density_sparse_calls"] == pytest.approx(0.5)
    assert merged["density_per_step_layer"]["1"] == pytest.approx({"0": 0.4, "1": 0.6})
    assert [r["mean_density_sparse_calls"] for r in merged["per_rank"]] == pytest.approx([0.3, 0.7])
    assert merge_rank_summaries([None, None]) is None


@pytest.fixture(scope="module")
def two_rank_runs(tmp_path_factory) -> Path:
    """One 2-rank launch for every model's modes and the HunyuanVideo 1.5 check (worker ``jobs``): a launch costs
    two Python start-ups, most of these tests' time. Each model's outputs in its own folder."""
    root = tmp_path_factory.mktemp("two-ranks")
    jobs = [["generate", str(root / model), ",".join(MODES[model]), *MODELS[model], *SMALL, *XATTN]
            for model in sorted(MODELS)] + [["hv15", str(root / "hv15")]]
    for job in jobs:
        Path(job[1]).mkdir()
    assert launch(2, [WORKER, "jobs", json.dumps(jobs)]) == 0
    return root


@pytest.mark.parametrize("model", sorted(MODELS))
def test_two_ranks_equal_one_rank(two_rank_runs, model):
    from xattn_video.generate import run_pipeline
    from xattn_video.pipelines.loading import load_pipeline

    overrides = [*MODELS[model], *SMALL, *XATTN]
    modes = MODES[model]
    tmp_path = two_rank_runs / model
    for dense in sorted({mode == "dense" for mode in modes}):
        run = load_config(overrides=["model.device=cpu", *overrides, f"dense={dense}"])
        one = run_pipeline(load_pipeline(run.model), run, show_progress=False)
        assert one.frames.shape == (5, 128, 128, 3)
        for mode in [m for m in modes if (m == "dense") == dense]:
            two = np.load(tmp_path / f"frames-{mode}.npy")
            record = json.loads((tmp_path / f"summary-{mode}.json").read_text())
            np.testing.assert_allclose(two, one.frames, atol=2e-5, rtol=0, err_msg=f"{model} {mode}")
            # What the video encoder gets: at most one level of 255 apart. The mp4s differ more (up to ~12/255 at
            # the CLI's default size): H.264 amplifies those single-level flips on noise frames (README, Multi-GPU).
            assert np.abs(to_uint8(two).astype(int) - to_uint8(one.frames)).max() <= 1, f"{model} {mode}"
            assert record["parallel"]["world_size"] == 2 and record["parallel"]["backend"] == "gloo"
            if dense:
                assert record["xattn"] is None
                continue
            # stats of both ranks (one head each) merged; the same density as on one rank
            per_rank = record["xattn"]["per_rank"]
            assert len(per_rank) == 2 and all(r["sparse_calls"] > 0 for r in per_rank), mode
            assert record["xattn"]["mean_density_sparse_calls"] == pytest.approx(
                one.xattn["mean_density_sparse_calls"], abs=1e-6), mode
            assert one.xattn["mean_density_sparse_calls"] < 0.9  # blocks were really skipped on both sides


def test_hunyuan_video15_plan_two_ranks_equal_one_rank(two_rank_runs):
    # diffusers' HunyuanVideo 1.5 processor passes a query x key mask [B, 1, S, S], which Ulysses cannot
    # all-gather; enable_context_parallel routes it through our dispatch, which reduces it to a key mask.
    result = json.loads((two_rank_runs / "hv15" / "hv15.json").read_text())
    assert result["max_abs_diff"] < 1e-5 and result["max_abs_diff_sparse"] < 1e-5, result
    assert result["sparse_vs_dense"] > 1e-4, result  # the sparse forward really differs from the dense one
    assert sum(result["density_per_rank"]) / 2 == pytest.approx(result["density_one_rank"], abs=1e-6)
    assert result["density_one_rank"] < 0.9


def test_cli_two_ranks_on_cpu_rank0_writes_and_reports(tmp_path, capfd):
    out = tmp_path / "v.mp4"
    rc = main(["generate", "--gpus", "2", "--device", "cpu", "--height", "128", "--width", "128", "--frames", "5",
               "--steps", "2", "--out", str(out), "--set", "xattn.warmup_steps=1", "--set", "xattn.block_size=16"])
    captured = capfd.readouterr()
    assert rc == 0, captured.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.json", "v.mp4"]  # no temp files, one writer
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["parallel"]["ulysses_degree"] == 2 and record["parallel"]["world_size"] == 2
    assert record["frames"] == 5
    # XAttention on both ranks: step 1 sparse on each rank's head, per-rank density in the record
    assert [r["sparse_calls"] > 0 for r in record["xattn"]["per_rank"]] == [True, True]
    assert record["xattn"]["mean_density_sparse_calls"] < 1
    assert captured.out.count("wrote ") == 1 and "2 ranks (Ulysses degree 2, gloo)" in captured.out


def test_failing_rank_ends_every_rank(monkeypatch, capfd):
    monkeypatch.setenv("XVID_DIST_TIMEOUT", "3600")  # the launcher, not the collective timeout, must end rank 0
    start = time.perf_counter()
    rc = launch(2, [WORKER, "fail"])
    err = capfd.readouterr().err
    assert rc == 1
    # rank 0's collective breaks when rank 1 dies; both can fail within the same second, then both are named
    assert re.search(r"xvid: (rank 1|ranks 0, 1 \(failed together\)) of 2 failed", err), err[-2000:]
    assert "injected failure on rank 1" in err
    assert time.perf_counter() - start < 300


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_hunyuan_i2v_text_stream_counts_the_image_features():
    """HunyuanVideo I2V puts every 2nd Llava image feature before the prompt and crops 4 header tokens: the split
    check uses that length (540 with diffusers' template), and it is what the tiny pipeline really produces."""
    from PIL import Image

    from xattn_video.pipelines.tiny import build_tiny_hunyuan_i2v_pipeline, tiny_call_kwargs

    g = GenerationConfig(height=720, width=1280, frames=129, max_sequence_length=256)
    i2v = {"patch_size": 2, "patch_size_t": 1, "image_condition_type": "latent_concat"}
    assert token_counts(HV, i2v, g) == (118_800, 540)
    check_sequence(HV, i2v, g, 4)
    with pytest.raises(ConfigError, match="max_sequence_length' \\(256\\) gives 540 text-stream tokens.*8"):
        check_sequence(HV, i2v, g, 8)  # 256 divides by 8, 540 does not
    tiny = GenerationConfig(height=64, width=64, frames=5, max_sequence_length=64)
    pipe = build_tiny_hunyuan_i2v_pipeline()
    embeds, _, mask = pipe.encode_prompt(image=Image.new("RGB", (48, 32), (9, 99, 199)), prompt="a cat",
                                         max_sequence_length=64, device="cpu", **tiny_call_kwargs("tiny-hunyuan-i2v"))
    expected = token_counts(HV, dict(pipe.transformer.config), tiny, model_path="tiny-hunyuan-i2v")[1]
    assert embeds.shape[1] == mask.shape[1] == expected, (embeds.shape, expected)
