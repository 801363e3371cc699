"""Shared test helpers: seeds, input makers, comparisons that say how to reproduce a failure.

Every random input comes from a generator seeded from ``SEEDS`` (the ``gen`` fixture parametrises over them, with
ids ``seed<N>``), so a failure names its seed and reruns identically: ``pytest -k seed0 ...``. Run more seeds with
``XATTN_TEST_SEEDS=0,1,2,3 pytest``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

SEEDS: tuple[int, ...] = tuple(int(s) for s in os.environ.get("XATTN_TEST_SEEDS", "0").split(",") if s.strip())
HAS_CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
# torch.testing.assert_close's float32 defaults, for ``assert_close`` where a test relied on them
TORCH_F32_TOL: dict[str, float] = {"atol": 1e-5, "rtol": 1.3e-6}
# the committed thumbnail-tied VAE (a pipeline folder's vae/ and training.json): mini training tests start from it
TIED_VAE = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "mini-vae-thumb-cpu"

# a two-phase recipe small enough for the CPU, and the mini.train arguments that run it from the tied VAE (a text-gap
# probe of 2 clips: with the default 16 the log's probes cost 4x the training steps)
TINY_RECIPE = {"phases": [
    {"name": "first", "steps": 3, "mini_shape": [5, 32, 32], "batch": 2, "warmup": 1, "flow_shift": 3.0},
    {"name": "second", "steps": 4, "mini_shape": [5, 48, 48], "batch": 2, "large_every": 2, "large_batch": 1,
     "flow_shift": 6.0, "large_flow_shift": 9.0, "warmup": 1, "shape_weight": 10.0},
]}


def tiny_args(tmp_path: Path, *more: str, recipe: dict = TINY_RECIPE) -> list[str]:
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe))
    return ["--out", str(tmp_path / "mini"), "--recipe", str(path), "--init-vae", str(TIED_VAE), "--large-shape", "5",
            "64", "64", "--log-every", "1", "--text-probe-clips", "2", "--device", "cpu", *more]


def seed_id(seed: int) -> str:
    return f"seed{seed}"


def generator(seed: int) -> torch.Generator:
    """A CPU torch generator seeded with ``seed`` (inputs are drawn on the CPU, then moved)."""
    return torch.Generator().manual_seed(seed)


def numpy_rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def write_prompts(folder: Path, text: str, name: str = "p.txt") -> Path:
    """A prompt file ``folder/name`` holding ``text`` (the CLI's --prompts); returns its path."""
    path = folder / name
    path.write_text(text)
    return path


def make_qkv(gen: torch.Generator, B: int, Sq: int, H: int, D: int = 64, *, Sk: int | None = None,
             dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
             layout: str = "bshd") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Standard-normal q [B, Sq, H, D] and k, v [B, Sk, H, D] (Sk defaults to Sq); "bhsd" swaps dims 1 and 2."""
    Sk = Sq if Sk is None else Sk
    q, k, v = (torch.randn(B, S, H, D, generator=gen).to(device=device, dtype=dtype) for S in (Sq, Sk, Sk))
    if layout == "bhsd":
        q, k, v = (x.transpose(1, 2).contiguous() for x in (q, k, v))
    return q, k, v


def grid_scores(gen: torch.Generator, B: int, H: int, nq: int, nk: int) -> torch.Tensor:
    """Random normalized rows on a 1/4096 grid so that prefix sums are exact in float32 and float64."""
    raw = torch.randint(1, 200, (B, H, nq, nk), generator=gen).double()
    raw = torch.floor(raw / raw.sum(-1, keepdim=True) * 4096) / 4096
    raw[..., 0] += 1.0 - raw.sum(-1)  # rows sum to exactly 1
    return raw.float()


def _seed_of(seed: int | torch.Generator | None) -> str:
    if isinstance(seed, torch.Generator):
        seed = seed.initial_seed()
    return "seed unknown" if seed is None else f"seed {seed}"


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """‖x − ref‖ / ‖ref‖ in float64 (on the CPU)."""
    x, ref = x.double().cpu(), ref.double().cpu()
    return float((x - ref).norm() / ref.norm().clamp_min(1e-30))


def assert_close(actual: torch.Tensor, expected: torch.Tensor, *, seed: int | torch.Generator | None,
                 atol: float = 1e-5, rtol: float = 1e-5, what: str = "") -> None:
    """Elementwise |actual − expected| ≤ atol + rtol·|expected| (NaNs must match); on failure the message names the
    seed, the number of bad elements and the worst one (index, both values)."""
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert a.shape == e.shape, f"{what} shape {tuple(a.shape)} != {tuple(e.shape)} ({_seed_of(seed)})"
    both_nan = a.isnan() & e.isnan()
    excess = ((a - e).abs() - (atol + rtol * e.abs())).nan_to_num(nan=float("inf"))
    excess = excess.masked_fill(both_nan, float("-inf"))
    bad = excess > 0
    if bad.any():
        flat = int(excess.flatten().argmax())
        idx = tuple(int(i) for i in np.unravel_index(flat, a.shape))
        raise AssertionError(
            f"{what + ': ' if what else ''}{int(bad.sum())} of {a.numel()} elements differ beyond atol={atol:g}, "
            f"rtol={rtol:g} ({_seed_of(seed)}); worst at {idx}: actual {float(a[idx]):.6g}, "
            f"expected {float(e[idx]):.6g}"
        )


def assert_rel_err(actual: torch.Tensor, expected: torch.Tensor, tol: float, *,
                   seed: int | torch.Generator | None, what: str = "") -> None:
    """Relative L2 error below ``tol``; on failure names the seed and the worst element."""
    err = rel_err(actual, expected)
    if not err < tol:
        diff = (actual.detach().double().cpu() - expected.detach().double().cpu()).abs().nan_to_num(nan=float("inf"))
        idx = tuple(int(i) for i in np.unravel_index(int(diff.flatten().argmax()), diff.shape))
        raise AssertionError(
            f"{what + ': ' if what else ''}relative L2 error {err:.3g} >= {tol:g} ({_seed_of(seed)}); worst at {idx}: "
            f"actual {float(actual.flatten()[int(diff.flatten().argmax())]):.6g}, "
            f"expected {float(expected.flatten()[int(diff.flatten().argmax())]):.6g}"
        )


def capture_and_replay(fn, inputs: tuple[torch.Tensor, ...], gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``fn(*inputs)`` eagerly (warm-up), on a side stream, then capture it in a CUDA graph; refill the inputs
    in place from ``gen`` and replay. Returns (the eager output on the old inputs, the replayed output on the new);
    capture fails on any host synchronization inside ``fn``."""
    eager = fn(*inputs)  # warm-up: compiles kernels, caches constants
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn(*inputs)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = fn(*inputs)
    for x in inputs:
        x.copy_(torch.randn(x.shape, generator=gen).to(x))
    graph.replay()
    torch.cuda.synchronize()
    return eager, captured


def spy_xattention(monkeypatch) -> list[tuple[torch.Size, torch.Size, dict]]:
    """Record every ``xattention`` call the attention dispatch makes as (query shape, key shape, keyword
    arguments); the calls still run."""
    from xattn_video.pipelines import dispatch

    calls: list[tuple[torch.Size, torch.Size, dict]] = []
    real = dispatch.xattention

    def spy(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kw):
        calls.append((q.shape, k.shape, kw))
        return real(q, k, v, **kw)

    monkeypatch.setattr(dispatch, "xattention", spy)
    return calls
