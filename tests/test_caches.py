"""diffusers' step caches with XAttention (xattn_video/caches): composition, accounting, refusals.

Tiny random-weight models on the CPU. Wan runs true CFG (guidance 5: a ``cond`` and an ``uncond`` transformer call
per step), so every test here also covers the two-call case. Cache settings are chosen so that the pattern of
computed / skipped / predicted / reused steps is known in advance.
"""

import dataclasses

import numpy as np
import pytest
import torch

from xattn_video.caches.apply import CacheNotApplicable, enable_step_cache
from xattn_video.caches.params import CACHES, TRANSLATED, CacheConfig, cache_problem
from xattn_video.config import ConfigError
from xattn_video.pipelines.family import apply_xattention
from xattn_video.pipelines.tiny import build_tiny_hunyuan15_pipeline, build_tiny_pipeline, build_tiny_wan_pipeline

STEPS = 6
WAN_CALL = dict(height=64, width=64, num_frames=5, max_sequence_length=16, guidance_scale=5.0)
XATTN = {"threshold": 0.5, "block_size": 16, "warmup_steps": 2, "backend": "torch"}
# every setting below has a fixed, known pattern on these models
PARAMS = {
    "firstblock": {"threshold": 100.0},  # everything after the first step is "similar enough": skipped
    "taylorseer": {"disable_cache_before_step": 1, "cache_interval": 2},  # 0 c, 1 p, 2 c, 3 p, 4 c, 5 p
    "fastercache": {"spatial_attention_timestep_skip_range": [-1, 1001]},  # every second step reused
    "pab": {"spatial_attention_timestep_skip_range": [-1, 1001]},
    "magcache": {"mag_ratios": [1.0] * STEPS, "retention_ratio": 0.2, "threshold": 1.0, "max_skip_steps": 2},
}
EXPECTED = {
    "firstblock": ["computed"] + ["skipped"] * 5,
    "taylorseer": ["computed", "predicted"] * 3,
    "fastercache": ["computed", "reused"] * 3,
    "pab": ["computed", "reused"] * 3,
    # retention int(0.2 * 6 + 0.5) = 1 step, then at most 2 skipped in a row
    "magcache": ["computed", "skipped", "skipped", "computed", "skipped", "skipped"],
}


# the patterns of PARAMS when the first 4 steps must be computed (a composition window of 2 steps)
EXPECTED_WINDOW = {
    "firstblock": ["computed"] * 4 + ["skipped"] * 2,
    "taylorseer": ["computed"] * 4 + ["predicted", "computed"],  # disable_cache_before_step 4, interval 2
    "fastercache": EXPECTED["fastercache"],  # unchanged: its timestep ranges decide (the defaults start late)
    "pab": EXPECTED["pab"],
    "magcache": ["computed"] * 4 + ["skipped"] * 2,  # retention int(0.667 * 6 + 0.5) = 4 steps
}


@pytest.fixture(scope="module")
def wan():
    pipe = build_tiny_wan_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run(pipe, steps=STEPS, **kw):
    call = {**WAN_CALL, **kw}
    return pipe(prompt="a cat walks", num_inference_steps=steps, output_type="np",
                generator=torch.Generator().manual_seed(0), **call).frames[0]


def _statuses(cache):
    return [s["status"] for s in cache.ledger.per_step()]


def _records(handle):
    """{step: {layer: sparse?}} from the per-call records."""
    out = {}
    for r in handle.stats.records:
        out.setdefault(r.step, {})[r.layer] = r.sparse
    return out


# ------------------------------------------------------------------------------------------ config
def test_params_are_diffusers_fields_with_diffusers_defaults():
    """Every key we expose is a field of the diffusers dataclass, and its default is diffusers' (a drift in
    diffusers fails here)."""
    from diffusers.hooks import (FasterCacheConfig, FirstBlockCacheConfig, MagCacheConfig,
                                 PyramidAttentionBroadcastConfig, TaylorSeerCacheConfig)

    classes = {"firstblock": FirstBlockCacheConfig, "taylorseer": TaylorSeerCacheConfig, "magcache": MagCacheConfig,
               "fastercache": FasterCacheConfig, "pab": PyramidAttentionBroadcastConfig}
    ours_differ = {("pab", "spatial_attention_block_skip_range")}  # diffusers: None, then 2 with a warning
    for name, params in CACHES.items():
        fields = {f.name: f for f in dataclasses.fields(classes[name])}
        for key, default in params.items():
            if (name, key) in TRANSLATED:
                continue
            assert key in fields, (name, key)
            theirs = fields[key].default
            if (name, key) in ours_differ or fields[key].default is dataclasses.MISSING:
                continue
            if isinstance(theirs, torch.dtype):
                theirs = str(theirs).removeprefix("torch.")
            if isinstance(theirs, tuple):
                theirs = list(theirs)
            assert default == theirs, (name, key, default, theirs)


@pytest.mark.parametrize("cfg,message", [
    (CacheConfig(name="teacache"), "unknown cache 'teacache'"),
    (CacheConfig(name="pab", pab={"skip": 2}), "'cache.pab.skip' is not a pab parameter"),
    (CacheConfig(name="taylorseer", taylorseer={"cache_interval": 0}), "integer >= 1"),
    (CacheConfig(name="magcache", magcache={"mag_ratios": [1.0, -1.0]}), "positive numbers"),
])
def test_bad_cache_config_is_one_line_naming_the_key(cfg, message):
    problem = cache_problem(cfg)
    assert problem is not None and message in problem and "\n" not in problem


# ------------------------------------------------------------------------------------------ composition
@pytest.mark.parametrize("name", sorted(PARAMS))
def test_each_cache_with_xattention_in_both_orders(wan, name):
    """Same video whichever is installed first; the ledger shows the known pattern with both CFG calls; XAttention
    records no attention at steps whose attention the cache did not run (FirstBlockCache / MagCache: only the
    head block's layer 0 at skipped steps), and warmup (2 steps) is dense whatever the cache did."""
    videos, ledgers = [], []
    for cache_first in (False, True):
        cache = enable_step_cache(wan, name, PARAMS[name], steps=STEPS) if cache_first else None
        handle = apply_xattention(wan, XATTN)
        cache = cache or enable_step_cache(wan, name, PARAMS[name], steps=STEPS)
        try:
            videos.append(_run(wan))
            ledgers.append(_statuses(cache))
            records = _records(handle)
            calls = {(c.step, c.context) for c in cache.ledger.calls}
        finally:
            handle.remove()
            cache.remove()
        assert calls == {(s, ctx) for s in range(STEPS) for ctx in ("cond", "uncond")}
        for step, status in enumerate(EXPECTED[name]):
            layers = records.get(step, {})
            if status == "computed":
                assert set(layers) == {0, 1}, (step, layers)
            elif status == "skipped" and name == "firstblock":
                assert set(layers) == {0}, (step, layers)  # the head block runs, the rest is skipped
            else:
                assert layers == {}, (step, layers)
            assert all(sparse == (step >= XATTN["warmup_steps"]) for sparse in layers.values()), (step, layers)
    assert ledgers[0] == ledgers[1] == EXPECTED[name], ledgers
    np.testing.assert_allclose(videos[0], videos[1], atol=1e-6)


def test_warmup_counts_denoising_steps_not_computed_ones(wan):
    """TaylorSeer predicts steps 1 and 3 (their attention never runs). Warmup 2 means steps 0 and 1 are dense: step
    2 is the first sparse step, although it is only the second step whose attention runs (counting attention
    calls or computed steps would keep it dense), and step 4 too."""
    with apply_xattention(wan, {**XATTN, "warmup_steps": 2}) as handle, \
            enable_step_cache(wan, "taylorseer", PARAMS["taylorseer"]):
        _run(wan)
        records = _records(handle)
    assert sorted(records) == [0, 2, 4]
    assert not any(records[0].values())
    assert all(records[2].values()) and all(records[4].values())


def test_selection_reuse_window_is_in_denoising_steps(wan):
    """selection_reuse 2 estimates at step 2; step 3 is predicted by TaylorSeer, so step 4 (two steps later) is
    outside the window and estimates again: no reuse, although it is the next step that runs attention."""
    with apply_xattention(wan, {**XATTN, "selection_reuse": 2}) as handle, \
            enable_step_cache(wan, "taylorseer", PARAMS["taylorseer"]):
        _run(wan)
        hits = handle.state.reuse.hits
    assert hits == 0
    with apply_xattention(wan, {**XATTN, "selection_reuse": 2}) as handle:  # without the cache, step 3 reuses
        _run(wan)
        assert handle.state.reuse.hits > 0


@pytest.mark.parametrize("name", ["taylorseer", "pab", "firstblock"])
@pytest.mark.parametrize("xattn_first", [True, False])
def test_removing_one_leaves_the_other_working(wan, name, xattn_first):
    """handle.remove() keeps the cache (same video as the cache alone, same pattern); disable_cache() keeps
    XAttention (same video as XAttention alone, statistics recorded). Regression: diffusers' remove_hook drops a
    new_forward hook that sits above the removed one."""
    def install(order):
        out = {}
        for what in order:
            out[what] = (apply_xattention(wan, XATTN) if what == "x"
                         else enable_step_cache(wan, name, PARAMS[name], steps=STEPS))
        return out["x"], out["c"]

    with enable_step_cache(wan, name, PARAMS[name], steps=STEPS) as cache:
        cache_alone = _run(wan, steps=4)
    with apply_xattention(wan, XATTN):
        xattn_alone = _run(wan, steps=4)

    order = ("x", "c") if xattn_first else ("c", "x")
    handle, cache = install(order)
    handle.remove()
    np.testing.assert_allclose(_run(wan, steps=4), cache_alone, atol=1e-6)
    assert "computed" in _statuses(cache) and len(set(_statuses(cache))) == 2
    cache.remove()

    handle, cache = install(order)
    wan.transformer.disable_cache()  # the user's way; our ledger then records plain computed calls
    np.testing.assert_allclose(_run(wan, steps=4), xattn_alone, atol=1e-6)
    assert handle.summary()["sparse_calls"] > 0
    handle.remove()
    cache.remove()
    assert not wan.transformer.is_cache_enabled
    assert not any(getattr(m, "_diffusers_hook", None) and m._diffusers_hook.hooks for m in wan.transformer.modules())


# ------------------------------------------------------------------------------------------ families
@pytest.mark.parametrize("family", ["hunyuan", "hunyuan15", "wan22"])
@pytest.mark.parametrize("name", ["firstblock", "taylorseer", "pab"])
def test_every_family_with_xattention(family, name):
    """Each family (HunyuanVideo with true CFG, HunyuanVideo 1.5, Wan 2.2's two experts) runs each kind of cache
    (whole call skipped, attention predicted, attention reused) next to XAttention."""
    if family == "hunyuan":
        pipe, call = build_tiny_pipeline(), dict(height=64, width=64, num_frames=5, max_sequence_length=16,
                                                  negative_prompt="", true_cfg_scale=2.0)
    elif family == "hunyuan15":
        pipe, call = build_tiny_hunyuan15_pipeline(), dict(height=64, width=64, num_frames=5)
    else:
        pipe, call = build_tiny_wan_pipeline(two_experts=True), dict(WAN_CALL)
    pipe.set_progress_bar_config(disable=True)
    accepted = __import__("inspect").signature(pipe.__call__).parameters
    call = {k: v for k, v in call.items() if k in accepted}
    with apply_xattention(pipe, XATTN) as handle, enable_step_cache(pipe, name, PARAMS[name], steps=4) as cache:
        frames = pipe(prompt="a cat walks", num_inference_steps=4, output_type="np",
                      generator=torch.Generator().manual_seed(0), **call).frames[0]
        statuses = _statuses(cache)
        sparse = handle.summary()["sparse_calls"]
    assert np.isfinite(frames).all()
    assert statuses[0] == "computed" and any(s != "computed" for s in statuses), statuses
    assert sparse > 0
    if family == "wan22":
        assert {c.expert for c in cache.ledger.calls} == {0, 1}


def test_refusals_are_one_line_and_install_nothing(wan):
    two = build_tiny_wan_pipeline(two_experts=True)
    with pytest.raises(CacheNotApplicable, match="two-expert"):
        enable_step_cache(two, "magcache", {"mag_ratios": [1.0] * 4}, steps=4)
    with pytest.raises(CacheNotApplicable, match="calibration"):
        enable_step_cache(wan, "magcache", steps=4)
    with pytest.raises(CacheNotApplicable, match="hooks no module"):
        enable_step_cache(wan, "taylorseer", {"cache_identifiers": ["^nothing$"]})
    with pytest.raises(ConfigError, match="did you mean pab"):
        enable_step_cache(wan, "pap")
    with enable_step_cache(wan, "pab"):
        with pytest.raises(CacheNotApplicable, match="already has a cache"):
            enable_step_cache(wan, "firstblock")
    for pipe in (wan, two):
        for t in (pipe.transformer, getattr(pipe, "transformer_2", None)):
            if t is not None:
                assert not t.is_cache_enabled
                assert not any(getattr(m, "_diffusers_hook", None) and m._diffusers_hook.hooks for m in t.modules())


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_compiled_blocks_with_a_cache_match_eager_and_do_not_recompile(wan, name, monkeypatch):
    """model.compile with XAttention and each cache: same video as eager, the same schedule, and a second generation
    compiles nothing new (PAB's / FasterCache's hooks branch on a count and MagCache disables compilation of whole
    blocks: compose.untraced keeps only the hooks' own frames out of dynamo)."""
    import xattn_video.compile as compile_module
    from xattn_video.generate import compile_pipeline

    real = compile_module.compile_transformer
    monkeypatch.setattr(compile_module, "compile_transformer", lambda t, **kw: real(t, backend="eager", **kw))
    counters = torch._dynamo.utils.counters
    with apply_xattention(wan, XATTN), enable_step_cache(wan, name, PARAMS[name], steps=4) as cache:
        eager = _run(wan, steps=4)
        cache.ledger.clear()
        try:
            torch._dynamo.reset()
            counters.clear()
            compile_pipeline(wan)
            compiled = _run(wan, steps=4)
            graphs = counters["stats"]["unique_graphs"]
            statuses = _statuses(cache)
            _run(wan, steps=4)
            again = counters["stats"]["unique_graphs"]
        finally:
            torch._dynamo.reset()
            compile_module.uncompile_transformer(wan.transformer)
    np.testing.assert_allclose(compiled, eager, atol=1e-5, err_msg=name)
    assert statuses == EXPECTED[name][:4], statuses
    assert graphs > 0 and again == graphs, (graphs, again)


# ------------------------------------------------------------------------------------------ command line
def test_generate_cache_record_and_magcache_calibration_in_one_command(tmp_path, capsys):
    """`xvid generate --cache magcache --set cache.magcache.calibrate=true` writes the ratios as a config next to
    the video; that config then skips steps; the run record says per step what happened and the summary prints
    the computed-step fraction."""
    import json

    from xattn_video.cli import main

    size = ["--model", "tiny-wan", "--device", "cpu", "--height", "64", "--width", "64", "--frames", "5",
            "--steps", "5"]
    calib = tmp_path / "calib" / "mag.mp4"
    assert main(["generate", *size, "--cache", "magcache", "--set", "cache.magcache.calibrate=true",
                 "--out", str(calib)]) == 0
    yaml_path = calib.with_suffix(".yaml")
    printed = capsys.readouterr().out
    assert str(yaml_path) in printed and "computed-step fraction 1.00" in printed
    from xattn_video.config import load_config

    run = load_config(yaml_path)
    assert run.cache.name == "magcache" and len(run.cache.magcache["mag_ratios"]) == 5
    assert not run.cache.magcache["calibrate"]

    out = tmp_path / "cached.mp4"
    assert main(["generate", "--config", str(yaml_path), *size, "--set", "cache.magcache.threshold=10",
                 "--set", "cache.magcache.retention_ratio=0.2", "--out", str(out)]) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    steps = record["cache"]["steps"]
    assert [s["step"] for s in steps] == list(range(5))
    assert steps[0]["status"] == "computed" and steps[1]["status"] == "skipped"
    assert steps[1]["calls"] == {"cond": "skipped", "uncond": "skipped"}
    assert 0 < record["cache"]["computed_step_fraction"] < 1
    assert 1 in record["xattn"]["steps_not_computed"]
    assert f"computed-step fraction {record['cache']['computed_step_fraction']:.2f}" in capsys.readouterr().out


def test_generate_says_which_steps_the_cache_computed_for_the_composition(tmp_path, capsys):
    """A two-clause prompt composed in its first 2 steps: TaylorSeer starts predicting after step 3, the record
    and the summary line say so."""
    import json

    from xattn_video.cli import main

    out = tmp_path / "two.mp4"
    assert main(["generate", "--model", "tiny-wan", "--device", "cpu", "--height", "64", "--width", "64",
                 "--frames", "5", "--steps", "6", "--cache", "taylorseer", "--prompt",
                 "a red ball moving left and a white square moving down", "--set", "generation.clause_weight=1",
                 "--set", "generation.clause_steps=2", "--out", str(out)]) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["cache"]["window"] == {"compute_first": 4, "changed": {"disable_cache_before_step": [3, 4]}}
    assert record["cache"]["params"]["disable_cache_before_step"] == 4
    assert [s["status"] for s in record["cache"]["steps"]][:4] == ["computed"] * 4
    printed = capsys.readouterr().out
    assert "steps 0-3 computed around the clause composition (disable_cache_before_step 3 -> 4)" in printed


def test_cli_refuses_a_cache_that_does_not_apply(tmp_path, capsys):
    from xattn_video.cli import main

    rc = main(["generate", "--model", "tiny-wan22", "--device", "cpu", "--height", "64", "--width", "64",
               "--frames", "5", "--steps", "2", "--cache", "magcache", "--set", "cache.magcache.mag_ratios=[1.0,1.0]",
               "--out", str(tmp_path / "x.mp4")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "two-expert" in err[0], err
    assert not list(tmp_path.iterdir())


def test_compare_cache_applies_to_the_xattention_video_only(tmp_path, capsys):
    """`xvid compare --cache NAME`: the dense reference is stock (no cache, its provenance has no cache section);
    the XAttention video has the cache, and the report gives its computed-step fraction."""
    import json

    from xattn_video.cli import main

    out = tmp_path / "cmp"
    assert main(["compare", "--model", "tiny-wan", "--device", "cpu", "--height", "64", "--width", "64",
                 "--frames", "5", "--steps", "4", "--prompt", "a cat", "--metrics", "flicker", "--cache", "taylorseer",
                 "--set", "cache.taylorseer.disable_cache_before_step=1", "--set", "cache.taylorseer.cache_interval=2",
                 "--out-dir", str(out)]) == 0
    item = next(out.glob("000-*"))
    dense, xattn = (json.loads((item / f"{v}.json").read_text()) for v in ("dense", "xattn"))
    assert dense["cache"] is None and "cache" not in dense["provenance"]["config"]
    assert [s["status"] for s in xattn["cache"]["steps"]] == ["computed", "predicted"] * 2
    report = json.loads((out / "report.json").read_text())
    assert report["means"]["computed_step_fraction"] == 0.5
    assert "Step cache `taylorseer`" in (out / "report.md").read_text()


def test_two_ranks_with_a_cache_on_cpu(tmp_path, capfd):
    """--gpus 2 (Ulysses over gloo) with FirstBlockCache, whose skip decision each rank takes on its own tokens:
    the ranks agree (compose.consensus_decision), the run finishes and the record shows the skipped steps."""
    import json

    from xattn_video.cli import main

    out = tmp_path / "v.mp4"
    rc = main(["generate", "--gpus", "2", "--device", "cpu", "--model", "tiny-wan", "--height", "64", "--width", "64",
               "--frames", "5", "--steps", "4", "--cache", "firstblock", "--set", "cache.firstblock.threshold=100",
               "--set", "xattn.warmup_steps=1", "--set", "xattn.block_size=16", "--out", str(out)])
    captured = capfd.readouterr()
    assert rc == 0, captured.err
    record = json.loads(out.with_suffix(".json").read_text())
    assert [s["status"] for s in record["cache"]["steps"]] == ["computed"] + ["skipped"] * 3
    assert record["parallel"]["world_size"] == 2


def test_consensus_makes_every_rank_compute_when_one_wants_to(monkeypatch):
    """The all-reduce (MAX) of the decision: a rank that would skip computes when another rank computes."""
    import torch.distributed as dist

    from xattn_video.caches import compose

    class Hook:
        def _should_compute_remaining_blocks(self, residual):
            return False  # this rank alone would skip

    def all_reduce(flag, op):  # the other rank wants to compute
        assert op == dist.ReduceOp.MAX
        flag.fill_(1.0)

    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    hook = Hook()
    compose.consensus_decision(hook, lambda: True)
    assert hook._should_compute_remaining_blocks(torch.zeros(1)) is True
    hook = Hook()
    compose.consensus_decision(hook, lambda: False)  # one rank: no collective, its own decision
    assert hook._should_compute_remaining_blocks(torch.zeros(1)) is False


def test_quality_script_writes_its_results_after_each_pair(tmp_path):
    """benchmarks/quality_caches.py end to end on a tiny model (noise: only the mechanics): MagCache calibrated first,
    each cache alone and with XAttention against the same dense video, md/json/png written."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks" / "quality_caches.py"
    spec = importlib.util.spec_from_file_location("quality_caches", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--model", "tiny-wan", "--pairs", "1", "--steps", "3", "--caches", "magcache", "--variants",
                        "taylorseer:cache_interval=2,disable_cache_before_step=1", "--metrics", "psnr",
                        "--device", "cpu", "--set", "generation.height=64", "--set", "generation.width=64",
                        "--set", "generation.frames=5", "--out-dir", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "quality-caches-tiny-wan-cpu.json").read_text())
    names = [r["setting"] for r in data["rows"]]
    assert names == ["dense (stock)", "XAttention", "magcache", "XAttention + magcache",
                     "taylorseer (cache_interval=2, disable_cache_before_step=1)",
                     "XAttention + taylorseer (cache_interval=2, disable_cache_before_step=1)"]
    rows = {r["setting"]: r for r in data["rows"]}
    assert rows["taylorseer (cache_interval=2, disable_cache_before_step=1)"]["computed_step_fraction"] == \
        pytest.approx(2 / 3)
    assert rows["XAttention"]["computed_step_fraction"] == 1.0 and "psnr" in rows["XAttention"]
    assert (tmp_path / "quality-caches-tiny-wan-cpu.md").exists()


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_clause_composition_keeps_one_batch_size_while_a_cache_runs(name):
    """A two-clause prompt composed in its first steps only (the mini presets' schedule) widens the prompt's
    transformer call to 4 rows there and to 1 after it; a step cache keeps activations of the batch it saw, so with
    a cache every call stays at 4 rows (the prompt's own prediction after the window) and the run keeps the cache's
    pattern. Without a cache the later steps stay cheap (1 row)."""
    from xattn_video.config import load_config
    from xattn_video.generate import run_pipeline
    from xattn_video.pipelines.loading import load_pipeline

    base = ["model.path=tiny-wan", "model.device=cpu", "generation.frames=5", "generation.steps=6",
            "generation.height=64", "generation.width=64", "generation.guidance_scale=1",
            "generation.prompt=a red ball moving left and a white square moving down",
            "generation.clause_weight=1", "generation.clause_steps=2"]
    pipe = load_pipeline(load_config(None, base).model)
    rows: list[int] = []
    pipe.transformer.blocks[0].register_forward_pre_hook(
        lambda _m, args, kwargs: rows.append((args[0] if args else kwargs["hidden_states"]).shape[0]),
        with_kwargs=True)
    plain = load_config(None, base)
    plain.dense = True
    run_pipeline(pipe, plain, show_progress=False)
    assert rows == [4, 4, 1, 1, 1, 1], rows
    rows.clear()
    settings = [f"cache.{name}.{key}={value}".replace("'", "") for key, value in PARAMS[name].items()]
    cached = load_config(None, [*base, f"cache.name={name}", *settings])
    cached.dense = True
    result = run_pipeline(pipe, cached, show_progress=False)
    assert rows and set(rows) == {4}, rows
    # the composed steps 0-1 and two plain steps after them are computed (caches/window.py); the rest as usual
    assert [s["status"] for s in result.cache["steps"]] == EXPECTED_WINDOW[name], name
    assert result.cache["window"]["compute_first"] == 4


def test_window_params_raise_each_cache_to_the_window_and_keep_larger_values():
    from xattn_video.caches.params import CACHES
    from xattn_video.caches.window import window_params

    for steps in (6, 20, 28, 50):
        for first in range(1, steps + 1):
            params, changed = window_params("magcache", CACHES["magcache"], first, steps)
            kept = int(params["retention_ratio"] * steps + 0.5)  # diffusers' count of never-skipped steps
            assert kept >= first and (not changed or kept == first), (steps, first, params)
    params, changed = window_params("taylorseer", CACHES["taylorseer"], 6, 20)
    assert params["disable_cache_before_step"] == 6 and changed == {"disable_cache_before_step": [3, 6]}
    params, changed = window_params("taylorseer", {**CACHES["taylorseer"], "disable_cache_before_step": 9}, 6, 20)
    assert params["disable_cache_before_step"] == 9 and changed == {}  # a user's later start is kept
    params, changed = window_params("magcache", {**CACHES["magcache"], "retention_ratio": 0.5}, 6, 20)
    assert params["retention_ratio"] == 0.5 and changed == {}
    for name in ("fastercache", "pab"):
        assert window_params(name, CACHES[name], 6, 20) == (CACHES[name], {})
    assert window_params("taylorseer", CACHES["taylorseer"], 0, 20) == (CACHES["taylorseer"], {})


def test_cache_compute_first_is_two_past_the_last_switch_between_composed_and_plain_steps():
    from xattn_video.pipelines.clauses import cache_compute_first

    two = "a red ball moving left and a white square moving down"
    assert cache_compute_first(two, 1.0, 4) == 6  # the mini presets' schedule: composed 0-3, computed 0-5
    assert cache_compute_first(two, 1.0, 4, start=1) == 6
    assert cache_compute_first(two, 1.0, None, start=3) == 5  # plain 0-2, composed from 3 on
    assert cache_compute_first(two, 0.5, None) == 0  # composed on every step: no switch
    assert cache_compute_first(two, 0.0, 4) == 0  # no composition
    assert cache_compute_first("a red ball moving left", 1.0, 4) == 0  # one clause: no composition
