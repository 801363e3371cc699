"""Probe of the FP8 Gluon FA3-style kernel (``xattn_video/kernels/gluon_attention_fp8.py``) on a Hopper GPU.

Run from the repo root (H100/H200, torch 2.11 + triton 3.6), capped at about 6 minutes:

    PYTHONPATH=$PWD OUT=/tmp/out timeout 420 python benchmarks/gluon_fp8_probe_gpu.py

Variants of the FP8 kernel: ``pv16`` (q·kᵀ e4m3, P·V in bf16), ``pv8`` (P·V e4m3 too, two-level accumulation as
``triton_attention_v2``), ``pv8-1lvl`` (P·V e4m3 accumulated in the wgmma, as FlashAttention-3); ``i8-pv16`` and
``i8-pv8`` are ``pv16`` and ``pv8`` with q·kᵀ in int8 (``qk_format="int8"``: s8·s8→s32 wgmma, SageAttention's choice).

(a) quant: ``quantize_fp8`` gives ``quantize_triton``'s q/k/scales bit for bit and its v in the kernel's token order
    (e4m3 and int8 q/k);
(b) check: correctness against the float32 torch reference (``naive_block_sparse_attention``) AND against the Triton
    8-bit path on the same inputs (``attention_v2(..., precision="fp8" or "int8" as the variant's q·kᵀ,
    pv_fp8=...)``): B=2, H=3, D=128/64, odd S,
    kv_len = [S, S-301], random selections (~0.35, one empty row), dense mode, non-contiguous q/k/v with inf/NaN in
    the padding ("nasty"), a ``quantized=`` from ``quantize_triton`` (the launcher reorders v);
(c) video: relative error against the bf16 result (the bf16 Gluon kernel; also the fp32 reference) on video-like
    inputs (``bench.synthetic.video_like_qkv``, as tests/test_kernels_gpu.py's FP8 budget test), sparse and dense;
    issue 21's budget is 3 %;
(d) time: B=1, H=24, D=128 and 64, S = 18,616 / 119,056, density 0.35 (fixed per row) and dense, against
    cuDNN bf16 dense in the same process, the bf16 Gluon kernel and the Triton FP8/int8 kernels; kernel-only times
    (operands quantized beforehand) and the quantization time separately. rate vs cuDNN = density × cuDNN ms / kernel
    ms. Order: checks at D=128 and the video errors first, then D=128 timings, the other checks, D=64 timings
    (whatever the run budget leaves).
Results: ``$OUT/gluon-fp8-probe.md`` and ``.json`` (``.jsonl``: every record as measured).

Cases run in child processes watched by this one (a hung warp-specialised kernel gets its child killed and is
recorded as "timeout").
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import traceback
import zlib
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

OUT = os.environ.get("OUT", "/tmp/out")
JSONL = os.path.join(OUT, "gluon-fp8-probe.jsonl")
TOTAL_BUDGET_S = float(os.environ.get("PROBE_BUDGET_S", 330.0))  # whole run (the GPU command caps it at 6 min)
CASE_LIMIT_S = {"env": 120.0, "quant": 90.0, "check": 90.0, "video": 90.0, "time": 90.0}  # first calls compile

# 8-bit kernel variants: (pv_fp8, qk_format, GluonFP8Config kwargs)
VARIANTS: dict[str, tuple[bool, str, dict[str, Any]]] = {
    "pv16": (False, "e4m3", {}),
    "pv8": (True, "e4m3", {"two_level": True}),
    "pv8-1lvl": (True, "e4m3", {"two_level": False}),
    "i8-pv16": (False, "int8", {}),
    "i8-pv8": (True, "int8", {"two_level": True}),
}
# most wanted first (67,576 tokens dropped to keep the run within ~6 minutes)
TIMING = [(128, 18_616), (128, 119_056), (64, 18_616), (64, 119_056)]
TIMING_H, DENSITY = 24, 0.35
DEV = "cuda"


def _time_cases(D: int, S: int) -> list[str]:
    # time:<D>:<S>:<what>
    cases = [f"time:{D}:{S}:cudnn-dense", f"time:{D}:{S}:quant-qk", f"time:{D}:{S}:quant-qkv",
             f"time:{D}:{S}:quant-i8qk", f"time:{D}:{S}:quant-i8qkv",
             f"time:{D}:{S}:gluon16-sparse", f"time:{D}:{S}:gluon16-dense",
             f"time:{D}:{S}:v2fp8-sparse", f"time:{D}:{S}:v2fp8pv8-sparse",
             f"time:{D}:{S}:v2int8-sparse", f"time:{D}:{S}:v2int8pv8-sparse"]
    for var in VARIANTS:
        cases += [f"time:{D}:{S}:{var}-sparse", f"time:{D}:{S}:{var}-dense"]
    return cases


def all_cases() -> list[str]:
    cases = ["env", "quant:128:1000:e4m3", "quant:64:2309:e4m3", "quant:128:1000:int8"]
    # check:<variant>:<D>:<S>:<sparse|dense>[:nasty|:given]
    for var in VARIANTS:
        for mode in ("sparse", "dense"):
            cases.append(f"check:{var}:128:2309:{mode}")
    for D in (128, 64):
        for mode in ("sparse", "dense"):
            cases.append(f"video:{D}:{mode}")
    for D, S in TIMING:
        if D == 128:
            cases += _time_cases(D, S)
    for var in VARIANTS:
        cases.append(f"check:{var}:64:1000:sparse")
    cases += ["check:pv8:64:2309:dense", "check:pv16:64:2309:dense", "check:i8-pv8:64:2309:dense",
              "check:i8-pv16:64:2309:dense",
              "check:pv16:128:2309:sparse:nasty", "check:pv8:128:2309:dense:nasty",
              "check:i8-pv16:128:2309:dense:nasty", "check:i8-pv8:128:2309:sparse:nasty",
              "check:pv8-1lvl:64:1000:sparse:nasty", "check:pv8:128:1000:sparse:given",
              "check:i8-pv8:128:1000:sparse:given", "check:i8-pv16:64:1000:dense:given"]
    for D, S in TIMING:
        if D != 128:
            cases += _time_cases(D, S)
    return cases


# ---------------------------------------------------------------------------------------------------------------
# Child: runs cases, appends one JSON record per case to the .jsonl
# ---------------------------------------------------------------------------------------------------------------

def _record(rec: dict) -> None:
    with open(JSONL, "a") as f:
        f.write(json.dumps(rec) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {(text[0] if text else '')[:300]}"


class Child:
    def __init__(self) -> None:
        import torch

        self.torch = torch
        self.seed = int.from_bytes(os.urandom(4), "little")
        self.timing_key: tuple | None = None
        self.timing: dict[str, Any] = {}

    # -- helpers ---------------------------------------------------------------------------------------------
    @staticmethod
    def errors(out, ref) -> dict:
        d = out.float() - ref.float()
        return {"max_abs": float(d.abs().max()), "rel_l2": float(d.norm() / ref.float().norm().clamp_min(1e-30)),
                "finite": bool(out.isfinite().all())}

    @staticmethod
    def rel(a, b) -> float:
        return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))

    def run_fp8(self, var: str, q, k, v, sel, kv_len, quantized=None):
        from xattn_video.kernels.gluon_attention_fp8 import GluonFP8Config, attention_gluon_fp8

        pv8, qk_format, kw = VARIANTS[var]
        return attention_gluon_fp8(q, k, v, sel, kv_len, pv_fp8=pv8, config=GluonFP8Config(**kw),
                                   quantized=quantized, qk_format=qk_format)

    def selection(self, B: int, H: int, S: int, kv_len, density: float, gen, empty_row: bool):
        torch = self.torch
        from xattn_video.kernels.blocks import BlockSelection

        nq = -(-S // 128)
        mask = torch.rand(B, H, nq, nq, generator=gen, device=DEV) < density
        mask |= torch.eye(nq, dtype=torch.bool, device=DEV)
        if empty_row and nq > 1:
            mask[0, 0, 1] = False  # a query block with no kept key block: its rows must be zeros
        return BlockSelection.from_mask(mask, block_size=128, q_len=S, kv_len=kv_len)

    def fixed_density_selection(self, H: int, S: int, kv_len, density: float, gen):
        torch = self.torch
        from xattn_video.kernels.blocks import BlockSelection

        n = -(-S // 128)
        per_row = max(1, round(density * n))
        noise = torch.rand(1, H, n, n, generator=gen, device=DEV)
        noise += torch.eye(n, device=DEV) * 2.0
        top = noise.topk(per_row, dim=-1).indices
        mask = torch.zeros(1, H, n, n, dtype=torch.bool, device=DEV).scatter_(-1, top, True)
        return BlockSelection.from_mask(mask, block_size=128, q_len=S, kv_len=kv_len)

    def bench(self, fn, budget_ms: float = 250.0) -> float:
        """Median ms of individually event-timed calls (1 warmup; as many calls as fit in ~budget_ms, 3-30)."""
        torch = self.torch
        fn()
        torch.cuda.synchronize()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        est = max(s.elapsed_time(e), 1e-3)
        n = int(min(30, max(3, budget_ms / est)))
        times = []
        for _ in range(n):
            s.record()
            fn()
            e.record()
            torch.cuda.synchronize()
            times.append(s.elapsed_time(e))
        times.sort()
        return float(times[len(times) // 2])

    # -- cases -----------------------------------------------------------------------------------------------
    def run_env(self) -> dict:
        torch = self.torch
        import triton

        from xattn_video.kernels import gluon_attention_fp8 as g8

        props = torch.cuda.get_device_properties(0)
        return {"gpu": torch.cuda.get_device_name(0), "sm_count": props.multi_processor_count,
                "capability": list(torch.cuda.get_device_capability(0)), "torch": torch.__version__,
                "cuda": torch.version.cuda, "triton": triton.__version__, "gluon_available": g8.gluon_available(),
                "gluon_import_error": repr(g8._IMPORT_ERROR), "seed_base": self.seed}

    def inputs(self, key: str, D: int, S: int, nasty: bool, dtype=None):
        torch = self.torch
        seed = (self.seed + zlib.crc32(key.encode())) % 2**31
        gen = torch.Generator(device=DEV).manual_seed(seed)
        dtype = dtype or torch.bfloat16
        B, H = 2, 3
        short = S - 301  # not a multiple of 128: the last kept block is partial
        kv_len = torch.tensor([S, short], dtype=torch.int32, device=DEV)
        if nasty:  # q/k/v as non-contiguous views of one qkv tensor, inf/NaN in the padding keys
            qkv = torch.randn(B, S, 3, H, D, generator=gen, device=DEV).to(dtype)
            qkv[1, short:, 1] = float("inf")
            qkv[1, short:, 2] = float("nan")
            q, k, v = qkv.unbind(2)
        else:
            q, k, v = (torch.randn(B, S, H, D, generator=gen, device=DEV).to(dtype) for _ in range(3))
            k = k + 1.0  # a shared component, as video keys have (smoothing takes it out of the tile scales)
        return seed, gen, q, k, v, kv_len

    def run_quant(self, D: int, S: int, qk_format: str) -> dict:
        torch = self.torch
        from xattn_video.kernels.gluon_attention_fp8 import permute_v_tokens, quantize_fp8
        from xattn_video.kernels.triton_quant import quantize_triton

        seed, gen, q, k, v, kv_len = self.inputs(f"quant{D}{S}{qk_format}", D, S, nasty=True)
        a = quantize_fp8(q, k, v, kv_len, qk_format)
        b = quantize_triton(q, k, v, kv_len, block_m=128, block_n=128, qk_format=qk_format)
        torch.cuda.synchronize()
        same = lambda x, y: bool(torch.equal(x.view(torch.uint8) if x.dtype == torch.float8_e4m3fn else x,  # noqa: E731
                                             y.view(torch.uint8) if y.dtype == torch.float8_e4m3fn else y))
        rec = {"seed": seed, "q_equal": same(a.q, b.q), "k_equal": same(a.k, b.k),
               "q_scale_equal": same(a.q_scale, b.q_scale), "k_scale_equal": same(a.k_scale, b.k_scale),
               "v_scale_equal": same(a.v_scale, b.v_scale),
               "v_equal_after_permute": same(a.v, permute_v_tokens(b.v)), "v_shape": list(a.v.shape),
               "qk_dtype": str(a.q.dtype), "qk_format_tag": a.qk_format == qk_format}
        rec["ok"] = all(v for k_, v in rec.items() if k_.endswith("equal") or k_.endswith("permute")
                        or k_ == "qk_format_tag")
        return rec

    def run_check(self, var: str, D: int, S: int, mode: str, extra: str) -> dict:
        torch = self.torch
        from xattn_video.kernels.blocks import BlockSelection
        from xattn_video.kernels.naive import naive_block_sparse_attention
        from xattn_video.kernels.triton_attention_v2 import attention_v2
        from xattn_video.kernels.triton_quant import quantize_triton

        nasty = extra == "nasty"
        seed, gen, q, k, v, kv_len = self.inputs(f"{var}{D}{S}{mode}{extra}", D, S, nasty)
        B, H = q.shape[0], q.shape[2]
        sel = self.selection(B, H, S, kv_len, 0.3, gen, empty_row=(mode == "sparse"))
        if mode == "dense":
            ref_sel = BlockSelection.from_mask(torch.ones_like(sel.mask), block_size=128, q_len=S, kv_len=kv_len)
            run_sel = None
        else:
            ref_sel = run_sel = sel
        ref = naive_block_sparse_attention(q, k, v, ref_sel, kv_len)
        pv8, qk_format, _ = VARIANTS[var]
        precision = "int8" if qk_format == "int8" else "fp8"
        quantized = None
        if extra == "given":  # a quantize_triton result: the launcher reorders v itself
            quantized = quantize_triton(q, k, v if pv8 else None, kv_len, block_m=128, block_n=128,
                                        qk_format=qk_format)
        out = self.run_fp8(var, q, k, v, run_sel, kv_len, quantized)
        torch.cuda.synchronize()
        rec = {"seed": seed, "density": float(ref_sel.density()), **self.errors(out, ref)}
        if mode == "sparse":
            rec["empty_row_zero"] = bool((out[0, 128:256, 0] == 0).all())
        if extra == "given":
            rec["rel_vs_own_quant"] = self.rel(out, self.run_fp8(var, q, k, v, run_sel, kv_len))
        try:
            tri = attention_v2(q, k, v, run_sel, kv_len, precision=precision, pv_fp8=pv8)
            torch.cuda.synchronize()
            e = self.errors(tri, ref)
            rec["triton_rel_l2"], rec["triton_max_abs"] = e["rel_l2"], e["max_abs"]
            rec["rel_vs_triton"] = self.rel(out, tri)
        except Exception as exc:  # noqa: BLE001
            rec["triton_error"] = _one_line(exc)
        tol = max(1.5 * rec.get("triton_rel_l2", 0.03), 0.01)
        rec["ok"] = bool(rec["finite"] and rec["rel_l2"] <= tol and rec.get("empty_row_zero", True)
                         and rec.get("rel_vs_own_quant", 0.0) < 1e-3)
        return rec

    def run_video(self, D: int, mode: str) -> dict:
        torch = self.torch
        from xattn_video.bench.synthetic import video_like_qkv
        from xattn_video.kernels.blocks import BlockSelection
        from xattn_video.kernels.gluon_attention import attention_gluon
        from xattn_video.kernels.naive import naive_block_sparse_attention
        from xattn_video.kernels.triton_attention_v2 import attention_v2

        q, k, v, _ = video_like_qkv((5, 16, 24), heads=4, head_dim=D, device=DEV, seed=3)
        S, H = q.shape[1], q.shape[2]
        kv_len = torch.tensor([S], dtype=torch.int32, device=DEV)
        gen = torch.Generator(device=DEV).manual_seed(3)
        sel = self.fixed_density_selection(H, S, kv_len, DENSITY, gen)
        run_sel = sel if mode == "sparse" else None
        ref_sel = sel if mode == "sparse" else BlockSelection.from_mask(torch.ones_like(sel.mask), block_size=128,
                                                                        q_len=S, kv_len=kv_len)
        bf16 = attention_gluon(q, k, v, run_sel, kv_len)
        f32 = naive_block_sparse_attention(q, k, v, ref_sel, kv_len)
        rec: dict[str, Any] = {"S": S, "density": float(ref_sel.density()), "bf16_vs_f32": self.rel(bf16, f32)}
        worst = 0.0
        for var in VARIANTS:
            out = self.run_fp8(var, q, k, v, run_sel, kv_len)
            rec[f"{var}_vs_bf16"] = self.rel(out, bf16)
            rec[f"{var}_vs_f32"] = self.rel(out, f32)
            rec[f"{var}_finite"] = bool(out.isfinite().all())
            worst = max(worst, rec[f"{var}_vs_bf16"])
        for prec in ("fp8", "int8"):
            for pv8 in (False, True):
                tri = attention_v2(q, k, v, run_sel, kv_len, precision=prec, pv_fp8=pv8)
                pre = "i8-" if prec == "int8" else ""
                rec[f"triton_{pre}{'pv8' if pv8 else 'pv16'}_vs_bf16"] = self.rel(tri, bf16)
        torch.cuda.synchronize()
        rec["within_3pct"] = [var for var in VARIANTS if rec[f"{var}_vs_bf16"] <= 0.03]
        rec["ok"] = bool(worst <= 0.03 and all(rec[f"{var}_finite"] for var in VARIANTS))
        return rec

    def timing_inputs(self, D: int, S: int):
        torch = self.torch
        if self.timing_key != (D, S):
            self.timing.clear()
            self.timing_key = None
            torch.cuda.empty_cache()
            seed = (self.seed + S + D) % 2**31
            gen = torch.Generator(device=DEV).manual_seed(seed)
            q, k, v = (torch.randn(1, S, TIMING_H, D, generator=gen, device=DEV, dtype=torch.bfloat16)
                       for _ in range(3))
            kv_len = torch.tensor([S], dtype=torch.int32, device=DEV)
            sel = self.fixed_density_selection(TIMING_H, S, kv_len, DENSITY, gen)
            self.timing.update(q=q, k=k, v=v, kv_len=kv_len, sel=sel, seed=seed, density=float(sel.density()))
            self.timing_key = (D, S)
        return self.timing

    def quantized_for(self, kind: str):
        """Operands quantized once per size: "qk" / "qkv" (this kernel's), "tri" / "tri-v" (quantize_triton's);
        "i8..." the same with int8 q/k."""
        t = self.timing
        if kind not in t:
            from xattn_video.kernels.gluon_attention_fp8 import quantize_fp8
            from xattn_video.kernels.triton_quant import quantize_triton

            q, k, v, kv = t["q"], t["k"], t["v"], t["kv_len"]
            fmt = "int8" if kind.startswith("i8") else "e4m3"
            base = kind[2:] if kind.startswith("i8") else kind
            t[kind] = {"qk": lambda: quantize_fp8(q, k, None, kv, fmt), "qkv": lambda: quantize_fp8(q, k, v, kv, fmt),
                       "tri": lambda: quantize_triton(q, k, None, kv, block_m=128, block_n=128, qk_format=fmt),
                       "tri-v": lambda: quantize_triton(q, k, v, kv, block_m=128, block_n=128, qk_format=fmt),
                       }[base]()
        return t[kind]

    def run_time(self, D: int, S: int, what: str) -> dict:
        torch = self.torch
        import torch.nn.functional as F

        t = self.timing_inputs(D, S)
        q, k, v, kv_len, sel = t["q"], t["k"], t["v"], t["kv_len"], t["sel"]
        mode = "dense" if what.endswith("-dense") else "sparse"
        s = sel if mode == "sparse" else None
        rec: dict[str, Any] = {"seed": t["seed"], "mode": mode,
                               "density": t["density"] if mode == "sparse" else 1.0}
        if what == "cudnn-dense":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))

            def fn():
                with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                    return F.scaled_dot_product_attention(qt, kt, vt)
        elif what.startswith("quant-"):
            from xattn_video.kernels.gluon_attention_fp8 import quantize_fp8

            with_v = what.endswith("qkv")
            fmt = "int8" if what.startswith("quant-i8") else "e4m3"
            rec.pop("density")

            def fn():
                return quantize_fp8(q, k, v if with_v else None, kv_len, fmt)
        elif what.startswith("gluon16-"):
            from xattn_video.kernels.gluon_attention import attention_gluon

            def fn():
                return attention_gluon(q, k, v, s, kv_len)
        elif what.startswith("v2fp8") or what.startswith("v2int8"):
            from xattn_video.kernels.triton_attention_v2 import attention_v2

            prec = "int8" if what.startswith("v2int8") else "fp8"
            pv8 = what.startswith(f"v2{prec}pv8")
            qz = self.quantized_for(("i8" if prec == "int8" else "") + ("tri-v" if pv8 else "tri"))

            def fn():
                return attention_v2(q, k, v, s, kv_len, precision=prec, pv_fp8=pv8, quantized=qz)
        else:
            var = what.rsplit("-", 1)[0]
            pv8, qk_format, _ = VARIANTS[var]
            qz = self.quantized_for(("i8" if qk_format == "int8" else "") + ("qkv" if pv8 else "qk"))

            def fn():
                return self.run_fp8(var, q, k, v, s, kv_len, qz)
        out = fn()  # compiles
        torch.cuda.synchronize()
        if not what.startswith("quant-") and what != "cudnn-dense":
            rec["finite"] = bool(out.isfinite().all())
            if what.startswith("gluon16-"):
                t[f"bf16-{mode}"] = out
            elif f"bf16-{mode}" in t:
                rec["rel_l2_vs_bf16"] = self.rel(out, t[f"bf16-{mode}"])
        del out
        rec["ms"] = self.bench(fn)
        return rec

    def run(self, case: str) -> dict:
        parts = case.split(":")
        if parts[0] == "env":
            return self.run_env()
        if parts[0] == "quant":
            return self.run_quant(int(parts[1]), int(parts[2]), parts[3] if len(parts) > 3 else "e4m3")
        if parts[0] == "check":
            _, var, D, S, mode, *rest = parts
            return self.run_check(var, int(D), int(S), mode, rest[0] if rest else "")
        if parts[0] == "video":
            return self.run_video(int(parts[1]), parts[2])
        if parts[0] == "time":
            return self.run_time(int(parts[1]), int(parts[2]), parts[3])
        raise ValueError(f"unknown case {case}")


def child_main(cases: list[str]) -> None:
    child = Child()
    for case in cases:
        print(f"@@START {case}", flush=True)
        t0 = time.perf_counter()
        try:
            rec = {"case": case, "status": "done", **child.run(case)}
        except Exception as exc:  # noqa: BLE001 - one failing variant must not end the run
            rec = {"case": case, "status": "error", "error": _one_line(exc),
                   "traceback": traceback.format_exc()[-3000:]}
            print(traceback.format_exc(), flush=True)
        rec["seconds"] = round(time.perf_counter() - t0, 2)
        _record(rec)
        shown = {k: v for k, v in rec.items() if k != "traceback"}
        print(f"@@DONE {json.dumps(shown)}", flush=True)


# ---------------------------------------------------------------------------------------------------------------
# Watchdog (parent): runs the cases in children, kills a child whose case passes its limit
# ---------------------------------------------------------------------------------------------------------------

def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _pump(stream, lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))
    lines.put(None)  # end of output: the child exited


def _config_of(case: str) -> str | None:
    """The FP8 kernel variant a case runs (None for the others): a variant that hung or crashed is skipped after."""
    parts = case.split(":")
    if parts[0] == "check":
        return parts[1]
    if parts[0] == "time":
        var = parts[3].rsplit("-", 1)[0]
        return var if var in VARIANTS else None
    return None


def parent_main(cases: list[str]) -> list[dict]:
    start = time.monotonic()
    records: list[dict] = []
    remaining = list(cases)
    while remaining and time.monotonic() - start < TOTAL_BUDGET_S:
        cmd = [sys.executable, "-u", os.path.abspath(__file__), "--child", json.dumps(remaining)]
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                env=env, start_new_session=True)
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
        current, case_start = None, time.monotonic()
        done_here: list[str] = []
        while True:
            limit = CASE_LIMIT_S.get((current or "env").split(":")[0], 120.0)
            left_case = limit - (time.monotonic() - case_start)
            left_total = TOTAL_BUDGET_S - (time.monotonic() - start)
            if left_case <= 0 or left_total <= 0:
                why = "timeout" if left_case <= 0 else "run budget spent"
                print(f"!! {current}: {why} after {time.monotonic() - case_start:.0f} s; killing the child", flush=True)
                _kill(proc)
                if current is not None:
                    rec = {"case": current, "status": "timeout", "error": f"{why} (kernel hang or too slow)",
                           "seconds": round(time.monotonic() - case_start, 1)}
                    _record(rec)
                    records.append(rec)
                    done_here.append(current)
                break
            try:
                line = lines.get(timeout=min(left_case, left_total, 5.0))
            except queue.Empty:
                continue
            if line is None:  # child exited
                proc.wait()
                if current is not None:  # died inside a case (segfault, illegal memory access abort, ...)
                    rec = {"case": current, "status": "crash", "error": f"child exited with {proc.returncode}"}
                    _record(rec)
                    records.append(rec)
                    done_here.append(current)
                break
            if line.startswith("@@START "):
                current, case_start = line[len("@@START "):], time.monotonic()
                print(f"-- {current}", flush=True)
            elif line.startswith("@@DONE "):
                rec = json.loads(line[len("@@DONE "):])
                records.append(rec)
                done_here.append(rec["case"])
                print(f"   {_summary(rec)}", flush=True)
                current = None
            else:
                print(f"   | {line}", flush=True)
        remaining = [c for c in remaining if c not in done_here]
        # a config that hung or crashed once would most likely do it again: skip its other cases
        failed = {_config_of(r["case"]) for r in records if r["status"] in ("timeout", "crash")} - {None}
        for c in [c for c in remaining if _config_of(c) in failed]:
            rec = {"case": c, "status": "skipped", "error": f"config {_config_of(c)} hung or crashed earlier"}
            _record(rec)
            records.append(rec)
            remaining.remove(c)
        if not done_here:  # the child failed before its first case: relaunching would fail the same way
            break
    for c in remaining:
        records.append({"case": c, "status": "skipped", "error": "not run (run budget spent or child failed)"})
    return records


def _summary(rec: dict) -> str:
    keys = ("status", "ms", "max_abs", "rel_l2", "triton_rel_l2", "rel_vs_triton", "ok", "rel_l2_vs_bf16", "finite",
            "error", "seconds", "gpu", "triton", "gluon_available")
    return ", ".join(f"{k}={rec[k]:.4g}" if isinstance(rec.get(k), float) else f"{k}={rec[k]}"
                     for k in keys if k in rec)


# ---------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------

def _fmt(x: Any, spec: str = ".3g") -> str:
    if isinstance(x, float):
        return format(x, spec)
    return "" if x is None else str(x)


def report(records: list[dict]) -> tuple[str, dict]:
    by_case = {r["case"]: r for r in records}
    env = by_case.get("env", {})
    head = (f"GPU: {env.get('gpu')} ({env.get('sm_count')} SMs), torch {env.get('torch')} (CUDA {env.get('cuda')}), "
            f"triton {env.get('triton')}, gluon_available={env.get('gluon_available')}, "
            f"seed base {env.get('seed_base')}")
    lines = ["# FP8 Gluon FA3-style attention probe", "", head, "",
             "Variants: pv16 = q·kᵀ e4m3, P·V bf16; pv8 = P·V e4m3 too, two-level accumulation (as attention_v2); "
             "pv8-1lvl = P·V e4m3 accumulated in the wgmma (FA3); i8-pv16 / i8-pv8 = pv16 / pv8 with q·kᵀ in int8 "
             "(s8·s8→s32 wgmma); Triton references: attention_v2 precision fp8 or int8 as the variant's q·kᵀ.", "",
             "## quantize_fp8 vs quantize_triton (bitwise)", "",
             "| case | status | q | k | q scale | k scale | v scale | v (after reorder) | ok | error |",
             "|---|---|:-:|:-:|:-:|:-:|:-:|:-:|:-:|---|"]
    for r in records:
        if r["case"].startswith("quant:"):
            lines.append(f"| {r['case'][6:]} | {r['status']} | {_fmt(r.get('q_equal'))} | {_fmt(r.get('k_equal'))} | "
                         f"{_fmt(r.get('q_scale_equal'))} | {_fmt(r.get('k_scale_equal'))} | "
                         f"{_fmt(r.get('v_scale_equal'))} | {_fmt(r.get('v_equal_after_permute'))} | "
                         f"{_fmt(r.get('ok'))} | {r.get('error', '')} |")
    lines += ["", "## Correctness (vs float32 reference and the Triton 8-bit path on the same inputs; B=2, H=3, "
              "kv_len = [S, S-301], random blocks p=0.3 + diagonal)", "",
              "ok: finite, rel L2 ≤ max(1.5 × Triton's, 1%), emptied row exactly 0, `given` (quantize_triton operands) "
              "= own quantization", "",
              "| case | status | rel L2 | max abs | Triton 8-bit rel L2 | rel vs Triton | empty row 0 | ok | seed | error |",
              "|---|---|---:|---:|---:|---:|:-:|:-:|---:|---|"]
    for r in records:
        if r["case"].startswith("check:"):
            lines.append(f"| {r['case'][6:]} | {r['status']} | {_fmt(r.get('rel_l2'))} | {_fmt(r.get('max_abs'))} | "
                         f"{_fmt(r.get('triton_rel_l2'))} | {_fmt(r.get('rel_vs_triton'))} | "
                         f"{_fmt(r.get('empty_row_zero'))} | {_fmt(r.get('ok'))} | {_fmt(r.get('seed'))} | "
                         f"{r.get('error', r.get('triton_error', ''))} |")
    lines += ["", "## Video-like inputs (video_like_qkv((5,16,24), heads=4, seed=3)): relative L2 error vs the bf16 "
              "Gluon kernel (issue 21 budget: 3 %)", "",
              "| case | status | density | " + " | ".join(f"{v} vs bf16" for v in VARIANTS)
              + " | Triton pv16 vs bf16 | Triton pv8 vs bf16 | Triton i8-pv16 vs bf16 | Triton i8-pv8 vs bf16 | "
              + " | ".join(f"{v} vs f32" for v in VARIANTS) + " | bf16 vs f32 | within 3 % | ok |",
              "|---|---|---:|" + "---:|" * (2 * len(VARIANTS) + 5) + "---|:-:|"]
    for r in records:
        if r["case"].startswith("video:"):
            lines.append(f"| {r['case'][6:]} | {r['status']} | {_fmt(r.get('density'))} | "
                         + " | ".join(_fmt(r.get(f"{v}_vs_bf16")) for v in VARIANTS) + " | "
                         + f"{_fmt(r.get('triton_pv16_vs_bf16'))} | {_fmt(r.get('triton_pv8_vs_bf16'))} | "
                         + f"{_fmt(r.get('triton_i8-pv16_vs_bf16'))} | {_fmt(r.get('triton_i8-pv8_vs_bf16'))} | "
                         + " | ".join(_fmt(r.get(f"{v}_vs_f32")) for v in VARIANTS)
                         + f" | {_fmt(r.get('bf16_vs_f32'))} | {', '.join(r.get('within_3pct', []))} | "
                         + f"{_fmt(r.get('ok'))} |")
    summary = []
    for D, S in TIMING:
        pre = f"time:{D}:{S}:"
        cud = by_case.get(pre + "cudnn-dense", {}).get("ms")
        qk = by_case.get(pre + "quant-qk", {}).get("ms")
        qkv = by_case.get(pre + "quant-qkv", {}).get("ms")
        i8qk = by_case.get(pre + "quant-i8qk", {}).get("ms")
        i8qkv = by_case.get(pre + "quant-i8qkv", {}).get("ms")
        lines += ["", f"## Timing, S = {S:,}, B=1, H={TIMING_H}, D={D} (median ms; kernel-only unless noted)", "",
                  f"quantization: q/k {_fmt(qk, '.3f')} ms, q/k/v {_fmt(qkv, '.3f')} ms (int8 q/k: {_fmt(i8qk, '.3f')} "
                  f"ms, {_fmt(i8qkv, '.3f')} ms). rate = density × cuDNN ms / ms; \"with quant\" adds the quantization "
                  "(q/k for pv16 and v2fp8/v2int8, q/k/v for pv8; int8 q/k for the i8 and v2int8 rows)", "",
                  "| variant | density | ms | rate vs cuDNN | ms with quant | rate with quant | rel L2 vs bf16 Gluon "
                  "| status |", "|---|---:|---:|---:|---:|---:|---:|---|"]
        for r in records:
            if not r["case"].startswith(pre) or r["case"].split(":")[3].startswith("quant-"):
                continue
            what = r["case"].split(":")[3]
            ms, dens = r.get("ms"), r.get("density")
            rate = dens * cud / ms if (ms and cud and dens) else None
            qms = None
            if ms and (what.startswith("pv") or what.startswith("i8-") or what.startswith("v2fp8")
                       or what.startswith("v2int8")):
                int8 = what.startswith("i8-") or what.startswith("v2int8")
                with_v = "pv8" in what  # pv8*, i8-pv8*, v2fp8pv8, v2int8pv8
                qq = (i8qkv if with_v else i8qk) if int8 else (qkv if with_v else qk)
                qms = ms + qq if qq else None
            qrate = dens * cud / qms if (qms and cud and dens) else None
            r["rate_vs_cudnn"], r["ms_with_quant"], r["rate_with_quant"] = rate, qms, qrate
            lines.append(f"| {what} | {_fmt(dens)} | {_fmt(ms, '.3f')} | {_fmt(rate, '.3f')} | {_fmt(qms, '.3f')} | "
                         f"{_fmt(qrate, '.3f')} | {_fmt(r.get('rel_l2_vs_bf16'))} | {r['status']} "
                         f"{r.get('error', '')} |")
            if what in [f"{v}-{m}" for v in VARIANTS for m in ("sparse", "dense")] + [
                    "gluon16-sparse", "gluon16-dense", "v2fp8-sparse", "v2int8-sparse"]:
                summary.append((D, S, what, rate, qrate))
    if summary:
        lines += ["", "## Summary: rate vs cuDNN bf16 (targets: FP8 sparse ≥ 1.4, FP8 dense ≥ 1.3)", "",
                  "| D | S | variant | rate | rate with quant |", "|---:|---:|---|---:|---:|"]
        for D, S, what, rate, qrate in summary:
            lines.append(f"| {D} | {S:,} | {what} | {_fmt(rate, '.3f')} | {_fmt(qrate, '.3f')} |")
    bad = [r for r in records if r["status"] != "done" or r.get("ok") is False or r.get("finite") is False]
    lines += ["", f"## Problems: {len(bad)}", ""]
    for r in bad:
        lines.append(f"- {r['case']}: {r['status']} {r.get('error', '')} "
                     f"{'rel_l2=' + _fmt(r.get('rel_l2')) if 'rel_l2' in r else ''}")
        if r.get("traceback"):
            lines += ["", "```", r["traceback"].strip()[-1500:], "```", ""]
    return "\n".join(lines) + "\n", {"records": records, "env": env}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--only", default=None, help="run only cases whose id contains this text (e.g. check:)")
    args = ap.parse_args()
    if args.child is not None:
        child_main(json.loads(args.child))
        return 0
    os.makedirs(OUT, exist_ok=True)
    if os.path.exists(JSONL):
        os.remove(JSONL)
    cases = [c for c in all_cases() if args.only is None or c == "env" or args.only in c]
    t0 = time.monotonic()
    records = parent_main(cases)
    md, js = report(records)
    js["wall_s"] = round(time.monotonic() - t0, 1)
    with open(os.path.join(OUT, "gluon-fp8-probe.md"), "w") as f:
        f.write(md)
    with open(os.path.join(OUT, "gluon-fp8-probe.json"), "w") as f:
        json.dump(js, f, indent=1, default=str)
    print(md)
    print(f"wrote {OUT}/gluon-fp8-probe.md, .json, .jsonl ({js['wall_s']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
