"""XAttention on the tiny HunyuanVideo pipeline (random weights, head_dim 64, CPU)."""

import collections
import warnings

import numpy as np
import pytest
import torch
from diffusers.models.transformers import transformer_hunyuan_video as hv

from helpers import spy_xattention

from xattn_video.config import ConfigError
from xattn_video.kernels import xattention
from xattn_video.pipelines import dispatch as dispatch_module
from xattn_video.pipelines.hunyuan_video import XAttnHunyuanVideoPipeline, apply_xattention, attention_layers
from xattn_video.pipelines.tiny import TINY_PROMPT_TEMPLATE, build_tiny_pipeline
from xattn_video.warmup.schedule import StepTracker, timestep_index

STEPS = 4
CALL = dict(prompt="a cat walks on the grass", height=256, width=256, num_frames=9, num_inference_steps=STEPS,
            output_type="np", prompt_template=TINY_PROMPT_TEMPLATE, max_sequence_length=32)


@pytest.fixture(scope="module")
def pipe():
    p = build_tiny_pipeline(seed=0)
    p.set_progress_bar_config(disable=True)
    return p


def _run(pipe, seed=0, **kw):
    return pipe(generator=torch.Generator().manual_seed(seed), **{**CALL, **kw}).frames[0]


@pytest.fixture(scope="module")
def stock(pipe):
    return _run(pipe)


def test_tau_one_and_full_warmup_equal_stock(pipe, stock):
    stock_dense = {"block_size": 32, "dense_backend": "stock"}
    with apply_xattention(pipe, {"threshold": 1.0, "warmup_steps": 0, **stock_dense}):
        np.testing.assert_array_equal(_run(pipe), stock)
    with apply_xattention(pipe, {"threshold": 0.5, "warmup_steps": STEPS, **stock_dense}) as h:
        np.testing.assert_array_equal(_run(pipe), stock)
        assert h.stats.records and not any(r.sparse for r in h.stats.records)


def test_fast_dense_backend_matches_stock_up_to_rounding(pipe, stock, monkeypatch):
    calls = []
    real = dispatch_module.dense_attention
    monkeypatch.setattr(dispatch_module, "dense_attention", lambda *a, **kw: calls.append(a[3]) or real(*a, **kw))
    with apply_xattention(pipe, {"threshold": 1.0, "block_size": 32, "warmup_steps": 0}) as h:
        assert h.config.dense_backend == "fast"  # the default
        frames = _run(pipe)
    # host ints (no tensor), fewer than all keys: the padded text keys were dropped
    assert calls and all(isinstance(lens, list) and len(lens) == 1 and isinstance(lens[0], int) for lens in calls)
    np.testing.assert_allclose(frames, stock, atol=1e-4)


def test_sparse_differs_but_stays_finite(pipe, stock):
    with apply_xattention(pipe, {"threshold": 0.3, "block_size": 32, "warmup_steps": 1}) as h:
        frames = _run(pipe)
        summary = h.summary()
    assert np.isfinite(frames).all()
    assert np.abs(frames - stock).max() > 1e-4
    assert 0 < summary["mean_density_sparse_calls"] < 1


def test_remove_restores_stock_processors(pipe, stock):
    layers = attention_layers(pipe.transformer)
    before = [a.processor for a in layers]
    stock_dispatch = hv.dispatch_attention_fn
    h = apply_xattention(pipe, {"threshold": 0.3, "block_size": 32, "warmup_steps": 0})
    assert all(dispatch_module.has_xattention(a) for a in layers)
    assert hv.dispatch_attention_fn is not stock_dispatch
    with pytest.raises(RuntimeError, match="already installed"):
        apply_xattention(pipe)
    h.remove()
    assert [a.processor for a in layers] == before
    assert not any(dispatch_module.has_xattention(a) for a in [*layers, pipe.transformer])
    assert hv.dispatch_attention_fn is stock_dispatch
    np.testing.assert_array_equal(_run(pipe), stock)


@pytest.mark.parametrize("true_cfg", [False, True])
def test_warmup_switches_at_the_configured_step(pipe, true_cfg):
    extra = dict(negative_prompt="blurry", true_cfg_scale=2.0) if true_cfg else {}
    with apply_xattention(pipe, {"threshold": 0.5, "block_size": 32, "warmup_steps": 2}) as h:
        _run(pipe, **extra)
        records = list(h.stats.records)
    n_layers = 4
    calls_per_step = 2 if true_cfg else 1
    assert len(records) == STEPS * n_layers * calls_per_step
    for step in range(STEPS):
        rs = [r for r in records if r.step == step]
        assert len(rs) == n_layers * calls_per_step
        assert all(r.sparse == (step >= 2) for r in rs), f"step {step}"


def test_step_index_survives_custom_sigmas_and_repeated_generations(pipe):
    sigmas = [1.0, 0.9, 0.5, 0.2]
    with apply_xattention(pipe, {"threshold": 0.5, "block_size": 32, "warmup_steps": 3}) as h:
        _run(pipe, sigmas=sigmas)
        _run(pipe)
        steps = [r.step for r in h.stats.records]
        sparse = [r.sparse for r in h.stats.records]
    assert steps == [s for s in range(STEPS) for _ in range(4)] * 2
    assert sparse == [s >= 3 for s in range(STEPS) for _ in range(4)] * 2


def test_per_layer_thresholds_reach_the_right_layers(pipe, monkeypatch):
    calls = spy_xattention(monkeypatch)
    # layers 0,1 dual-stream; 2,3 single-stream in the tiny model
    cfg = {"threshold": {"default": 1.0, 1: 0.3, 2: [0.4, 0.6]}, "block_size": 32, "warmup_steps": 0,
           "dense_layers": [3]}
    with apply_xattention(pipe, cfg) as h:
        _run(pipe)
        table = h.stats.density_table()
        by_layer = {layer: [r.sparse for r in h.stats.records if r.layer == layer] for layer in range(4)}
    assert collections.Counter(kw["threshold"] for _, _, kw in calls) == {0.3: STEPS, (0.4, 0.6): STEPS}
    assert by_layer == {0: [False] * STEPS, 1: [True] * STEPS, 2: [True] * STEPS, 3: [False] * STEPS}
    assert table[0][0] == 1.0 and table[0][1] < 1.0


def test_processor_matches_stock_processor_with_xattention_dispatch(pipe, monkeypatch):
    """Same q/k/v (order, rotary, [image, text] layout) as diffusers' processor: feed the stock processor an
    attention function that runs xattention with the same arguments, and compare."""
    cfg = {"threshold": 0.4, "block_size": 32, "warmup_steps": 0}

    def dispatch(query, key, value, attn_mask=None, **_):
        kv = attn_mask.reshape(attn_mask.shape[0], -1).sum(-1)
        text_start = dispatch.image_tokens
        return xattention(query, key, value, threshold=0.4, stride=8, block_size=32, kv_len=kv,
                          text_start=text_start)

    captured = {}
    transformer = pipe.transformer
    orig_forward = transformer.forward

    def forward(hidden_states, *a, **kw):
        _, _, t, h, w = hidden_states.shape
        dispatch.image_tokens = t * (h // 2) * (w // 2)
        return orig_forward(hidden_states, *a, **kw)

    monkeypatch.setattr(transformer, "forward", forward)
    monkeypatch.setattr(hv, "dispatch_attention_fn", dispatch)
    captured["stock"] = _run(pipe)
    monkeypatch.undo()
    with apply_xattention(pipe, cfg):
        monkeypatch.setattr(transformer, "forward", forward)
        captured["ours"] = _run(pipe)
    np.testing.assert_allclose(captured["ours"], captured["stock"], atol=1e-5)


def test_padded_text_never_reaches_image_tokens(pipe):
    attn = pipe.transformer.transformer_blocks[0].attn
    g = torch.Generator().manual_seed(1)
    img = torch.randn(1, 96, 128, generator=g)
    txt = torch.randn(1, 40, 128, generator=g)
    n_valid_text = 13
    mask = (torch.arange(136) < 96 + n_valid_text)[None, None, None, :]
    with apply_xattention(pipe, {"threshold": 0.6, "block_size": 32, "warmup_steps": 0}):
        out_a, _ = attn(img, txt, attention_mask=mask)
        txt2 = txt.clone()
        txt2[:, n_valid_text:] = 100 * torch.randn(1, 40 - n_valid_text, 128, generator=g)
        out_b, _ = attn(img, txt2, attention_mask=mask)
    torch.testing.assert_close(out_a, out_b)


def test_non_prefix_mask_falls_back_to_dense_with_one_warning(pipe):
    attn = pipe.transformer.single_transformer_blocks[0].attn
    g = torch.Generator().manual_seed(2)
    img, txt = torch.randn(1, 96, 128, generator=g), torch.randn(1, 40, 128, generator=g)
    mask = torch.ones(1, 1, 1, 136, dtype=torch.bool)
    mask[..., 100] = False  # a hole: not a key-padding prefix
    stock = hv.HunyuanVideoAttnProcessor2_0()
    expected = stock(attn, img, txt, attention_mask=mask)
    with apply_xattention(pipe, {"threshold": 0.3, "block_size": 32, "warmup_steps": 0}):
        with pytest.warns(RuntimeWarning, match="not a key-padding prefix"):
            out = attn(img, txt, attention_mask=mask)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            attn(img, txt, attention_mask=mask.clone())  # warned once only
    torch.testing.assert_close(out[0], expected[0])
    torch.testing.assert_close(out[1], expected[1])


def test_config_errors_name_the_key(pipe):
    with pytest.raises(ConfigError, match="threshold"):
        apply_xattention(pipe, {"threshold": [0.9, 0.9]})  # a list needs one entry per layer (4)
    with pytest.raises(ConfigError, match="per-head list of 3"):
        apply_xattention(pipe, {"threshold": {"default": [0.9, 0.8, 0.7]}})
    with pytest.raises(ConfigError, match="dense_layers"):
        apply_xattention(pipe, {"dense_layers": [7]})
    with pytest.raises(ConfigError, match="treshold"):
        apply_xattention(pipe, {"treshold": 0.9})
    assert not any(dispatch_module.has_xattention(a) for a in [*attention_layers(pipe.transformer), pipe.transformer])


def test_pipeline_class_from_pretrained(pipe, tmp_path, stock):
    pipe.save_pretrained(tmp_path / "tiny")
    loaded = XAttnHunyuanVideoPipeline.from_pretrained(tmp_path / "tiny", xattn={"threshold": 1.0, "block_size": 32,
                                                                                  "dense_backend": "stock"})
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.xattn_handle.state.config.threshold, float)
    np.testing.assert_allclose(_run(loaded), stock, atol=1e-6)
    loaded.enable_xattention({"threshold": 0.3, "block_size": 32, "warmup_steps": 0})
    assert np.abs(_run(loaded) - stock).max() > 1e-4
    loaded.disable_xattention()
    assert loaded.xattn_handle is None


def test_timestep_index_without_sync_and_by_value():
    timesteps = torch.tensor([999.0, 750.0, 500.0, 250.0])
    assert [timestep_index(t, timesteps) for t in timesteps] == [0, 1, 2, 3]
    assert timestep_index(torch.tensor(500.0), timesteps) == 2  # a copy: matched by value
    assert timestep_index(250, timesteps) == 3


def test_step_tracker_outside_a_pipeline_loop():
    class Fake:
        current_timestep = None
        scheduler = None

    fake = Fake()
    tracker = StepTracker(fake)
    assert tracker.current() is None
    tracker.manual_step = 7
    assert tracker.current() == 7


def test_selection_reuse_skips_the_estimate_on_reused_steps(pipe, stock, monkeypatch):
    calls = []
    from xattn_video.kernels import api

    real = api._estimate
    monkeypatch.setattr(api, "_estimate", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    cfg = {"threshold": 0.5, "block_size": 32, "warmup_steps": 1, "selection_reuse": 2}
    with apply_xattention(pipe, cfg) as h:
        frames = _run(pipe)
        records = list(h.stats.records)
        hits = h.state.reuse.hits
    n_layers = 4
    # sparse steps 1, 2, 3: estimate on 1, reuse on 2, estimate on 3
    assert len(calls) == 2 * n_layers and hits == n_layers
    assert sum(r.sparse for r in records) == 3 * n_layers
    assert np.isfinite(frames).all() and np.abs(frames - stock).max() > 1e-4


@pytest.mark.parametrize("how", ["components", "from_pipe"])
def test_warmup_follows_the_pipeline_that_runs_the_transformer(pipe, how):
    """Issue 14: the step comes from whichever pipeline calls the transformer, not the one seen at apply time."""
    from diffusers import HunyuanVideoPipeline

    with apply_xattention(pipe, {"threshold": 0.5, "block_size": 32, "warmup_steps": 1}) as h:
        other = (HunyuanVideoPipeline(**pipe.components) if how == "components"
                 else HunyuanVideoPipeline.from_pipe(pipe))
        other.set_progress_bar_config(disable=True)
        assert other.transformer is pipe.transformer
        _run(other, num_inference_steps=2)
        records = list(h.stats.records)
    assert [(r.step, r.sparse) for r in records] == [(0, False)] * 4 + [(1, True)] * 4


def test_saved_xattn_pipeline_loads_with_the_stock_loader(tmp_path):
    """Issue 14: model_index.json names the stock class; construction and from_pretrained behave alike."""
    import json

    from diffusers import DiffusionPipeline, HunyuanVideoPipeline

    from xattn_video.pipelines.tiny import build_tiny_components

    built = XAttnHunyuanVideoPipeline(**build_tiny_components())
    assert built.xattn_handle is not None and built.xattn_handle.config.threshold == 0.9  # the defaults
    assert XAttnHunyuanVideoPipeline.from_pipe(built).xattn_handle is None  # shares built's install, no error
    built.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "model_index.json").read_text())["_class_name"] == "HunyuanVideoPipeline"
    stock = DiffusionPipeline.from_pretrained(tmp_path / "saved")
    assert type(stock) is HunyuanVideoPipeline
    assert not any(dispatch_module.has_xattention(a) for a in attention_layers(stock.transformer))
    loaded = XAttnHunyuanVideoPipeline.from_pretrained(tmp_path / "saved", xattn={"threshold": 0.7})
    assert loaded.xattn_handle.config.threshold == 0.7
    assert XAttnHunyuanVideoPipeline.from_pretrained(tmp_path / "saved").xattn_handle.config.threshold == 0.9
    assert XAttnHunyuanVideoPipeline.from_pretrained(tmp_path / "saved", xattn=False).xattn_handle is None
    for p in (built, loaded):
        p.disable_xattention()


def test_statistics_stay_bounded_over_many_calls():
    """Issue 14: one running sum per (step, layer) and a bounded list of recent calls, not one tensor per call."""
    from xattn_video.stats import AttentionStats

    stats = AttentionStats(max_records=5)
    for _generation in range(3):
        for step in range(4):
            stats.record(step, 0, 1.0, sparse=False)
            stats.record(step, 1, torch.tensor(0.25), sparse=True)
    assert stats.calls == 24 and len(stats.records) == 5
    assert stats.tensor_count() == 4  # one per (step, layer 1), whatever the number of generations
    summary = stats.summary()
    assert summary["sparse_calls"] == 12 and summary["mean_density_sparse_calls"] == pytest.approx(0.25)
    assert summary["density_per_step_layer"]["3"] == {"0": 1.0, "1": 0.25}
