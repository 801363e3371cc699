"""The Wan forward benchmark script imports on a CPU and its model builder / pipeline wrapper work (tiny config)."""

import importlib.util
from pathlib import Path

import torch

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "bench_wan_forward.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_wan_forward", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_builder_inputs_and_xattention_on_a_tiny_config():
    bench = _load()
    assert bench.WAN21_14B_TOKENS_720P_81F == 75600
    tiny = dict(num_attention_heads=2, attention_head_dim=64, text_dim=32, freq_dim=32, ffn_dim=64)
    model = bench.build_wan_transformer(layers=2, device="cpu", dtype=torch.float32, **tiny)
    assert len(model.blocks) == 2 and all(torch.isfinite(p).all() for p in model.parameters())
    assert torch.isfinite(model.rope.freqs_cos).all()
    inputs = bench.wan_inputs(64, 64, 9, "cpu", torch.float32, text_dim=32, text_tokens=8)  # 3 x 4 x 4 tokens
    from xattn_video.pipelines.family import apply_xattention

    stock = model(**inputs)[0]
    with apply_xattention(bench.wrap_in_pipeline(model), {"threshold": 0.5, "block_size": 16, "warmup_steps": 0,
                                                          "max_density": 0.35}) as h:
        sparse = model(**inputs)[0]
        assert h.summary()["sparse_calls"] == 2
    assert sparse.shape == stock.shape and torch.isfinite(sparse).all()
