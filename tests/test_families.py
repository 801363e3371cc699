"""XAttention through the one dispatch mechanism on Wan 2.1, Wan 2.2 (two experts), HunyuanVideo 1.5 and I2V.

Tiny random-weight models (head_dim 64) on the CPU; each family's runs are few and small.
"""

import importlib

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import spy_xattention

from xattn_video.pipelines import dispatch as dispatch_module
from xattn_video.pipelines.family import apply_xattention, supported_pipelines
from xattn_video.pipelines.tiny import (build_tiny_hunyuan15_pipeline, build_tiny_hunyuan_i2v_pipeline,
                                        build_tiny_wan_pipeline, tiny_hunyuan_i2v_prompt_template)

STEPS = 2
BLOCK = 16  # small blocks: several blocks per row at these tiny sizes
IMAGE = Image.new("RGB", (128, 128), (120, 40, 200))  # I2V conditioning image
# HunyuanVideo I2V: CFG only with a negative prompt and true_cfg_scale > 1; 24 text tokens fit the tiny Llava chat
# template's assistant header after "a cat walks"
HV_I2V_CALL = dict(image=IMAGE, height=64, width=64, num_frames=5, max_sequence_length=24, negative_prompt="",
                   true_cfg_scale=2.0, prompt_template=tiny_hunyuan_i2v_prompt_template())
FAMILIES = {
    # name: (builder, call kwargs, python module whose dispatch_attention_fn is patched, layers per expert)
    "wan": (lambda: build_tiny_wan_pipeline(),
            dict(height=96, width=96, num_frames=5, max_sequence_length=16),
            "diffusers.models.transformers.transformer_wan"),
    "wan22": (lambda: build_tiny_wan_pipeline(two_experts=True),
              dict(height=96, width=96, num_frames=5, max_sequence_length=16),
              "diffusers.models.transformers.transformer_wan"),
    "hunyuan15": (lambda: build_tiny_hunyuan15_pipeline(),
                  dict(height=64, width=64, num_frames=5),
                  "diffusers.models.transformers.transformer_hunyuan_video15"),
    "hunyuan_i2v": (lambda: build_tiny_hunyuan_i2v_pipeline(), HV_I2V_CALL,
                    "diffusers.models.transformers.transformer_hunyuan_video"),
}


def _run(pipe, call, **kw):
    kw = {"num_inference_steps": STEPS, **call, **kw}
    out = pipe(prompt="a cat walks", output_type="np", generator=torch.Generator().manual_seed(0), **kw)
    return out.frames[0]


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    build, call, module = FAMILIES[request.param]
    pipe = build()
    pipe.set_progress_bar_config(disable=True)
    return request.param, pipe, call, importlib.import_module(module)


def test_tau_one_is_stock_warmup_switches_and_remove_restores(family):
    name, pipe, call, module = family
    stock_dispatch = module.dispatch_attention_fn
    stock = _run(pipe, call)
    with apply_xattention(pipe, {"threshold": 1.0, "block_size": BLOCK, "warmup_steps": 0, "dense_backend": "stock"}):
        np.testing.assert_array_equal(_run(pipe, call), stock)
    # the default fast dense path (padded keys dropped, unmasked SDPA): the same video up to rounding
    with apply_xattention(pipe, {"threshold": 1.0, "block_size": BLOCK, "warmup_steps": 0}) as h:
        assert h.config.dense_backend == "fast"
        np.testing.assert_allclose(_run(pipe, call), stock, atol=1e-4, err_msg=name)
    # every pipeline here runs CFG: two transformer calls per step, both must see the same step
    with apply_xattention(pipe, {"threshold": 0.3, "block_size": BLOCK, "warmup_steps": 1}) as h:
        assert module.dispatch_attention_fn is not stock_dispatch
        frames = _run(pipe, call)
        records = list(h.stats.records)
        summary = h.summary()
    layers = 2  # per expert in the tiny models; Wan 2.2 runs one expert per step
    assert len(records) == STEPS * layers * 2, f"{name}: {len(records)} calls"
    for step in range(STEPS):
        rs = [r for r in records if r.step == step]
        assert len(rs) == layers * 2 and all(r.sparse == (step >= 1) for r in rs), f"{name} step {step}"
    assert np.isfinite(frames).all() and not np.array_equal(frames, stock)  # the sparse step changed the video
    assert 0 < summary["mean_density_sparse_calls"] < 1
    assert module.dispatch_attention_fn is stock_dispatch
    assert not any(dispatch_module.has_xattention(m) for m in pipe.transformer.modules())
    np.testing.assert_array_equal(_run(pipe, call), stock)


def test_wan22_second_expert_has_its_own_layers_and_thresholds(monkeypatch):
    pipe = build_tiny_wan_pipeline(two_experts=True)
    pipe.set_progress_bar_config(disable=True)
    calls = spy_xattention(monkeypatch)
    cfg = {"threshold": {"default": 1.0, 1: 0.3}, "block_size": BLOCK, "warmup_steps": 0,
           "expert2": {"threshold": {"default": 0.45, 1: 1.0}, "dense_layers": [1]}}
    with apply_xattention(pipe, cfg) as h:
        _run(pipe, FAMILIES["wan22"][1], guidance_scale=1.0, num_inference_steps=3)  # no CFG: one call per step
        records = list(h.stats.records)
        table = h.stats.density_table()
    # boundary 0.5 of 3 steps: step 0, 1 on transformer (t >= 500), step 2 on transformer_2
    by_step = {s: sorted((str(r.layer), r.sparse) for r in records if r.step == s) for s in range(3)}
    assert by_step[0] == by_step[1] == [("0", False), ("1", True)]
    assert by_step[2] == [("t2.0", True), ("t2.1", False)]
    assert [kw["threshold"] for _, _, kw in calls] == [0.3, 0.3, 0.45]
    assert set(table[2]) == {"t2.0", "t2.1"} and table[2]["t2.1"] == 1.0


def test_wan22_expert2_config_errors_name_the_key():
    from xattn_video.config import ConfigError

    pipe = build_tiny_wan_pipeline(two_experts=True)
    with pytest.raises(ConfigError, match="expert2"):
        apply_xattention(pipe, {"expert2": {"stride": 4}})
    with pytest.raises(ConfigError, match="transformer_2"):
        apply_xattention(pipe, {"expert2": {"dense_layers": [5]}})
    assert not any(dispatch_module.has_xattention(m) for m in pipe.transformer_2.modules())
    with pytest.raises(ConfigError, match="second expert"):
        apply_xattention(build_tiny_wan_pipeline(), {"expert2": {"dense_layers": [0]}})


def test_wan_i2v_image_tokens_stay_in_dense_cross_attention(monkeypatch):
    pipe = build_tiny_wan_pipeline(i2v=True)
    pipe.set_progress_bar_config(disable=True)
    calls = spy_xattention(monkeypatch)
    image = Image.new("RGB", (128, 128), (120, 40, 200))
    with apply_xattention(pipe, {"threshold": 0.3, "block_size": BLOCK, "warmup_steps": 0}) as h:
        frames = pipe(prompt="a cat", image=image, height=96, width=96, num_frames=5, num_inference_steps=2,
                      guidance_scale=1.0, max_sequence_length=512, output_type="np").frames[0]
        hooked = [layer.module for layer in h.layers]
    assert np.isfinite(frames).all()
    video_tokens = 2 * 6 * 6  # 2 latent frames of 6x6 patches
    # only self-attention over video tokens went sparse: no text region, never the image/text cross-attention
    seen = [(q[1], k[1], kw["text_start"]) for q, k, kw in calls]
    assert seen and all(c == (video_tokens, video_tokens, None) for c in seen)
    assert hooked == [b.attn1 for b in pipe.transformer.blocks]


def test_hunyuan15_i2v_image_tokens_are_in_the_forced_condition_region(monkeypatch):
    pipe = build_tiny_hunyuan15_pipeline(i2v=True)
    pipe.set_progress_bar_config(disable=True)
    calls = spy_xattention(monkeypatch)
    image = Image.new("RGB", (128, 128), (120, 40, 200))
    with apply_xattention(pipe, {"threshold": 0.3, "block_size": BLOCK, "warmup_steps": 0}):
        frames = pipe(prompt="a cat", image=image, num_frames=5, num_inference_steps=2, output_type="np").frames[0]
    assert np.isfinite(frames).all() and calls
    video = 2 * 8 * 8  # target size 128, compression 16: 8x8 per latent frame, 2 latent frames
    for q, _, kw in calls:
        seq, text_start, kv_len = q[1], kw["text_start"], kw["kv_len"].tolist()
        assert text_start == video  # image + text condition tokens start right after the video tokens
        # valid keys: video + 8 SigLIP image tokens + valid text; padding never attended
        assert all(video + 8 < n < seq for n in kv_len), (seq, kv_len)


def test_unsupported_pipeline_is_one_clear_error():
    from diffusers import DiffusionPipeline

    class Other(DiffusionPipeline):
        pass

    with pytest.raises(TypeError, match="does not support Other; supported pipelines: .*WanPipeline"):
        apply_xattention(Other())
    assert {"HunyuanVideoPipeline", "HunyuanVideoImageToVideoPipeline", "HunyuanVideo15Pipeline",
            "HunyuanVideo15ImageToVideoPipeline", "WanPipeline", "WanImageToVideoPipeline"} <= set(supported_pipelines())


def test_dispatch_patch_is_reference_counted():
    name = "diffusers.models.transformers.transformer_wan"
    module = importlib.import_module(name)
    stock = module.dispatch_attention_fn
    a, b = build_tiny_wan_pipeline(), build_tiny_wan_pipeline(seed=1)
    ha, hb = apply_xattention(a), apply_xattention(b)
    ha.remove()
    assert module.dispatch_attention_fn is not stock  # b still installed
    hb.remove()
    hb.remove()  # idempotent
    assert module.dispatch_attention_fn is stock


@pytest.mark.parametrize("condition", ["latent_concat", "token_replace"])
def test_hunyuan_video_i2v_llava_image_tokens_are_in_the_forced_text_region(monkeypatch, condition):
    """The Llava text encoder puts image tokens before the text: they must be condition tokens (after the video,
    kept dense by text forcing), and padding must stay a key suffix that kv_len never counts."""
    pipe = build_tiny_hunyuan_i2v_pipeline(image_condition=condition)
    pipe.set_progress_bar_config(disable=True)
    calls = spy_xattention(monkeypatch)
    with apply_xattention(pipe, {"threshold": {"default": 0.3, 1: 0.5}, "block_size": BLOCK, "warmup_steps": 0}) as h:
        assert h.family.name == "hunyuan_video" and h.state.plan.threshold(1) == 0.5
        assert [layer.module for layer in h.layers] == [pipe.transformer.transformer_blocks[0].attn,
                                                         pipe.transformer.single_transformer_blocks[0].attn]
        frames = _run(pipe, HV_I2V_CALL)
        summary = h.summary()
    assert not any(dispatch_module.has_xattention(m) for m in pipe.transformer.modules())
    assert np.isfinite(frames).all() and 0 < summary["mean_density_sparse_calls"] < 1
    video = 2 * 4 * 4  # 2 latent frames of 4x4 patches (64 px / VAE 8 / patch 2)
    text = HV_I2V_CALL["max_sequence_length"] - 4  # the pipeline crops the assistant header out of the text
    # 16 CLIP patches, every 2nd (latent_concat) or 4th (token_replace) kept; diffusers encodes the negative prompt
    # with the default interleave 2 whatever the condition type
    image, negative_image = 16 // (2 if condition == "latent_concat" else 4), 8
    # valid text: the prompt, then the "\n\n" after the assistant header; the negative prompt "" keeps only those
    expected = {(video + image + text, video, (video + image + len("a cat walks") + 2,)),
                (video + negative_image + text, video, (video + negative_image + 2,))}
    seen = [(q[1], kw["text_start"], tuple(kw["kv_len"].tolist())) for q, _, kw in calls]
    assert len(seen) == STEPS * 2 * 2 and set(seen) == expected, (condition, seen)  # 2 layers, CFG


def test_compare_runs_on_a_two_expert_wan(tmp_path):
    from xattn_video.eval.compare import compare
    from xattn_video.config import load_config

    run = load_config(overrides=["model.path=tiny-wan22", "generation.frames=5", "generation.steps=2",
                                 "generation.height=96", "generation.width=96", "xattn.block_size=16",
                                 "xattn.warmup_steps=0"])
    report = compare(run, ["a dog"], [0], "psnr", tmp_path / "cmp", show_progress=False)
    item = report["items"][0]
    assert set(item["density_per_step_layer"]["1"]) == {"t2.0", "t2.1"}
    assert item["pairwise"]["psnr"] is not None and (tmp_path / "cmp" / "density_heatmap.png").is_file()


def test_compare_runs_on_hunyuan_video_image_to_video(tmp_path):
    from xattn_video.eval.compare import compare
    from xattn_video.config import load_config

    image = tmp_path / "cond.png"
    Image.new("RGB", (80, 48), (200, 100, 50)).save(image)
    run = load_config(overrides=["model.path=tiny-hunyuan-i2v", f"generation.image={image}", "generation.steps=2",
                                 "generation.height=64", "generation.width=64", "xattn.block_size=16",
                                 "xattn.threshold=0.3", "xattn.warmup_steps=1"])
    report = compare(run, ["a dog"], [0], "psnr", tmp_path / "cmp", show_progress=False)
    item = report["items"][0]
    assert set(item["density_per_step_layer"]["1"]) == {"0", "1"}, item["density_per_step_layer"]
    assert all(v < 1 for v in item["density_per_step_layer"]["1"].values())
    assert 0 < item["pairwise"]["psnr"] < float("inf")  # the sparse step changed the video (identical: inf)


def _tiny_hunyuan():
    from xattn_video.pipelines.tiny import TINY_PROMPT_TEMPLATE, build_tiny_pipeline

    return build_tiny_pipeline(), dict(height=64, width=64, num_frames=5, prompt_template=TINY_PROMPT_TEMPLATE,
                                       max_sequence_length=16)


COMPILE_CASES = {  # name: () -> (pipeline, call kwargs)
    "hunyuan": _tiny_hunyuan,
    "hunyuan15": lambda: (build_tiny_hunyuan15_pipeline(), FAMILIES["hunyuan15"][1]),
    "wan22": lambda: (build_tiny_wan_pipeline(two_experts=True), FAMILIES["wan22"][1]),
}


@pytest.mark.parametrize("name", sorted(COMPILE_CASES))
def test_compiled_blocks_match_eager_and_never_recompile(name, monkeypatch):
    """model.compile with XAttention on every family: the dispatch is the only graph break, the video equals the
    eager one, and a second generation (warmup and sparse steps, per-layer τ, a dense layer, reused selections)
    compiles nothing new."""
    import xattn_video.compile as compile_module
    from xattn_video.generate import compile_pipeline

    pipe, call = COMPILE_CASES[name]()
    pipe.set_progress_bar_config(disable=True)
    cfg = {"threshold": {"default": 0.4, 0: 0.6}, "dense_layers": [1], "block_size": BLOCK, "warmup_steps": 1,
           "selection_reuse": 2, "backend": "torch"}
    if name == "wan22":
        cfg["expert2"] = {"threshold": 0.5}
    transformers = [t for t in (pipe.transformer, getattr(pipe, "transformer_2", None)) if t is not None]
    real = compile_module.compile_transformer
    monkeypatch.setattr(compile_module, "compile_transformer",
                        lambda t, **kw: real(t, backend="eager", **kw))  # dynamo's tracing, no C++ build
    counters = torch._dynamo.utils.counters
    try:
        with apply_xattention(pipe, cfg) as h:
            eager = _run(pipe, call, num_inference_steps=3)
            sparse_eager = h.summary()["sparse_calls"]
            torch._dynamo.reset()
            counters.clear()
            compile_pipeline(pipe)
            compiled = _run(pipe, call, num_inference_steps=3)
            graphs = counters["stats"]["unique_graphs"]
            compiled_again = _run(pipe, call, num_inference_steps=3)
            summary = h.summary()
        assert graphs > 0 and counters["stats"]["unique_graphs"] == graphs, "a second generation recompiled"
        breaks = list(counters["graph_break"])
        assert breaks and all("torch.compiler.disable" in b for b in breaks), breaks  # only our dispatch
        assert summary["sparse_calls"] == 3 * sparse_eager > 0, (summary["sparse_calls"], sparse_eager)
        np.testing.assert_allclose(compiled, eager, atol=1e-6, err_msg=name)
        np.testing.assert_array_equal(compiled_again, compiled)
    finally:
        torch._dynamo.reset()
        for t in transformers:  # leave the modules eager for other tests
            compile_module.uncompile_transformer(t)


def test_selection_reuse_and_time_stats_on_wan22_both_experts(monkeypatch):
    """Issue 10's reuse and the operator's timing marks through the dispatch, with ``t2.N`` labels."""
    from xattn_video.kernels import api

    pipe = build_tiny_wan_pipeline(two_experts=True)
    pipe.set_progress_bar_config(disable=True)
    estimates = []
    real = api._estimate
    monkeypatch.setattr(api, "_estimate", lambda *a, **kw: estimates.append(1) or real(*a, **kw))
    cfg = {"threshold": 0.3, "block_size": BLOCK, "warmup_steps": 0, "selection_reuse": 2, "time_stats": True,
           "expert2": {"threshold": 0.5}}
    call = dict(FAMILIES["wan22"][1], num_inference_steps=4)
    with apply_xattention(pipe, cfg) as h:
        frames = _run(pipe, call)
        hits, table = h.state.reuse.hits, h.stats.timing_table()
    # boundary 0.5 with the shifted schedule (timesteps 1000, 910, 717, 24): steps 0-2 on transformer, step 3 on
    # transformer_2; 2 layers, CFG: 2 calls per step and layer (Wan's cond and uncond share a signature: the
    # second call of a step re-estimates, the next step reuses). Estimates on steps 0, 2 and 3; reuse on step 1.
    assert len(estimates) == 3 * 2 * 2 and hits == 1 * 2 * 2, (len(estimates), hits)
    assert np.isfinite(frames).all()
    assert set(table[0]) == {0, 1} and set(table[3]) == {"t2.0", "t2.1"}
    fresh, reused = table[3]["t2.0"], table[1][0]
    assert fresh["estimate_ms"] > 0 and fresh["selection_ms"] > 0 and fresh["attention_ms"] > 0
    assert reused["attention_ms"] > 0


def test_calibrate_tiny_wan22_writes_expert2_thresholds(tmp_path):
    """Calibration through the dispatch on a two-expert model: t2.N layers land in xattn.expert2.threshold."""
    from omegaconf import OmegaConf

    from xattn_video.calibrate import run_calibration
    from xattn_video.config import load_config

    run = load_config(overrides=["model.path=tiny-wan22", "model.device=cpu", "generation.steps=4",
                                 "generation.frames=5", "generation.height=96", "generation.width=96",
                                 "xattn.warmup_steps=1", "xattn.block_size=16", "xattn.expert2.dense_layers=[1]"])
    out = tmp_path / "calib.yaml"
    result = run_calibration(run, ["a red fox"], steps=3, target_recall=0.9, samples=2, out=out,
                             show_progress=False)
    layers = set(result.profile.layers)
    assert layers == {0, 1, "t2.0"}, layers  # step 0 warmup; steps 1 (expert 1), 2-3 (expert 2, layer 1 dense)
    saved = load_config(out).xattn
    assert set(saved.expert2["threshold"]) == {"default", 0} and saved.expert2["dense_layers"] == [1]
    assert set(saved.threshold) == {"default", 0, 1}
    assert OmegaConf.load(out).xattn.expert2.threshold[0] == result.solution.thresholds["t2.0"]
    pipe = build_tiny_wan_pipeline(two_experts=True)
    with apply_xattention(pipe, saved) as h:  # the written config installs as is
        assert h.state.plans[1].threshold(0) == result.solution.thresholds["t2.0"]


def test_model_compile_is_accepted_for_every_family_and_compiles_both_experts(monkeypatch):
    """model.compile + XAttention: accepted before loading for every family; Wan 2.2 compiles both experts."""
    from xattn_video import generate as generate_module
    from xattn_video.config import load_config
    import xattn_video.compile as compile_module

    for model in ("tiny", "tiny-hunyuan15", "tiny-wan22"):
        generate_module.check_inputs(load_config(overrides=["model.compile=true", f"model.path={model}"]))
    pipe = build_tiny_wan_pipeline(two_experts=True)
    compiled = []
    monkeypatch.setattr(compile_module, "compile_transformer", lambda t, **kw: compiled.append((t, kw)) or 1)
    generate_module.compile_pipeline(pipe)
    assert compiled == [(pipe.transformer, {"fullgraph": False}), (pipe.transformer_2, {"fullgraph": False})]
