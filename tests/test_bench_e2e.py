"""`xvid bench --e2e` on the CPU: help, the no-GPU error, model sizes, fast random init, the projection."""

import pytest
import torch

from xattn_video import cli
from xattn_video.bench import e2e, e2e_models, e2e_report

TINY_HV = dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=64, num_layers=1,
               num_single_layers=1, num_refiner_layers=1, mlp_ratio=2.0, text_embed_dim=32, pooled_projection_dim=16,
               rope_axes_dim=(8, 28, 28))


def test_help_and_no_gpu_is_one_clear_line(capsys, monkeypatch):
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--e2e", "--help"])
    assert exc.value.code == 0 and "--settings" in capsys.readouterr().out
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.main(["bench", "--e2e", "--models", "hunyuan-video"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs a CUDA GPU" in err[0]


def test_any_cap_is_a_setting_and_a_bad_one_is_one_clear_line(capsys):
    settings = e2e_models.xattn_settings(5, "bf16", ["stock", "cap0.49", "cap.3"])
    assert settings["cap0.49"]["max_density"] == 0.49 and settings["cap.3"]["max_density"] == 0.3
    assert settings["cap0.49"]["threshold"] == 0.9 and settings["cap0.49"]["warmup_steps"] == 5
    assert "cap0.49" not in e2e_models.xattn_settings(5)  # only the caps asked for
    for bad in ("cap0", "cap1.5", "cap0.0", "capx", "cap-0.3"):
        with pytest.raises(SystemExit) as exc:
            cli.main(["bench", "--e2e", "--settings", "stock", bad])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert f"unknown setting '{bad}'" in err[-1] and "capD" in err[-1], err


def test_a_setting_can_run_in_8_bits_beside_its_bf16_self(capsys):
    """``NAME-int8`` / ``NAME-fp8``: the setting NAME with that precision, so one run times both against stock."""
    settings = e2e_models.xattn_settings(5, "bf16", ["stock", "cap0.35", "cap0.35-int8", "cap0.49-fp8", "dense-int8"])
    assert "precision" not in settings["cap0.35"]
    assert settings["cap0.35-int8"] == {**settings["cap0.35"], "precision": "int8"}
    assert settings["cap0.49-fp8"] == {**settings["cap0.49"], "precision": "fp8"}
    assert settings["dense-int8"]["precision"] == "int8" and settings["dense-int8"]["threshold"] == 1.0
    assert e2e_models.setting_name("cap0.35-reuse2-int8") == "cap0.35-reuse2-int8"
    for bad in ("stock-int8", "cap0.35-int4", "tau0.8-fp8"):
        with pytest.raises(SystemExit) as exc:
            cli.main(["bench", "--e2e", "--settings", "stock", bad])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert f"unknown setting '{bad}'" in err[-1], err


def test_result_files_keep_dots_in_the_name(tmp_path):
    json_path, md_path = e2e.result_files(tmp_path / "e2e-wan-cap0.49-taylorseer3")
    assert (json_path.name, md_path.name) == ("e2e-wan-cap0.49-taylorseer3.json", "e2e-wan-cap0.49-taylorseer3.md")


def test_token_counts_of_the_presets():
    hv, wan = e2e_models.MODELS["hunyuan-video"], e2e_models.MODELS["wan2.1-14b"]
    assert hv.image_tokens(None, hv.shapes["720p"]) + hv.text_tokens == 119056
    assert hv.image_tokens(None, hv.shapes["544p"]) + hv.text_tokens == 18616
    assert wan.image_tokens(None, wan.shapes["720p"]) == 75600


def test_fast_init_builds_finite_bf16_weights_and_restores_torch_state():
    linear_init = torch.nn.Linear.reset_parameters
    model = e2e_models.build_transformer(e2e_models.HUNYUAN, torch.device("cpu"), **TINY_HV)
    assert torch.get_default_dtype() == torch.float32 and torch.nn.Linear.reset_parameters is linear_init
    params = dict(model.named_parameters())
    assert all(p.dtype == torch.bfloat16 and torch.isfinite(p).all() for p in params.values())
    w = params["transformer_blocks.0.attn.to_q.weight"].float()
    assert 0.015 < w.std() < 0.025  # re-initialised, not left as uninitialised memory
    inputs = e2e_models.HUNYUAN.make_inputs(model, e2e_models.Shape("tiny", 64, 64, 5), torch.device("cpu"))
    with e2e.SdpaTimer(cuda=False) as timer:
        out = model(**inputs)[0]
    assert out.shape == inputs["hidden_states"].shape and timer.pairs


def test_projection_uses_dense_warmup_steps_and_reuse():
    def row(setting, ms, est=0.0):
        return dict(model="m", shape="s", tokens=1, setting=setting, total_ms=ms, dense_attention_ms=0.0,
                    estimate_ms=est, selection_ms=0.0, sparse_attention_ms=0.0, other_ms=0.0, density=None)

    rows = [row("stock", 1000.0), row("dense", 800.0), row("cap0.35", 400.0, est=40.0)]
    e2e_report.project(rows, steps=50, warmup=5, reuse=2)
    stock, dense, sparse = rows
    assert stock["video_s"] == pytest.approx(50.0) and dense["speedup_video"] == pytest.approx(1.25)
    assert sparse["video_s"] == pytest.approx(5 * 0.8 + 45 * 0.4)
    assert sparse["video_s_reuse"] == pytest.approx(5 * 0.8 + 45 * (0.4 - 0.02))
    assert "| cap0.35 |" in e2e_report.markdown(dict(gpu="g", torch="t", triton=None, date="d", steps=50, warmup_steps=5,
                                              reuse=2, rows=rows, notes=[]))


def test_projection_of_a_measured_reuse_step():
    def row(setting, ms, **extra):
        return dict(model="m", shape="s", tokens=1, setting=setting, total_ms=ms, dense_attention_ms=0.0,
                    estimate_ms=0.0, selection_ms=0.0, sparse_attention_ms=0.0, other_ms=0.0, density=None, **extra)

    rows = [row("stock", 1000.0), row("dense", 800.0), row("cap0.35", 400.0),
            row("cap0.35-reuse2", 360.0, reuse_every=2)]
    e2e_report.project(rows, steps=50, warmup=5, reuse=2)
    # 45 sparse steps: 23 estimate (cap0.35), 22 reuse
    assert rows[3]["video_s"] == pytest.approx(5 * 0.8 + 23 * 0.4 + 22 * 0.36)
    assert "video_s_reuse" not in rows[3]


class _FakeEvent:
    """torch.cuda.Event on the host clock, so the whole run can be smoke-tested on the CPU."""

    def __init__(self, enable_timing=True):
        self.t = None

    def record(self, stream=None):
        import time

        self.t = time.perf_counter()

    def synchronize(self):
        pass

    def elapsed_time(self, other):
        return (other.t - self.t) * 1e3


def _fake_cuda(monkeypatch) -> None:
    """torch.cuda's timing and device calls as no-ops, so a whole run goes on the CPU."""
    for name, fn in (("Event", _FakeEvent), ("synchronize", lambda *a: None), ("empty_cache", lambda: None),
                     ("get_device_name", lambda *a: "fake gpu")):
        monkeypatch.setattr(torch.cuda, name, fn)


def test_whole_run_on_tiny_models_on_the_cpu(monkeypatch, tmp_path):
    _fake_cuda(monkeypatch)
    tiny_wan = dict(num_attention_heads=2, attention_head_dim=64, in_channels=4, out_channels=4, text_dim=32,
                    freq_dim=32, ffn_dim=64, num_layers=1)
    args = e2e.build_parser().parse_args(["--shapes", "tiny", "--settings", "stock", "dense", "cap0.35",
                                          "cap0.35-reuse2"])
    for spec in e2e_models.MODELS.values():
        monkeypatch.setitem(spec.shapes, "tiny", e2e_models.Shape("tiny", 128, 128, 9))
    tiny_hv15 = dict(in_channels=17, out_channels=8, num_attention_heads=2, attention_head_dim=64, num_layers=1,
                     num_refiner_layers=1, mlp_ratio=2.0, text_embed_dim=32, text_embed_2_dim=32, image_embed_dim=32,
                     rope_axes_dim=(16, 24, 24), target_size=128, task_type="t2v")
    res = e2e.run(args, lambda msg: None, device=torch.device("cpu"),
                  config_overrides={"hunyuan-video": TINY_HV, "wan2.1-14b": tiny_wan, "hunyuan-video-1.5": tiny_hv15})
    rows = {(r["model"], r["setting"]): r for r in res["rows"]}
    hv = [rows[("hunyuan-video", s)] for s in ("stock", "dense", "cap0.35", "cap0.35-reuse2")]
    assert all("total_ms" in r and r["output_finite"] for r in hv)
    assert hv[0]["dense_attention_ms"] > 0 and hv[2]["estimate_ms"] > 0 and hv[2]["sparse_calls"] == 2
    assert hv[3]["reuse_hits"] == 2 and hv[3]["estimate_ms"] < hv[2]["estimate_ms"]
    assert "video_s" in hv[3] and "speedup_video" in hv[2]
    wan = [rows[("wan2.1-14b", s)] for s in ("stock", "dense", "cap0.35", "cap0.35-reuse2")]
    assert all("total_ms" in r and r["output_finite"] for r in wan)  # installed through pipelines/dispatch.py
    assert wan[2]["sparse_calls"] == 1 and wan[3]["reuse_hits"] == 1
    assert "cap0.35-reuse2" in e2e_report.markdown(res)
    hv15 = [rows[("hunyuan-video-1.5", s)] for s in ("stock", "dense", "cap0.35", "cap0.35-reuse2")]
    assert all("total_ms" in r and r["output_finite"] for r in hv15)
    # the sparse path ran (tiny sizes: 2 valid key blocks, the condition region dominates, so density is 1)
    assert hv15[2]["sparse_calls"] == 1 and hv15[3]["reuse_hits"] == 1 and hv15[2]["estimate_ms"] > 0
    assert hv15[0]["tokens"] == 3 * 8 * 8 + e2e_models.HUNYUAN15.text_tokens  # 16x VAE: 128 px -> 8 latents, + 1,985


def test_compiled_pass_on_a_tiny_model_on_the_cpu(monkeypatch):
    """--compile: every setting again with compiled blocks, ratios against eager and compiled stock."""
    import xattn_video.compile as compile_module

    _fake_cuda(monkeypatch)
    real, compiled = compile_module.compile_transformer, []
    monkeypatch.setattr(compile_module, "compile_transformer",
                        lambda t, **kw: compiled.append(kw) or real(t, backend="eager", **kw))  # no C++ build
    monkeypatch.setitem(e2e_models.HUNYUAN.shapes, "tiny", e2e_models.Shape("tiny", 128, 128, 9))
    args = e2e.build_parser().parse_args(["--models", "hunyuan-video", "--shapes", "tiny", "--compile",
                                          "--settings", "stock", "dense", "cap0.35", "--cache", "taylorseer"])
    try:
        res = e2e.run(args, lambda msg: None, device=torch.device("cpu"), config_overrides={"hunyuan-video": TINY_HV})
    finally:
        torch._dynamo.reset()
    rows = {(r["setting"], r["compiled"]): r for r in res["rows"]}
    assert set(rows) == {(s, c) for s in ("stock", "dense", "cap0.35") for c in (False, True)}
    assert compiled == [{"fullgraph": False}]
    sparse = rows[("cap0.35", True)]
    assert sparse["sparse_calls"] == 2 and sparse["estimate_ms"] > 0 and sparse["output_finite"]
    stock, stock_c = rows[("stock", False)], rows[("stock", True)]
    assert sparse["speedup_step"] == pytest.approx(stock["total_ms"] / sparse["total_ms"])
    assert sparse["speedup_step_same"] == pytest.approx(stock_c["total_ms"] / sparse["total_ms"])
    assert "speedup_step_same" not in rows[("cap0.35", False)]
    assert "| cap0.35 +compile |" in e2e_report.markdown(res) and "vs stock +compile" in e2e_report.markdown(res)
    # --cache: a served (predicted) step timed in the eager and in the compiled pass, against stock + cache of each
    served = {(c["setting"], c["compiled"]): c for c in res["cache_rows"]}
    assert set(served) == set(rows) and all(c["cache_status"] == "predicted" for c in served.values())
    assert served[("cap0.35", True)]["speedup_vs_stock_cache"] == pytest.approx(
        served[("stock", True)]["video_s"] / served[("cap0.35", True)]["video_s"])


@pytest.mark.parametrize("cache,extra", [("taylorseer", []), ("pab", []), ("firstblock", ["--computed-fraction", "0.5"])])
def test_cache_per_video_time_from_step_times_and_schedule(monkeypatch, cache, extra):
    """--cache NAME: each setting also times a served step (the ledger says what the cache did in it); the video
    time is the measured step times × the schedule: diffusers' own hooks over the checkpoint's timesteps for the
    fixed-schedule caches, the given fraction for the adaptive ones."""
    from xattn_video.bench import e2e_cache
    from xattn_video.caches.schedule import video_seconds

    _fake_cuda(monkeypatch)
    monkeypatch.setitem(e2e_models.HUNYUAN.shapes, "tiny", e2e_models.Shape("tiny", 128, 128, 9))
    args = e2e.build_parser().parse_args(["--models", "hunyuan-video", "--shapes", "tiny", "--settings", "stock",
                                          "dense", "cap0.35", "--steps", "10", "--warmup-steps", "2",
                                          "--cache", cache, *extra])
    res = e2e.run(args, lambda msg: None, device=torch.device("cpu"), config_overrides={"hunyuan-video": TINY_HV})
    schedule = res["cache_schedules"]["hunyuan-video"]["computed"]
    # taylorseer (diffusers' defaults): steps 0-2 compute, then (step - 4) % 5 == 0
    expected = {"taylorseer": [True] * 3 + [False, True] + [False] * 4 + [True],
                # timesteps in (100, 800) at shift 7: steps 6-8; PAB's iteration counts every call: 7 reuses
                "pab": [True] * 7 + [False, True, True],
                "firstblock": [True] * 5 + [False] * 5}[cache]
    if cache == "pab":
        ts = e2e_models.HUNYUAN.timesteps(10)
        inside = [100 < t < 800 for t in ts]
        assert expected == [not inside[i] or i % 2 == 0 for i in range(10)], ts
    assert schedule == expected, schedule
    rows = {r["setting"]: r for r in res["rows"]}
    cache_rows = {r["setting"]: r for r in res["cache_rows"]}
    assert set(cache_rows) == {"stock", "dense", "cap0.35"}
    want = {"taylorseer": "predicted", "pab": "reused", "firstblock": "skipped"}[cache]
    assert all(c["cache_status"] == want and c["served_ms"] > 0 for c in cache_rows.values())
    c = cache_rows["cap0.35"]
    assert c["video_s"] == pytest.approx(video_seconds(schedule, 2, rows["cap0.35"]["total_ms"] / 1e3,
                                                       c["served_ms"] / 1e3, rows["dense"]["total_ms"] / 1e3))
    assert c["speedup_video"] == pytest.approx(10 * rows["stock"]["total_ms"] / 1e3 / c["video_s"])
    assert c["speedup_vs_stock_cache"] == pytest.approx(cache_rows["stock"]["video_s"] / c["video_s"])
    text = e2e_cache.markdown(res)
    assert f"cap0.35 + {cache}" in text and f"{sum(schedule)}/10 steps computed" in text
    assert ("mini model" in text) == (cache == "firstblock")


def test_cache_options_are_checked_before_any_model(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cli.main(["bench", "--e2e", "--cache", "magcache"]) == 2
    assert "--computed-fraction" in capsys.readouterr().err
    assert cli.main(["bench", "--e2e", "--cache", "pab", "--cache-set", "skip=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'cache.pab.skip' is not a pab parameter" in err[0]


@pytest.mark.parametrize("lite", [False, True])
def test_served_step_out_of_memory_is_a_row_with_the_taylorseer_hint(monkeypatch, lite):
    """The first 720p TaylorSeer run beside XAttention ran out of memory on a 141 GB H200: the row says so, and
    for TaylorSeer's full mode names the lighter mode."""
    from xattn_video.bench import e2e_cache

    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    spec = e2e_models.HUNYUAN
    transformer = e2e_models.build_transformer(spec, torch.device("cpu"), **TINY_HV)
    inputs = spec.make_inputs(transformer, e2e_models.Shape("tiny", 128, 128, 9), torch.device("cpu"))

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.41 GiB.\nmore lines")

    params = e2e_cache.cache_params_from(["cache_interval=2"] + (["use_lite_mode=true"] if lite else []),
                                         "taylorseer")
    row = e2e_cache.time_served(transformer, spec, inputs, "stock", None, "taylorseer", params, 10, 2, False,
                                out_of_memory)
    assert row["skipped"].startswith("out of memory: CUDA out of memory. Tried to allocate 3.41 GiB.")
    assert ("use_lite_mode=true" in row["skipped"]) != lite
    hooked = [name for name, m in transformer.named_modules() if getattr(m, "_diffusers_hook", None) is not None
              and m._diffusers_hook.hooks]
    assert not hooked, hooked  # the cache came off again


def test_several_caches_share_one_run_each_with_its_own_parameters(monkeypatch):
    """--cache A:k=v B: the settings are timed once, each cache adds its served rows, schedule and table."""
    from xattn_video.bench import e2e_cache

    _fake_cuda(monkeypatch)
    monkeypatch.setitem(e2e_models.HUNYUAN.shapes, "tiny", e2e_models.Shape("tiny", 128, 128, 9))
    args = e2e.build_parser().parse_args(["--models", "hunyuan-video", "--shapes", "tiny", "--settings", "stock",
                                          "cap0.35", "--steps", "10", "--warmup-steps", "2", "--cache",
                                          "taylorseer:cache_interval=2,use_lite_mode=true", "magcache",
                                          "--computed-fraction", "0.5"])
    res = e2e.run(args, lambda msg: None, device=torch.device("cpu"), config_overrides={"hunyuan-video": TINY_HV})
    assert len(res["rows"]) == 2  # the settings once, not once per cache
    taylor, mag = res["cache_runs"]
    assert taylor["cache_params"]["cache_interval"] == 2 and taylor["cache_params"]["use_lite_mode"] is True
    # interval 2 after the first three steps: steps 0-2 computed, then every other one
    assert taylor["cache_schedules"]["hunyuan-video"]["computed"] == [True] * 3 + [False, True] * 3 + [False]
    assert mag["cache_schedules"]["hunyuan-video"]["computed"] == [True] * 5 + [False] * 5
    for run_, status in ((taylor, "predicted"), (mag, "skipped")):
        assert [(c["setting"], c["cache_status"]) for c in run_["cache_rows"]] == [("stock", status),
                                                                                   ("cap0.35", status)]
        assert all(c["video_s"] > 0 and c["speedup_vs_stock_cache"] > 0 for c in run_["cache_rows"])
    text = e2e_cache.markdown(res)
    assert text.count("## Step cache") == 2 and "cap0.35 + taylorseer" in text and "cap0.35 + magcache" in text
    assert res["cache_rows"] is taylor["cache_rows"]  # the first cache also where single-cache results kept it


def test_cache_items_are_checked(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cli.main(["bench", "--e2e", "--cache", "pab", "teacache"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown cache 'teacache'" in err[0]
    assert cli.main(["bench", "--e2e", "--cache", "pab", "taylorseer", "--cache-set", "cache_interval=2"]) == 2
    assert "applies to one --cache" in capsys.readouterr().err
    assert cli.main(["bench", "--e2e", "--cache", "taylorseer:cache_interval=2", "magcache"]) == 2
    assert "--computed-fraction" in capsys.readouterr().err
