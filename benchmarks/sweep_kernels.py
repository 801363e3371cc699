"""Sweep launch shapes of the Triton kernels on one GPU (bf16, B=1, H=24, D=128) and print a table.

Used to choose the defaults in xattn_video/kernels/triton_*.py; numbers go to benchmarks/NOTES.md.
    python benchmarks/sweep_kernels.py --tokens 119056 --density 0.35 --out sweep.json
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.nn.functional as F

from xattn_video.benchmark import _rel, dense_flops, kept_flops, median_ms, random_selection
from xattn_video.kernels.naive import block_sparse_attention_torch
from xattn_video.kernels.triton_attention import AttentionConfig, block_sparse_attention_triton
from xattn_video.kernels.triton_estimate import EstimateConfig, estimate_block_scores_triton

A = AttentionConfig
ATTENTION_CONFIGS = [
    A(128, 128, 8, 3), A(128, 128, 8, 3, overlap_qk=True), A(128, 128, 8, 2, overlap_qk=True),
    A(128, 128, 8, 3, True, overlap_qk=True), A(128, 128, 8, 2, True, overlap_qk=True),
    A(128, 128, 8, 3), A(128, 128, 8, 3, overlap_qk=True),
]
E = EstimateConfig
ESTIMATE_CONFIGS = [
    E(128, 128, 8, 3, use_tma=True), E(128, 128, 8, 3, use_tma=True, key_splits=2),
    E(128, 128, 8, 3, use_tma=True, key_splits=4), E(128, 256, 8, 2, use_tma=True),
    E(128, 256, 8, 2, use_tma=True, key_splits=2), E(128, 128, 8, 3, key_splits=2),
    E(128, 128, 8, 4, use_tma=True, block_k=64, key_splits=2), E(64, 128, 4, 4, use_tma=True, key_splits=2),
    E(128, 64, 4, 4, use_tma=True, key_splits=2),
]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=119056)
    p.add_argument("--density", type=float, default=0.35)
    p.add_argument("--heads", type=int, default=24)
    p.add_argument("--rep-ms", type=int, default=500)
    p.add_argument("--skip", choices=["attention", "estimate"], nargs="*", default=[])
    p.add_argument("--out", default=None)
    args = p.parse_args()
    gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
    S, H, D = args.tokens, args.heads, 128
    q, k, v = (torch.randn(1, S, H, D, generator=gen).cuda().to(torch.bfloat16) for _ in range(3))
    kv = torch.tensor([S], dtype=torch.int32, device="cuda")
    t_dense = median_ms(lambda: F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v))),
                        args.rep_ms)
    dense_rate = dense_flops(1, H, S, S, D) / t_dense / 1e9
    print(f"{torch.cuda.get_device_name()}  S={S}  dense SDPA {t_dense:.2f} ms = {dense_rate:.0f} TFLOP/s")
    rows = [{"what": "dense sdpa", "ms": t_dense, "tflops": dense_rate}]
    if "attention" not in args.skip:
        sel = random_selection(1, H, S, args.density, gen)
        flops = kept_flops(sel, S, D)
        small = slice(0, 4)  # check each config on 4 heads against the float32 reference
        from xattn_video.kernels import BlockSelection

        sel_small = BlockSelection.from_mask(sel.mask[:, small], block_size=128, q_len=S, kv_len=kv)
        ref = block_sparse_attention_torch(q[:, :, small].float(), k[:, :, small].float(),
                                           v[:, :, small].float(), sel_small, kv)
        for cfg in ATTENTION_CONFIGS:
            try:
                out = block_sparse_attention_triton(q[:, :, small], k[:, :, small], v[:, :, small], sel_small,
                                                    kv, config=cfg)
                err = _rel(out, ref)
                ms = median_ms(lambda: block_sparse_attention_triton(q, k, v, sel, kv, config=cfg), args.rep_ms)
            except Exception as exc:
                print(f"attention {cfg}: FAILED {type(exc).__name__}: {str(exc)[:300]}")
                continue
            rate = flops / ms / 1e9
            rows.append({"what": f"attention {cfg}", "ms": ms, "tflops": rate, "rate_vs_dense": rate / dense_rate,
                         "rel_err": err})
            print(f"attention {cfg}: {ms:8.2f} ms {rate:6.0f} TFLOP/s = {rate / dense_rate:.3f} of dense, "
                  f"err {err:.1e}", flush=True)
    if "estimate" not in args.skip:
        from xattn_video.kernels.naive import estimate_block_scores_torch

        for stride in (8, 16):
            ref = estimate_block_scores_torch(q[:, :, :2].float(), k[:, :, :2].float(), kv, stride=stride,
                                              block_size=128)
            for cfg in ESTIMATE_CONFIGS:
                if cfg.block_m % (128 // stride) or cfg.block_n % (128 // stride):
                    continue
                try:
                    got = estimate_block_scores_triton(q, k, kv, stride=stride, block_size=128, config=cfg)
                    diff = float((got[:, :2] - ref).abs().max())
                    ms = median_ms(lambda: estimate_block_scores_triton(q, k, kv, stride=stride, block_size=128,
                                                                        config=cfg), args.rep_ms)
                except Exception as exc:
                    print(f"estimate s={stride} {cfg}: FAILED {type(exc).__name__}: {str(exc)[:300]}")
                    continue
                rate = dense_flops(1, H, S, S, D) / (2 * stride) / ms / 1e9
                rows.append({"what": f"estimate s={stride} {cfg}", "ms": ms, "tflops": rate,
                             "pct_of_dense": 100 * ms / t_dense, "max_abs_err": diff})
                print(f"estimate s={stride} {cfg}: {ms:7.2f} ms = {100 * ms / t_dense:5.2f}% of dense, "
                      f"{rate:5.0f} TFLOP/s, max abs err vs fp32 reference {diff:.1e}", flush=True)
    from xattn_video.kernels.selection import _select
    from xattn_video.kernels.triton_estimate import _restrided

    scores = estimate_block_scores_triton(q, k, kv, stride=8, block_size=128)
    ms = median_ms(lambda: _select(scores, (0.9,) * H, kv, block_size=128, q_len=S, keep_diagonal=True,
                                   text_start=S - 256, max_density=None), args.rep_ms)
    rows.append({"what": "selection", "ms": ms, "pct_of_dense": 100 * ms / t_dense})
    print(f"selection: {ms:.2f} ms = {100 * ms / t_dense:.2f}% of dense")
    n_rows = -(-S // 128) * 16
    ms = median_ms(lambda: (_restrided(q, kv, 8, n_rows, True), _restrided(k, kv, 8, n_rows, False)), args.rep_ms)
    rows.append({"what": "restride q+k (s=8)", "ms": ms, "pct_of_dense": 100 * ms / t_dense})
    print(f"restride q+k s=8: {ms:.2f} ms = {100 * ms / t_dense:.2f}% of dense")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
