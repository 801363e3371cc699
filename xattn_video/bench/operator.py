"""GPU benchmark of the operator against dense cuDNN/flash SDPA and FlexAttention, in one run.

Uses only the operator's public functions (``xattn_video.kernels``), with ``backend=`` to pick a path. Also
re-checks bf16 correctness of the Triton path against the float32 reference (``naive_*``) on fresh random inputs
with poisoned output memory. Writes ``<gpu>.json`` and ``<gpu>.md`` (and ``<gpu>.png`` where matplotlib
is installed; ``--plot-only`` draws it later from the JSON). Run: ``xvid bench`` or
``python benchmarks/bench_xattention.py``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ..cli_options import DefaultsHelpFormatter
from ..kernels import (
    BlockSelection,
    block_sparse_attention,
    estimate_block_scores,
    naive_block_sparse_attention,
    naive_estimate_block_scores,
    num_blocks,
    select_blocks,
    sparse_kernel,
    xattention,
)
from ..video_io import write_json, write_text
from .report import load_results, markdown, plot
from .synthetic import grid_for_tokens, video_like_qkv

DENSITIES = (0.1, 0.2, 0.35, 0.45)
TAUS = (0.8, 0.9, 0.95)
BLOCK = 128
DEVICE = "cuda"  # where the benchmark runs; the CPU tests swap in "cpu" with stand-in kernels


def gpu_slug() -> str:
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def median_ms(fn: Callable[[], object], rep_ms: int = 600) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=max(25, rep_ms // 6), rep=rep_ms, return_mode="median"))


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed_ms(fn: Callable[[], object], rep_ms: int = 600) -> float:
    """Median ms of ``fn`` after one untimed call and a sync: Triton compilation and autotuning, torch.compile and
    first allocations never land in a measurement (explicit, not left to do_bench's internals)."""
    fn()
    _sync()
    return median_ms(fn, rep_ms)


def dense_flops(B: int, H: int, Sq: int, Sk: int, D: int) -> float:
    """FLOPs of dense attention (QKᵀ and PV, 2 each per multiply-add)."""
    return 4.0 * B * H * Sq * Sk * D


def kept_flops(sel: BlockSelection, Sq: int, D: int) -> float:
    """4·D·(query, key) pairs inside kept blocks, counting the partial last blocks exactly."""
    bs = sel.block_size
    nq, nk = sel.num_q_blocks, sel.num_kv_blocks
    rows = torch.clamp(Sq - torch.arange(nq, device=sel.mask.device) * bs, max=bs).double()
    keys = torch.clamp(sel.kv_len.double()[:, None] - torch.arange(nk, device=sel.mask.device)[None] * bs,
                       min=0, max=bs)  # [B, nk]
    pairs = torch.einsum("bhij,i,bj->", sel.mask.double(), rows, keys)
    return 4.0 * D * float(pairs)


def random_selection(B: int, H: int, S: int, density: float, gen: torch.Generator,
                     device: str | None = None) -> BlockSelection:
    """Per (b, h, query block): the diagonal block plus random others, round(density·nk) in all."""
    device = device or DEVICE
    n = num_blocks(S, BLOCK)
    per_row = max(1, round(density * n))
    noise = torch.rand(B, H, n, n, generator=gen).to(device)
    noise += torch.eye(n, device=device) * 2.0  # diagonal always first
    top = noise.topk(per_row, dim=-1).indices
    mask = torch.zeros(B, H, n, n, dtype=torch.bool, device=device).scatter_(-1, top, True)
    return BlockSelection.from_mask(mask, block_size=BLOCK, q_len=S,
                                    kv_len=torch.full((B,), S, dtype=torch.int32, device=device))


def _sdpa(q, k, v, backend):
    from torch.nn.attention import sdpa_kernel

    with sdpa_kernel(backend):
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


def rel_l2(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative L2 error ‖x − ref‖ / ‖ref‖ in float32."""
    return float((x.float() - ref.float()).norm() / ref.float().norm())


def _flex_runner(q, k, v, sel: BlockSelection):
    """Compiled FlexAttention over the same kept blocks (bhsd contiguous inputs, as it prefers)."""
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    S = q.shape[1]
    # Kept blocks go in as "full" blocks: Flex then skips mask evaluation, its fastest path.
    block_mask = BlockMask.from_kv_blocks(torch.zeros_like(sel.counts), sel.indices, sel.counts, sel.indices,
                                          BLOCK_SIZE=BLOCK, seq_lengths=(S, S))
    qt, kt, vt = (x.transpose(1, 2).contiguous() for x in (q, k, v))
    flex = torch.compile(flex_attention, dynamic=False)
    return lambda: flex(qt, kt, vt, block_mask=block_mask), (qt, kt, vt)


def _poison_free_memory(like: torch.Tensor) -> None:
    """Leave a NaN-filled block of ``like``'s size in the caching allocator, so that the next output of that size
    most likely reuses it: an output element the kernel fails to write then shows up as NaN."""
    torch.full_like(like, float("nan"))
    torch.cuda.synchronize()


def check_correctness(tokens: int, heads: int, head_dim: int, gen: torch.Generator, log) -> dict:
    """bf16 Triton vs float32 reference on one fresh random selection (output memory poisoned with NaN)."""
    S = tokens
    q, k, v = (torch.randn(1, S, heads, head_dim, generator=gen).cuda().to(torch.bfloat16) for _ in range(3))
    kv_len = S - 37  # exercises a partial last block and padding keys
    kv = torch.tensor([kv_len], dtype=torch.int32, device="cuda")
    k[:, kv_len:] = float("inf")  # padding must never be read into the result
    v[:, kv_len:] = float("nan")
    sel = random_selection(1, heads, S, 0.35, gen)
    sel = BlockSelection.from_mask(sel.mask, block_size=BLOCK, q_len=S, kv_len=kv)
    _poison_free_memory(q)
    out = block_sparse_attention(q, k, v, sel, backend="triton")
    torch.cuda.synchronize()
    ref = naive_block_sparse_attention(q.float(), k.float(), v.float(), sel, kv)
    finite = bool(torch.isfinite(out).all())
    attn_err = rel_l2(out, ref)
    scores = estimate_block_scores(q, k, stride=8, block_size=BLOCK, kv_len=kv, backend="triton")
    scores_ref = naive_estimate_block_scores(q.float(), k.float(), kv, stride=8, block_size=BLOCK)
    score_err = float((scores - scores_ref).abs().max())
    res = {"tokens": S, "attn_rel_err": attn_err, "all_written": finite, "score_max_abs_err": score_err,
           "ok": finite and attn_err < 1e-2 and score_err < 1e-3}
    log(f"check {S}: sparse-attention rel err {attn_err:.2e} (all written: {finite}), "
        f"scores max abs err {score_err:.2e} -> {'OK' if res['ok'] else 'FAIL'}")
    q = k = v = out = ref = scores = scores_ref = None
    torch.cuda.empty_cache()
    return res


def bench_tokens(tokens: int, heads: int, head_dim: int, gen: torch.Generator, log, flex: bool = True,
                 rep_ms: int = 600, dense_first: bool = True, precisions: tuple[str, ...] = ()) -> list[dict]:
    """Timing rows at one sequence length: dense SDPA, each operator step, FlexAttention, whole calls.

    ``precisions``: quantized precisions ("fp8", "int8") also timed: the sparse kernel at each density, the dense
    path (τ = 1) and the capped whole call, each with its relative error against the bf16 result.

    Every measurement follows an untimed warm-up call (:func:`timed_ms`); ``dense_first`` picks whether dense SDPA
    is measured before or after the sparse paths (``main`` alternates it per token count)."""
    from torch.nn.attention import SDPBackend

    rows: list[dict] = []
    S, H, D = tokens, heads, head_dim
    q, k, v = (torch.randn(1, S, H, D, generator=gen).to(DEVICE).to(torch.bfloat16) for _ in range(3))
    kv = torch.tensor([S], dtype=torch.int32, device=DEVICE)
    full = dense_flops(1, H, S, S, D)

    def add(name, ms, flops=None, density=None, extra=None):
        row = {"tokens": S, "name": name, "ms": ms, "tflops": flops / ms / 1e9 if flops else None,
               "density": density, "dense_first": dense_first}
        row.update(extra or {})
        rows.append(row)
        log(f"  {S:>7} {name:<44} {ms:9.3f} ms" + (f" {row['tflops']:6.1f} TFLOP/s" if flops else ""))

    def dense() -> None:
        add("dense cuDNN SDPA", timed_ms(lambda: _sdpa(q, k, v, SDPBackend.CUDNN_ATTENTION), rep_ms), full, 1.0)
        add("dense flash SDPA", timed_ms(lambda: _sdpa(q, k, v, SDPBackend.FLASH_ATTENTION), rep_ms), full, 1.0)
        for prec in precisions:
            err = rel_l2(xattention(q, k, v, threshold=1.0, precision=prec), _sdpa(q, k, v, SDPBackend.CUDNN_ATTENTION))
            add(f"dense {prec} (ours, τ=1)", timed_ms(lambda: xattention(q, k, v, threshold=1.0, precision=prec),
                                                      rep_ms), full, 1.0, {"rel_l2_err": err})

    def sparse() -> None:
        for d in DENSITIES:
            sel = random_selection(1, H, S, d, gen)
            dens = float(sel.density())
            fl = kept_flops(sel, S, D)
            ms = timed_ms(lambda: block_sparse_attention(q, k, v, sel, backend="triton"), rep_ms)
            add(f"ours block-sparse (random {d:.2f})", ms, fl, dens)
            for prec in precisions:
                err = rel_l2(block_sparse_attention(q, k, v, sel, backend="triton", precision=prec),
                             block_sparse_attention(q, k, v, sel, backend="triton"))
                ms = timed_ms(lambda: block_sparse_attention(q, k, v, sel, backend="triton", precision=prec), rep_ms)
                add(f"ours block-sparse {prec} (random {d:.2f})", ms, fl, dens, {"rel_l2_err": err})
            if flex:
                try:
                    run, _ = _flex_runner(q, k, v, sel)
                    flex_err = rel_l2(run().transpose(1, 2), block_sparse_attention(q, k, v, sel, backend="triton"))
                    ms_f = timed_ms(run, rep_ms)
                    add(f"FlexAttention (random {d:.2f})", ms_f, fl, dens, {"rel_l2_err": flex_err})
                except Exception as exc:  # report, keep benchmarking
                    log(f"  FlexAttention failed: {type(exc).__name__}: {exc}")

        for s in (8, 16):
            ms = timed_ms(lambda: estimate_block_scores(q, k, stride=s, block_size=BLOCK, kv_len=kv, backend="triton"),
                          rep_ms)
            add(f"ours estimate (stride {s})", ms, dense_flops(1, H, S, S, D) / (2 * s), None)

        scores = estimate_block_scores(q, k, stride=8, block_size=BLOCK, kv_len=kv, backend="triton")
        taus = (0.9,) * H
        for backend, label in (("triton", "ours selection (one Triton kernel)"), ("torch", "selection as torch ops")):
            ms = timed_ms(lambda: select_blocks(scores, taus, block_size=BLOCK, q_len=S, kv_len=kv,
                                                keep_diagonal=True, text_start=S - 256, backend=backend), rep_ms)
            add(label, ms)

    for part in ((dense, sparse) if dense_first else (sparse, dense)):
        part()
    rows.sort(key=lambda r: not r["name"].startswith("dense"))  # dense rows first in the table, whatever the order
    t_cudnn = next(r["ms"] for r in rows if r["name"] == "dense cuDNN SDPA")
    q = k = v = None  # release GPU memory before the next inputs
    torch.cuda.empty_cache()

    # Whole call on video-like inputs (see xattn_video/bench/synthetic.py).
    q, k, v, _ = video_like_qkv(grid_for_tokens(S), heads=H, head_dim=D, device=DEVICE,
                                seed=int(torch.randint(0, 2**31, (1,), generator=gen)))
    n_img = S - 256
    ref = _sdpa(q, k, v, SDPBackend.CUDNN_ATTENTION)
    for tau in TAUS:
        for s in (8, 16):
            out, sel = xattention(q, k, v, threshold=tau, stride=s, text_start=n_img, return_selection=True)
            dens = float(sel.density())
            err = rel_l2(out, ref)
            ms = timed_ms(lambda: xattention(q, k, v, threshold=tau, stride=s, text_start=n_img), rep_ms)
            add(f"ours xattention video-like τ={tau} s={s}", ms, None, dens, {"rel_l2_err": err})
    for s in (8, 16):
        kw = dict(threshold=0.99, stride=s, text_start=n_img, max_density=0.33)
        out, sel = xattention(q, k, v, return_selection=True, **kw)
        dens, err = float(sel.density()), rel_l2(out, ref)
        ms = timed_ms(lambda: xattention(q, k, v, **kw), rep_ms)
        add(f"ours xattention capped ~0.35 s={s}", ms, None, dens, {"rel_l2_err": err})
        for prec in precisions:
            err_p = rel_l2(xattention(q, k, v, precision=prec, **kw), out)
            ms = timed_ms(lambda: xattention(q, k, v, precision=prec, **kw), rep_ms)
            add(f"ours xattention {prec} capped ~0.35 s={s}", ms, None, dens,
                {"rel_l2_err": rel_l2(xattention(q, k, v, precision=prec, **kw), ref), "rel_l2_err_vs_bf16": err_p})
    q = k = v = ref = None
    torch.cuda.empty_cache()
    for row in rows:
        row["speedup_vs_cudnn"] = t_cudnn / row["ms"]
        row["pct_of_cudnn"] = 100.0 * row["ms"] / t_cudnn
        row["rate_vs_cudnn"] = row["tflops"] / (full / t_cudnn / 1e9) if row["tflops"] else None
    return rows


def main(argv: list[str] | None = None) -> int:
    """``xvid bench``: exit 0 when every correctness check passes, 1 when one fails, 2 without a GPU."""
    p = argparse.ArgumentParser(prog="xvid bench", description=__doc__.splitlines()[0],
                                formatter_class=DefaultsHelpFormatter,
                                epilog="xvid bench --e2e: end-to-end speed of whole video transformers (stock vs "
                                       "ours); xvid bench --e2e --help lists its options. xvid bench --kernels: Hopper "
                                       "kernel variants and 8-bit attention against cuDNN (--kernels --help).")
    p.add_argument("--tokens", type=int, nargs="+", default=[18616, 67576, 119056], help="sequence lengths timed")
    p.add_argument("--check-tokens", type=int, nargs="*", default=[18616, 119056],
                   help="sequence lengths of the bf16 correctness checks")
    p.add_argument("--heads", type=int, default=24, help="attention heads")
    p.add_argument("--head-dim", type=int, default=128, help="head dimension (64 or 128)")
    p.add_argument("--no-flex", action="store_true", help="skip FlexAttention")
    p.add_argument("--rep-ms", type=int, default=600, help="do_bench repetition time per measurement")
    p.add_argument("--precision", nargs="+", choices=("bf16", "fp8", "int8"), default=["bf16"],
                   help="attention precisions timed (bf16 always; fp8/int8 add rows with their error vs bf16)")
    p.add_argument("--out-dir", type=Path, help="where results go (default benchmarks/results; with --plot-only: "
                   "next to the JSON)")
    p.add_argument("--plot-only", type=Path, help="draw the plot from an earlier JSON and exit")
    args = p.parse_args(argv)

    if args.plot_only:
        try:
            results = load_results(args.plot_only)
        except ValueError as exc:
            print(f"xvid bench: error: {exc}", file=sys.stderr)
            return 2
        out_dir = args.out_dir if args.out_dir is not None else args.plot_only.parent
        out_dir.mkdir(parents=True, exist_ok=True)
        png = out_dir / f"{args.plot_only.stem}.png"
        try:
            plot(results, png)
        except ImportError:
            print("xvid bench: error: --plot-only needs matplotlib (pip install matplotlib)", file=sys.stderr)
            return 2
        print(f"wrote {png}")
        return 0
    args.out_dir = args.out_dir if args.out_dir is not None else Path("benchmarks/results")
    if not torch.cuda.is_available():
        print("xvid bench needs a CUDA GPU", file=sys.stderr)
        return 2
    import triton

    gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    results = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
               "heads": args.heads, "head_dim": args.head_dim, "date": time.strftime("%Y-%m-%d"),
               "seed": gen.initial_seed(), "checks": [], "rows": [],
               "sparse_kernel": sparse_kernel(torch.device("cuda"))}
    for S in args.check_tokens:
        results["checks"].append(check_correctness(S, args.heads, args.head_dim, gen, log))
    for i, S in enumerate(args.tokens):  # dense first at even positions, last at odd ones
        results["rows"] += bench_tokens(S, args.heads, args.head_dim, gen, log, flex=not args.no_flex,
                                        rep_ms=args.rep_ms, dense_first=i % 2 == 0,
                                        precisions=tuple(p for p in args.precision if p != "bf16"))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / gpu_slug()
    write_json(results, stem.with_suffix(".json"))
    md = markdown(results)
    write_text(md, stem.with_suffix(".md"))
    try:
        plot(results, stem.with_suffix(".png"))
    except ImportError:
        log("matplotlib missing: run with --plot-only on the JSON to draw the plot")
    print(md)
    return 0 if all(c["ok"] for c in results["checks"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
