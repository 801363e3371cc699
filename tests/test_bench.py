"""`xvid bench` (xattn_video.bench) without a GPU, its report/plot writers on recorded results, benchmarks/ scripts."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from xattn_video.bench import operator, report
from xattn_video.cli import main

REPO = Path(__file__).resolve().parents[1]


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
    md = report.markdown(results)
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
    assert operator.kept_flops(sel, 200, 64) == 4 * 64 * 200 * 150


def test_bench_uses_only_public_operator_functions():
    source = (REPO / "xattn_video" / "bench" / "operator.py").read_text()
    assert "kernels." not in source and "import _" not in source


_HELP_DRIVER = """
import contextlib, io, runpy, sys
failed = []
for path in sys.argv[1:]:
    out, err = io.StringIO(), io.StringIO()
    sys.argv = [path, "--help"]
    code = "no exit"
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_path(path, run_name="__main__")
        except SystemExit as exit_:
            code = exit_.code
        except BaseException as error:  # a script that fails at import or before parsing
            code = repr(error)
    if code not in (0, None) or "usage:" not in out.getvalue():
        failed.append(f"{path}: exit {code!r}; {err.getvalue()[-1500:]}")
print("\\n".join(failed))
"""


def test_benchmark_scripts_run_help_on_cpu():
    """Every benchmark script parses ``--help`` on a CPU-only install; one interpreter runs them all (a process
    each cost ~5 s of imports, ~100 s in all on 2 cores)."""
    scripts = sorted(str(p) for p in (REPO / "benchmarks").glob("*.py"))
    assert len(scripts) > 10
    done = subprocess.run([sys.executable, "-c", _HELP_DRIVER, *scripts], capture_output=True, text=True,
                          timeout=300, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "", done.stdout


def test_plot_only_honours_out_dir(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(_results()))
    out = tmp_path / "plots"
    assert main(["bench", "--plot-only", str(path), "--out-dir", str(out)]) == 0
    assert (out / "r.png").is_file() and not (tmp_path / "r.png").exists()


@pytest.mark.parametrize("content,message", [
    (b"\x89PNG\r\n\x1a\n\xff\xfe\x00binary", "cannot read"), (b"[1, 2]", "not an xvid bench results file"),
    (b'{"rows": [{"tokens": 1}]}', "not an xvid bench results file"), (None, "does not exist"),
])
def test_plot_only_on_a_bad_file_is_one_line_exit_2(tmp_path, capsys, content, message):
    path = tmp_path / "bad.json"
    if content is not None:
        path.write_bytes(content)
    assert main(["bench", "--plot-only", str(path), "--out-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "o").exists()


def test_every_timing_follows_an_untimed_warm_up_and_dense_order_alternates(monkeypatch):
    """bench_tokens on CPU with stand-in kernels: which calls are timed, in which order, after which warm-up."""
    calls: list[str] = []  # every call of a benchmarked function, timed or not
    timed: list[str] = []

    def kernel(name):
        def run(q, *args, return_selection=False, **kwargs):
            calls.append(name)
            out = torch.zeros_like(q)
            return (out, operator.random_selection(1, q.shape[2], q.shape[1], 0.5, torch.Generator())) \
                if return_selection else out
        return run

    def fake_median_ms(fn, rep_ms=600):
        before = len(calls)
        fn()
        name = calls[before]
        assert before > 0 and calls[before - 1] == name, f"{name} was timed without an untimed warm-up call just before"
        timed.append(name)
        return 1.0

    monkeypatch.setattr(operator, "DEVICE", "cpu")
    monkeypatch.setattr(operator, "median_ms", fake_median_ms)
    monkeypatch.setattr(operator, "_sdpa", lambda q, k, v, backend: kernel(f"sdpa {backend.name}")(q))
    for name in ("block_sparse_attention", "estimate_block_scores", "xattention"):
        monkeypatch.setattr(operator, name, kernel(name))
    monkeypatch.setattr(operator, "select_blocks", lambda scores, *a, **k: calls.append("select_blocks"))
    monkeypatch.setattr(operator, "grid_for_tokens", lambda tokens: None)
    monkeypatch.setattr(operator, "video_like_qkv", lambda grid, heads, head_dim, device, seed: (
        *(torch.randn(1, 300, heads, head_dim) for _ in range(3)), None))
    order = {}
    for dense_first in (True, False):
        timed.clear()
        rows = operator.bench_tokens(300, 2, 16, torch.Generator().manual_seed(0), log=lambda m: None, flex=False,
                                     rep_ms=1, dense_first=dense_first)
        dense = [i for i, n in enumerate(timed) if n.startswith("sdpa")]
        sparse_before_dense = timed[:dense[0]]
        order[dense_first] = (dense, len(timed), sparse_before_dense)
        assert rows[0]["name"] == "dense cuDNN SDPA" and rows[0]["dense_first"] is dense_first
    assert order[True][0] == [0, 1]  # dense measured first...
    assert order[False][0][0] > 0 and "block_sparse_attention" in order[False][2]  # ...then after the sparse paths
    assert "xattention" in timed


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU dry run (the GPU runs the real benchmark)")
def test_kernels_hopper_dry_run_on_cpu_writes_checks_and_rows(tmp_path):
    """``bench_kernels_hopper --dry-run-cpu``: every code path of the GPU script (checks, timing, report, fail-soft)
    through Triton's interpreter at a tiny size, so that one GPU call is not spent on a script bug."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_kernels_hopper.py"), "--dry-run-cpu",
                           "--tokens", "300", "--shapes", "1x64", "--check-tokens", "300", "--compile-workers", "0",
                           "--variants", "int8-sparse", "v2-sparse-bf16", "fp8-dense", "fp8-quantize-qk",
                           "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    res = json.loads((tmp_path / "hopper-cpu-dry-run.json").read_text())
    assert [c["variant"] for c in res["checks"]] == ["int8-sparse", "v2-sparse-bf16", "fp8-dense"]
    assert all(c["ok"] for c in res["checks"]), res["checks"]
    names = [r["variant"] for r in res["rows"]]
    assert names == ["cudnn-dense-bf16", "int8-sparse", "v2-sparse-bf16", "fp8-dense", "fp8-quantize-qk"]
    assert all("error" not in r for r in res["rows"])
    assert "| 1×64 | 300 | int8-sparse |" in (tmp_path / "hopper-cpu-dry-run.md").read_text()


def test_bench_rows_for_quantized_precisions(monkeypatch):
    """``xvid bench --precision fp8 int8``: extra rows for the sparse kernel, the dense path and the capped call."""
    seen = []

    def kernel(name):
        def run(q, *args, return_selection=False, precision="bf16", **kwargs):
            seen.append((name, precision))
            out = torch.ones_like(q)
            return (out, operator.random_selection(1, q.shape[2], q.shape[1], 0.5, torch.Generator())) \
                if return_selection else out
        return run

    monkeypatch.setattr(operator, "DEVICE", "cpu")
    monkeypatch.setattr(operator, "median_ms", lambda fn, rep_ms=600: (fn(), 1.0)[1])
    monkeypatch.setattr(operator, "_sdpa", lambda q, k, v, backend: torch.ones_like(q))
    for name in ("block_sparse_attention", "estimate_block_scores", "xattention"):
        monkeypatch.setattr(operator, name, kernel(name))
    monkeypatch.setattr(operator, "select_blocks", lambda scores, *a, **k: None)
    monkeypatch.setattr(operator, "grid_for_tokens", lambda tokens: None)
    monkeypatch.setattr(operator, "video_like_qkv", lambda grid, heads, head_dim, device, seed: (
        *(torch.randn(1, 300, heads, head_dim) for _ in range(3)), None))
    rows = operator.bench_tokens(300, 2, 16, torch.Generator().manual_seed(0), log=lambda m: None, flex=False,
                                 rep_ms=1, precisions=("fp8", "int8"))
    names = [r["name"] for r in rows]
    for prec in ("fp8", "int8"):
        assert f"dense {prec} (ours, τ=1)" in names
        assert f"ours block-sparse {prec} (random 0.35)" in names
        assert f"ours xattention {prec} capped ~0.35 s=8" in names
    assert ("block_sparse_attention", "int8") in seen and ("xattention", "fp8") in seen


def test_kernels_hopper_times_variants_in_rotated_rounds(monkeypatch):
    """``time_rows``: each variant gets one untimed call and one sizing call, then the variants take turns, the
    order rotated every round (no variant is always timed right after the same one); a variant that raises gets an
    error and the others are still timed; ms is the median of a variant's batch means."""
    from xattn_video.bench import kernels_hopper as kh

    calls: list[str] = []
    batch_ms = iter(range(1, 1000))

    def fake_batch(fn, n):
        fn()
        return float(next(batch_ms))

    monkeypatch.setattr(kh, "_batch_ms", fake_batch)
    monkeypatch.setattr(kh, "DEV", "cpu")

    def variant(name):
        return lambda: calls.append(name)

    def broken():
        raise RuntimeError("no kernel for this shape")

    out = kh.time_rows([("a", variant("a")), ("x", broken), ("b", variant("b")), ("c", variant("c"))],
                       target_ms=30.0, rounds=3)
    assert out["x"] == {"error": "RuntimeError: no kernel for this shape"}
    assert calls[:6] == ["a", "a", "b", "b", "c", "c"]  # first call + sizing batch each
    assert calls[6:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # three rounds, rotated
    # batch numbers: sizing 1-3, round 1: a4 b5 c6, round 2: b7 c8 a9, round 3: c10 a11 b12
    assert (out["a"]["ms"], out["b"]["ms"], out["c"]["ms"]) == (9.0, 7.0, 8.0)
    assert all(out[n]["first_ms"] >= 0 for n in "abc")
    stopped = kh.time_rows([("a", variant("a")), ("b", variant("b"))], 30.0, rounds=4, out_of_time=lambda: True)
    assert set(stopped["a"]) == {"ms", "first_ms", "rounds"} and stopped["a"]["rounds"] == 1  # one round kept
    assert out["a"]["rounds"] == 3


def test_kernels_hopper_variant_lists_are_consistent():
    from xattn_video.bench import kernels_hopper as kh

    variants = kh._variants()
    assert sorted(kh.DEFAULT_ORDER) == sorted(variants)  # every variant runs by default, each once
    assert set(kh.CORE) <= set(variants) and kh.DEFAULT_ORDER[0] == kh.CUDNN == kh.CORE[0]


def test_mini_vae_latents_measures_the_shipped_vae(tmp_path):
    """benchmarks/mini_vae_latents.py on the shipped VAE at a small size: the numbers the README quotes are what the
    script computes (the shipped VAE is thumbnail-tied: its closest colours are ~5.5 units apart, the VAE before the
    tie 1.87)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from mini_vae_latents import measure, table
    finally:
        sys.path.pop(0)
    from xattn_video.mini import weights_dir

    row = measure(weights_dir(), pairs=2, noise=[0.0], frames=9, size=64)
    assert sum(row["pc_share"]) == pytest.approx(1.0, abs=1e-3)
    assert row["colour_gap_min"] > 4 and len(row["colour_gaps"]) == 10  # measured 5.46 here
    assert set(row["noise"]["0.0"]) >= {"prompt_match_colour", "prompt_match_shape", "prompt_match_direction"}
    assert row["recon_l1"] < 0.2
    assert "| " + str(weights_dir()) in table([row], [0.0])
