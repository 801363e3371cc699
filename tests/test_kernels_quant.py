"""FP8 path and the Hopper kernel variants (issue 21), on the CPU: the quantization math against a torch
reference (float8_e4m3fn casts), the v2 kernel in Triton's interpreter (fp8 tl.dot works there; fp32/fp16 for
the bf16 path, whose interpreted bf16 dot is wrong), the refusals and the config key. GPU checks of the same
kernels (bf16, TMA, warp specialization, speed-relevant shapes) are in test_kernels_gpu.py."""


import pytest
import torch

from helpers import HAS_CUDA, assert_close, assert_rel_err, make_qkv
from xattn_video.kernels import (BlockSelection, XAttentionInputError, block_sparse_attention,
                                 naive_block_sparse_attention, xattention)
from xattn_video.kernels.triton_attention_v2 import BF16_VARIANTS, V2Config, attention_v2, variant_config
from xattn_video.kernels.triton_quant import FP8_MAX, dequantize_qk, quantize_reference, quantize_triton

DEV = "cuda" if HAS_CUDA else "cpu"
SMALL = V2Config(block_m=32, block_n=32, num_warps=4, num_stages=1)


def _selection(gen, B, H, S, bs, kv, density=0.4):
    n = -(-S // bs)
    mask = torch.rand(B, H, n, n, generator=gen) < density
    return BlockSelection.from_mask(mask.to(DEV), block_size=bs, q_len=S, kv_len=kv)


def _inputs(gen, B=2, S=150, H=2, D=64, dtype=torch.float32, kv=(150, 97), poison=True):
    q, k, v = make_qkv(gen, B, S, H, D, dtype=dtype, device=DEV)
    k = k + 1.5  # a shared component, as video keys have: smoothing takes it out of the tile scales
    kv = torch.tensor(kv, dtype=torch.int32, device=DEV)
    if poison:  # padding must never matter
        k[1, int(kv[1]):] = float("inf")
        v[1, int(kv[1]):] = float("nan")
    return q, k, v, kv


# --- quantization ---------------------------------------------------------------------------------------------

def test_quantize_reference_scales_and_range(gen):
    q, k, v, kv = _inputs(gen)
    z = quantize_reference(q, k, v, kv, block_m=64, block_n=32)
    assert z.q.dtype == z.k.dtype == z.v.dtype == torch.float8_e4m3fn
    assert z.q_scale.shape == (4, 3) and z.k_scale.shape == (4, 5) and z.v.shape == (2, 2, 64, 150)
    for x8 in (z.q, z.k, z.v):
        assert torch.isfinite(x8.float()).all() and x8.float().abs().max() <= FP8_MAX
    # each tile reaches the top of e4m3's range (its amax maps to 448)
    tile = z.q.float()[0, :64, 0].abs().max()
    assert tile == FP8_MAX
    # k rows past kv_len are zeros, and the mean is over the valid rows only
    assert (z.k.float()[1, 97:] == 0).all() and (z.v.float()[1, :, :, 97:] == 0).all()
    assert_close(z.k_mean[1], k[1, :97].float().mean(dim=0), atol=1e-5, seed=gen)
    # dequantized values are close to the inputs (e4m3: 3 mantissa bits, relative step <= 1/8)
    dq, dk = dequantize_qk(z)
    assert_rel_err(dq, q.float(), 0.04, seed=gen)
    ks = torch.where(torch.arange(150, device=DEV)[None, :, None, None] < kv[:, None, None, None],
                     k.float() - z.k_mean[:, None], 0.0)
    assert_rel_err(dk, ks, 0.04, seed=gen)


def test_smoothing_k_by_its_mean_leaves_attention_unchanged(gen):
    """q·mean is a constant per query row: softmax ignores it (exact before rounding)."""
    q, k, v, kv = _inputs(gen, poison=False, kv=(150, 150))
    sel = _selection(gen, 2, 2, 150, 32, kv)
    mean = k.float().mean(dim=1, keepdim=True)
    a = naive_block_sparse_attention(q, k, v, sel, kv)  # float32 inside
    b = naive_block_sparse_attention(q, k - mean, v, sel, kv)
    assert_close(a, b, atol=2e-6, rtol=1e-5, seed=gen)


@pytest.mark.parametrize("fmt", ["e4m3", "int8"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_quantize_triton_matches_reference_bitwise(gen, dtype, fmt):
    q, k, v, kv = _inputs(gen, dtype=dtype)
    got = quantize_triton(q, k, v, kv, block_m=64, block_n=32, qk_format=fmt)
    ref = quantize_reference(q, k, v, kv, block_m=64, block_n=32, qk_format=fmt)
    assert got.q.dtype == ref.q.dtype == (torch.int8 if fmt == "int8" else torch.float8_e4m3fn)
    for name in ("q", "k", "v"):
        a, b = getattr(got, name).float(), getattr(ref, name).float()
        assert a.shape == b.shape
        # the k mean is summed in another order: a value on a rounding boundary may land one e4m3 step away
        mismatch = (a != b).float().mean().item()
        assert mismatch <= (0.002 if name == "k" else 0.0), (name, mismatch)
    assert_close(got.q_scale, ref.q_scale, atol=0, rtol=1e-6, seed=gen)
    assert_close(got.k_scale, ref.k_scale, atol=0, rtol=1e-5, seed=gen)
    assert_close(got.v_scale, ref.v_scale, atol=0, rtol=1e-6, seed=gen)


# --- the v2 kernel (interpreted on the CPU) -------------------------------------------------------------------

@pytest.mark.parametrize("cfg", [
    SMALL,
    V2Config(block_m=32, block_n=16, num_warps=4, num_stages=1, persistent=True),
    V2Config(block_m=16, block_n=32, num_warps=4, num_stages=1, persistent=True, order_by_count=False),
], ids=["plain", "persistent-ordered", "persistent-natural"])
def test_v2_bf16_path_matches_reference_sparse_and_dense(gen, cfg):
    q, k, v, kv = _inputs(gen)
    sel = _selection(gen, 2, 2, 150, 32, kv)
    out = attention_v2(q, k, v, sel, kv, config=cfg)
    assert_close(out, naive_block_sparse_attention(q, k, v, sel, kv), atol=1e-5, rtol=1e-4, seed=gen)
    full = BlockSelection.from_mask(torch.ones_like(sel.mask), block_size=32, q_len=150, kv_len=kv)
    out = attention_v2(q, k, v, None, kv, config=cfg)
    assert_close(out, naive_block_sparse_attention(q, k, v, full, kv), atol=1e-5, rtol=1e-4, seed=gen)


def test_v2_edge_rows_match_reference(gen):
    """A row of no kept block (zeros), a row of one, a partial last block, poisoned padding and two BLOCK_N tiles
    per kept block, sparse and dense."""
    q, k, v, kv = _inputs(gen, S=171, kv=(171, 113))
    mask = _selection(gen, 2, 2, 171, 32, kv, density=0.5).mask.clone()
    mask[0, 0, 0] = False  # no kept keys: zeros
    mask[1, 1, 2] = False
    mask[1, 1, 2, 0] = True  # one kept block
    sel = BlockSelection.from_mask(mask, block_size=32, q_len=171, kv_len=kv)
    cfg = V2Config(block_m=32, block_n=16, num_warps=4, num_stages=1)
    out = attention_v2(q, k, v, sel, kv, config=cfg)
    assert (out[0, :32, 0] == 0).all(), gen.initial_seed()
    assert_close(out, naive_block_sparse_attention(q, k, v, sel, kv), atol=1e-5, rtol=1e-4, seed=gen)
    full = BlockSelection.from_mask(torch.ones_like(sel.mask), block_size=32, q_len=171, kv_len=kv)
    out = attention_v2(q, k, v, None, kv, config=cfg)
    assert_close(out, naive_block_sparse_attention(q, k, v, full, kv), atol=1e-5, rtol=1e-4, seed=gen)


def test_v2_fp16_rows_without_keys_are_zero(gen):
    q, k, v, kv = _inputs(gen, dtype=torch.float16)
    sel = _selection(gen, 2, 2, 150, 32, kv, density=0.0)  # nothing kept
    out = attention_v2(q, k, v, sel, kv, config=SMALL)
    assert (out == 0).all()


@pytest.mark.parametrize("fmt", ["e4m3", "int8"])
@pytest.mark.parametrize("dense", [False, True])
def test_fp8_kernel_equals_attention_on_dequantized_operands(gen, dense, fmt):
    """The 8-bit kernels compute attention(deq(q8), deq(k8), v): all their error is the quantization's (int8: up to
    ~1e-4 more, from folding the int-to-float offset into the exponent's FMA)."""
    q, k, v, kv = _inputs(gen)
    sel = _selection(gen, 2, 2, 150, 32, kv)
    if dense:
        sel_ref = BlockSelection.from_mask(torch.ones_like(sel.mask), block_size=32, q_len=150, kv_len=kv)
    else:
        sel_ref = sel
    z = quantize_reference(q, k, None, kv, block_m=32, block_n=32, qk_format=fmt)
    dq, dk = dequantize_qk(z)
    ref_q = naive_block_sparse_attention(dq, dk, v.float(), sel_ref, kv)
    precision = "int8" if fmt == "int8" else "fp8"
    out = attention_v2(q, k, v, None if dense else sel, kv, precision=precision, config=SMALL)
    assert torch.isfinite(out).all()
    if fmt == "int8":
        assert_rel_err(out, ref_q, 1e-3, seed=gen)
    else:
        assert_close(out, ref_q, atol=2e-5, rtol=1e-4, seed=gen)
    exact = naive_block_sparse_attention(q, k, v, sel_ref, kv)
    # random unit-normal q/k: the hard case for relative error; int8 is ~4x closer than e4m3
    assert_rel_err(out, exact, 0.06 if fmt == "e4m3" else 0.02, seed=gen)


def test_fp8_pv_variant_error_is_bounded(gen):
    q, k, v, kv = _inputs(gen)
    sel = _selection(gen, 2, 2, 150, 32, kv)
    out = attention_v2(q, k, v, sel, kv, precision="fp8", pv_fp8=True, config=SMALL)
    assert torch.isfinite(out).all()
    assert_rel_err(out, naive_block_sparse_attention(q, k, v, sel, kv), 0.08, seed=gen)


def test_variant_names():
    assert variant_config("v1") is None and variant_config("") is None
    assert variant_config("v2-persistent") == BF16_VARIANTS["v2-persistent"]
    with pytest.raises(ValueError, match="v2-tma"):
        variant_config("nope")


# --- refusals and the config key -------------------------------------------------------------------------------

@pytest.mark.skipif(HAS_CUDA, reason="the CPU refusal")
def test_fp8_is_refused_on_the_cpu_with_one_line(gen):
    from xattn_video.kernels.dense import dense_attention

    q, k, v = make_qkv(gen, 1, 64, 2, 64)
    with pytest.raises(XAttentionInputError, match="^precision 'int8' needs a CUDA GPU with INT8 tensor cores"):
        xattention(q, k, v, threshold=0.9, block_size=32, stride=4, precision="int8")
    calls = [
        lambda: xattention(q, k, v, threshold=0.9, block_size=32, stride=4, precision="fp8"),
        lambda: xattention(q, k, v, threshold=1.0, precision="fp8"),
        lambda: block_sparse_attention(q, k, v, _selection(gen, 1, 2, 64, 32, torch.tensor([64])), precision="fp8"),
        lambda: dense_attention(q, k, v, precision="fp8"),
    ]
    for call in calls:
        with pytest.raises(XAttentionInputError) as exc:
            call()
        msg = str(exc.value)
        assert "\n" not in msg and "fp8" in msg and "8.9" in msg and "cpu" in msg


def test_unknown_precision_is_refused(gen):
    q, k, v = make_qkv(gen, 1, 64, 2, 64)
    with pytest.raises(XAttentionInputError, match="precision must be one of bf16, fp8, int8, got 'fp16'"):
        xattention(q, k, v, precision="fp16")


def test_old_gpu_is_refused(monkeypatch):
    from xattn_video.kernels import backend

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100")
    why = backend.fp8_refusal(torch.device("cuda", 0))
    assert why == "precision 'fp8' needs a GPU with FP8 tensor cores (compute capability >= 8.9); NVIDIA A100 has 8.0"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert backend.fp8_refusal(torch.device("cuda", 0)) is None
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert backend.precision_refusal("int8", torch.device("cuda", 0)).endswith("NVIDIA A100 has 7.5")


def test_precision_config_key():
    from xattn_video.config import PRECISIONS, ConfigError, load_config
    from xattn_video.kernels.backend import PRECISIONS as KERNEL_PRECISIONS

    assert PRECISIONS == KERNEL_PRECISIONS
    assert load_config(overrides=["model.path=tiny"]).xattn.precision == "bf16"
    assert load_config(overrides=["model.path=tiny", "xattn.precision=fp8"]).xattn.precision == "fp8"
    with pytest.raises(ConfigError) as exc:
        load_config(overrides=["model.path=tiny", "xattn.precision=fp16"])
    assert str(exc.value) == "config key 'xattn.precision' must be one of bf16, fp8, int8, got 'fp16'"
    with pytest.raises(ConfigError, match="'xattn.precision' fp8 runs on the triton backend"):
        load_config(overrides=["model.path=tiny", "xattn.precision=fp8", "xattn.backend=torch"])


@pytest.mark.skipif(HAS_CUDA, reason="the CPU refusal")
def test_fp8_config_is_refused_when_installing_on_a_cpu_model():
    from xattn_video.config import ConfigError
    from xattn_video.pipelines.family import apply_xattention
    from xattn_video.pipelines.tiny import build_tiny_wan_pipeline

    pipe = build_tiny_wan_pipeline()
    with pytest.raises(ConfigError) as exc:
        apply_xattention(pipe, {"precision": "fp8"})
    assert str(exc.value).startswith("config key 'xattn.precision': precision 'fp8' needs a CUDA GPU")
    assert "\n" not in str(exc.value)


@pytest.mark.skipif(HAS_CUDA, reason="the CPU refusal")
@pytest.mark.parametrize("precision, extra", [("fp8", []), ("int8", ["--gpus", "2", "--device", "cpu"])])
def test_quantized_precision_on_a_cpu_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch, precision,
                                                                        extra):
    """`xvid generate` with xattn.precision fp8/int8 on the CPU: one line, exit 2, no model loaded and no rank
    started, nothing written; the single process and the multi-rank launcher (one precision each: the operator
    refuses both alike, test_fp8_is_refused_on_the_cpu_with_one_line)."""
    from xattn_video.cli import main

    monkeypatch.setattr("xattn_video.generate.load_pipeline", lambda *a, **k: pytest.fail("model loaded"))
    monkeypatch.setattr("xattn_video.launch.launch", lambda *a, **k: pytest.fail("ranks started"))
    rc = main(["generate", "--model", "mini", "--prompt", "x", "--set", f"xattn.precision={precision}",
               "--out", str(tmp_path / "v.mp4"), *extra])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith(f"xvid generate: error: config key 'xattn.precision': precision '{precision}' "
                          "needs a CUDA GPU") and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


def test_fp8_sparse_with_a_tile_of_padding_only(gen):
    """Kernel tiles smaller than the selection block: the last kept block can hold a tile of padding only, whose
    FP8 scale is 0 (it must not turn the masked scores into NaN)."""
    q, k, v, kv = _inputs(gen, S=150, kv=(150, 70))  # block 64: keys 64..127 of batch 1 hold tile 96..127 of padding
    sel = _selection(gen, 2, 2, 150, 64, kv, density=1.0)
    cfg = V2Config(block_m=32, block_n=32, num_warps=4, num_stages=1)
    z = quantize_reference(q, k, None, kv, block_m=32, block_n=32)
    dq, dk = dequantize_qk(z)
    out = attention_v2(q, k, v, sel, kv, precision="fp8", config=cfg)
    assert torch.isfinite(out).all()
    assert_close(out, naive_block_sparse_attention(dq, dk, v.float(), sel, kv), atol=2e-5, rtol=1e-4, seed=gen)
    out = attention_v2(q, k, v, sel, kv, precision="fp8", pv_fp8=True, config=cfg)
    assert torch.isfinite(out).all()
    assert_rel_err(out, naive_block_sparse_attention(q, k, v, sel, kv), 0.08, seed=gen)


@pytest.mark.parametrize("precision,pv_fp8", [("bf16", False), ("int8", False), ("int8", True)])
def test_fast_exp_structure_in_the_interpreter(gen, precision, pv_fp8):
    """fast_exp (16-bit exp2 pairs, inline PTX on the GPU) is emulated in the interpreter with the same input
    rounding: the kernel's bookkeeping (row sums, the 448 scale of FP8 P) must hold; the error stays small."""
    q, k, v, kv = _inputs(gen)
    sel = _selection(gen, 2, 2, 150, 32, kv)
    exact = naive_block_sparse_attention(q, k, v, sel, kv)
    ref = attention_v2(q, k, v, sel, kv, precision=precision, pv_fp8=pv_fp8, config=SMALL)
    fast = attention_v2(q, k, v, sel, kv, precision=precision, pv_fp8=pv_fp8,
                        config=V2Config(block_m=32, block_n=32, num_warps=4, num_stages=1, fast_exp=True))
    assert torch.isfinite(fast).all()
    assert_rel_err(fast, ref, 0.02 if pv_fp8 else 0.01, seed=gen)
    assert rel_err_of(fast, exact) < rel_err_of(ref, exact) + 0.01


def rel_err_of(x, ref):
    return float((x.double() - ref.double()).norm() / ref.double().norm())


def test_8bit_custom_op_matches_and_compiles_without_graph_breaks(gen):
    from xattn_video.kernels.triton_attention_v2 import attention_8bit

    q, k, v, kv = _inputs(gen, S=128, kv=(128, 97))
    sel = _selection(gen, 2, 2, 128, 64, kv)
    for selection in (sel, None):
        # the default launch shape on both sides: on a GPU it follows the block size (64 here, 128 for dense calls)
        direct = attention_v2(q, k, v, selection, kv, precision="int8")
        compiled = torch.compile(lambda q, k, v: attention_8bit(q, k, v, selection, kv, "int8"), fullgraph=True,
                                 backend="eager")
        assert_close(compiled(q, k, v), direct, atol=0, rtol=0, seed=gen)


def test_gpu_test_covers_every_bf16_variant():
    import re
    from pathlib import Path

    source = (Path(__file__).parent / "test_kernels_gpu.py").read_text()
    listed = re.search(r'parametrize\("variant", \[(.*?)\]\)', source, re.S).group(1)
    assert sorted(re.findall(r'"([^"]+)"', listed)) == sorted(BF16_VARIANTS)


def test_dense_stages_fit_hopper_shared_memory():
    # the v2-s4 variant at D 128 asked an H200 (232,448 bytes per block) for 294,912 bytes on its dense path
    from xattn_video.kernels.triton_attention_v2 import BF16_VARIANTS, dense_stages_that_fit

    h200 = 232448
    s4 = BF16_VARIANTS["v2-s4"]
    assert 4 * 128 * 128 * 4 + 128 * 128 * 2 == 294912  # the bytes Triton reported for 4 stages
    assert dense_stages_that_fit(s4, 128, 2, 2, h200) == 3
    assert dense_stages_that_fit(s4, 64, 2, 2, h200) == 4  # fits as asked: unchanged
    assert dense_stages_that_fit(s4, 128, 1, 2, h200) == 4  # 8-bit q/k tiles are half the size
    assert dense_stages_that_fit(BF16_VARIANTS["v2"], 128, 2, 2, h200) == BF16_VARIANTS["v2"].num_stages
    assert dense_stages_that_fit(s4, 128, 2, 2, 1000) == 1  # never below one stage
