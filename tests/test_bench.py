"""`xvid bench` on a machine without a GPU, and the report/plot writers on recorded results."""

import json

import pytest
import torch

from xattn_video import benchmark
from xattn_video.cli import main


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_bench_without_gpu_says_so(capsys):
    assert main(["bench", "--tokens", "18616"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def _results():
    rows = []
    for S, dense in ((18616, 7.2), (119056, 300.0)):
        for name, ms, density in (("dense cuDNN SDPA", dense, 1.0), ("dense flash SDPA", dense * 1.6, 1.0),
                                  ("ours block-sparse (random 0.35)", dense * 0.43, 0.35),
                                  ("FlexAttention (random 0.35)", dense * 0.5, 0.35),
                                  ("ours xattention video-like τ=0.9 s=8", dense * 0.6, 0.4)):
            rows.append({"tokens": S, "name": name, "ms": ms, "tflops": 500.0, "density": density,
                         "speedup_vs_cudnn": dense / ms, "pct_of_cudnn": 100 * ms / dense, "rate_vs_cudnn": 0.8})
    return {"gpu": "Test GPU", "torch": "x", "triton": "y", "heads": 24, "head_dim": 128, "date": "today",
            "checks": [{"tokens": 18616, "attn_rel_err": 2e-3, "all_written": True, "score_max_abs_err": 1e-9,
                        "ok": True}], "rows": rows}


def test_markdown_and_plot_from_recorded_results(tmp_path):
    results = _results()
    md = benchmark.markdown(results)
    assert "| 119,056 | ours block-sparse (random 0.35) | 0.350 | 129.000 |" in md
    assert "| 18,616 | 2.00e-03 | True | 1.00e-09 | yes |" in md
    path = tmp_path / "r.json"
    path.write_text(json.dumps(results))
    assert main(["bench", "--plot-only", str(path)]) == 0
    png = tmp_path / "r.png"
    assert png.is_file() and png.stat().st_size > 10_000


def test_kept_flops_counts_partial_blocks():
    from xattn_video.kernels import BlockSelection

    mask = torch.ones(1, 1, 2, 2, dtype=torch.bool)
    sel = BlockSelection.from_mask(mask, block_size=128, q_len=200, kv_len=torch.tensor([150]))
    # rows 128 + 72, keys 128 + 22
    assert benchmark.kept_flops(sel, 200, 64) == 4 * 64 * 200 * 150
