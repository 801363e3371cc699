"""The Hopper kernel (``kernels/gluon_attention.py``): on a Hopper GPU with triton 3.6 against the reference; its
dispatch and fallbacks everywhere (the CPU runs the fallback paths through the interpreter or SDPA)."""

import pytest
import torch

from helpers import assert_close, assert_rel_err, capture_and_replay, make_qkv, rel_err
from xattn_video.kernels import BlockSelection, block_sparse_attention, xattention
from xattn_video.kernels import gluon_attention as ga
from xattn_video.kernels.dense import dense_attention
from xattn_video.kernels.inputs import XAttentionInputError
from xattn_video.kernels.naive import naive_block_sparse_attention


def _hopper_gluon() -> bool:
    return torch.cuda.is_available() and ga.gluon_device(torch.cuda.current_device())


requires_hopper_gluon = pytest.mark.skipif(not _hopper_gluon(),
                                           reason="needs a Hopper GPU (sm_90) and triton 3.6 with Gluon")


# --- everywhere -------------------------------------------------------------------------------------------------

def test_availability_follows_the_triton_version():
    """The kernel is written against triton 3.6's Gluon API; any other version must report unavailable (and the
    module must import, as it just did)."""
    try:
        import triton
    except ImportError:
        assert not ga.gluon_available()
        return
    assert ga.gluon_available() == triton.__version__.startswith("3.6.")


def test_fp8_prototype_imports_with_the_same_gate():
    from xattn_video.kernels import gluon_attention_fp8

    assert gluon_attention_fp8.gluon_available() == ga.gluon_available()


def test_fp8_prototype_checks_qk_format_before_anything_runs():
    """``qk_format`` ("e4m3" or "int8", as ``quantize_triton``) is checked on the host before the Gluon gate and any
    launch, so a typo fails the same way on every machine."""
    from xattn_video.kernels import gluon_attention_fp8 as g8
    from xattn_video.kernels.triton_quant import QK_FORMATS

    assert g8.QK_FORMATS == QK_FORMATS == ("e4m3", "int8")
    q = torch.zeros(1, 200, 2, 64, dtype=torch.bfloat16)
    kv_len = torch.tensor([200], dtype=torch.int32)
    with pytest.raises(ValueError, match="qk_format"):
        g8.attention_gluon_fp8(q, q, q, None, kv_len, pv_fp8=False, qk_format="int4")
    with pytest.raises(ValueError, match="qk_format"):
        g8.quantize_fp8(q, q, q, kv_len, qk_format="e5m2")


def test_gluon_takes_only_what_the_kernel_runs():
    q = torch.zeros(2, 300, 3, 128, dtype=torch.bfloat16)
    assert ga.gluon_takes(q, q, q, 128)
    assert ga.gluon_takes(q.half(), q.half(), q.half(), 128)
    assert not ga.gluon_takes(q, q, q, 64)  # block size
    assert not ga.gluon_takes(q.float(), q.float(), q.float(), 128)  # dtype
    assert not ga.gluon_takes(q, q.half(), q, 128)  # mixed dtypes
    wide = torch.zeros(2, 300, 3, 96, dtype=torch.bfloat16)
    assert not ga.gluon_takes(wide, wide, wide, 128)  # head_dim
    odd = torch.zeros(2, 300, 3, 136, dtype=torch.bfloat16)[..., :128]  # strides of 136: fine (16-byte multiple)
    assert ga.gluon_takes(odd, odd, odd, 128)
    skew = torch.zeros(2 * 300 * 3 * 128 + 1, dtype=torch.bfloat16)[1:].view(2, 300, 3, 128)  # 2-byte offset
    assert not ga.gluon_takes(skew, q, q, 128)
    assert not ga.gluon_takes(q, q[:, :, :2], q[:, :, :2], 128)  # heads differ
    assert not ga.gluon_takes(q, q, q[:, :200], 128)  # k/v lengths differ


def test_sparse_kernel_names_what_the_operator_runs(monkeypatch):
    from xattn_video.kernels.api import sparse_kernel

    assert sparse_kernel("cpu") == "torch"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    pytest.importorskip("triton")
    assert sparse_kernel("cpu", "triton") == "triton"  # the interpreter
    assert sparse_kernel("cpu", "triton", "int8") == "triton-int8"
    monkeypatch.setenv("XATTN_ATTN_VARIANT", "v2-persistent")
    assert sparse_kernel("cpu", "triton") == "triton-v2-persistent"
    if _hopper_gluon():
        monkeypatch.delenv("XATTN_ATTN_VARIANT")
        assert sparse_kernel("cuda") == "gluon"


def test_host_lengths_become_the_kernels_kv_len():
    from xattn_video.kernels.inputs import normalize_kv_len  # what the dense ops pass the kernels

    cpu = torch.device("cpu")
    assert torch.equal(normalize_kv_len([7, 7], 2, 7, cpu), torch.tensor([7, 7], dtype=torch.int32))
    assert torch.equal(normalize_kv_len([7, 5], 2, 7, cpu), torch.tensor([7, 5], dtype=torch.int32))


# The Triton interpreter cannot be switched on in a process that already launched compiled kernels (GPU runs).
cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter test: CPU-only machines")


@cpu_only
def test_hopper_ops_fall_back_where_the_kernel_cannot_run(gen, monkeypatch):
    """Inputs the kernel does not take (float32 here) go to the Triton kernel (sparse; interpreted) and to SDPA
    (dense), with the same results as the reference: what a Hopper GPU does with, e.g., a misaligned view."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    pytest.importorskip("triton")
    q, k, v = make_qkv(gen, 2, 300, 2, 64)
    kv = torch.tensor([300, 211], dtype=torch.int32)
    mask = torch.rand(2, 2, 3, 3, generator=gen) < 0.5
    mask[0, 0, 1] = False
    sel = BlockSelection.from_mask(mask, block_size=128, q_len=300, kv_len=kv)
    out = ga.block_sparse_attention_hopper(q, k, v, sel, kv)
    assert_close(out, naive_block_sparse_attention(q, k, v, sel, kv), atol=1e-5, rtol=1e-4, seed=gen)
    dense = ga.dense_attention_hopper(q, k, v, [300, 211])
    full = BlockSelection.from_mask(torch.ones_like(mask), block_size=128, q_len=300, kv_len=kv)
    assert_close(dense, naive_block_sparse_attention(q, k, v, full, kv), atol=1e-5, rtol=1e-4, seed=gen)


@cpu_only
def test_forcing_the_hopper_kernel_elsewhere_is_refused(gen, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("XATTN_ATTN_VARIANT", "gluon")
    pytest.importorskip("triton")
    if _hopper_gluon():
        pytest.skip("this machine runs the kernel")
    q, k, v = make_qkv(gen, 1, 256, 2, 64)
    with pytest.raises(XAttentionInputError, match="XATTN_ATTN_VARIANT=gluon needs a Hopper GPU"):
        xattention(q, k, v, threshold=0.9, backend="triton")


def test_takes_8bit_is_gluon_takes_in_bf16_only():
    from xattn_video.kernels import gluon_attention_fp8 as g8

    q = torch.zeros(2, 300, 3, 128, dtype=torch.bfloat16)
    assert g8.takes_8bit(q, q, q, 128)
    assert not g8.takes_8bit(q.half(), q.half(), q.half(), 128)  # fp16: the Triton 8-bit kernel
    assert not g8.takes_8bit(q, q, q, 64)
    assert not g8.takes_8bit(q, q, q[:, :200], 128)
    assert g8.QK_FORMAT_OF_PRECISION == {"fp8": "e4m3", "int8": "int8"}


def test_8bit_precisions_run_the_hopper_kernel_where_gluon_is_chosen(gen, monkeypatch):
    """precision fp8/int8 go through the custom op ``attention_8bit_hopper`` wherever ``attention_kernel`` says
    "gluon", with the right q·kᵀ format, bf16 P·V, the selection's lists (sparse) or kv_len (dense);
    ``sparse_kernel`` names it. The launch is replaced by a recorder (the kernel itself is tested on the GPU
    below)."""
    from xattn_video.kernels import api
    from xattn_video.kernels import gluon_attention_fp8 as g8
    from xattn_video.kernels import triton_attention_v2 as v2

    calls = []

    def fake_launch(q, k, v, out, args, kv_len, cfg, pv_fp8, quantized, qk_format):
        calls.append((args[0], args[3], args[4], pv_fp8, quantized, qk_format, cfg))
        out.fill_(7.0)

    monkeypatch.setattr(v2, "attention_kernel", lambda device: "gluon")
    monkeypatch.setattr(g8, "takes_8bit", lambda q, k, v, block_size: True)
    monkeypatch.setattr(g8, "_launch", fake_launch)
    q, k, v = make_qkv(gen, 2, 300, 2, 64, dtype=torch.bfloat16)
    kv = torch.tensor([300, 211], dtype=torch.int32)
    sel = BlockSelection.from_mask(torch.rand(2, 2, 3, 3, generator=gen) < 0.5, block_size=128, q_len=300, kv_len=kv)
    for precision, fmt in (("int8", "int8"), ("fp8", "e4m3")):
        calls.clear()
        assert bool((v2.attention_8bit(q, k, v, sel, kv, precision) == 7).all())
        assert bool((v2.attention_8bit(q, k, v, None, kv, precision) == 7).all())
        (d0, nq0, nk0, pv0, qz0, f0, cfg0), (d1, nq1, nk1, pv1, qz1, f1, _) = calls
        assert (d0, nq0, nk0, d1, nq1, nk1) == (False, 3, 3, True, 0, 0)
        assert (pv0, pv1, qz0, qz1, f0, f1) == (False, False, None, None, fmt, fmt)
        assert cfg0 == g8.GluonFP8Config()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    pytest.importorskip("triton")
    monkeypatch.setattr(api, "attention_kernel", lambda device: "gluon")
    assert api.sparse_kernel("cpu", "triton", "int8") == "gluon-int8"
    assert api.sparse_kernel("cpu", "triton", "fp8") == "gluon-fp8"
    assert api.sparse_kernel("cpu", "triton") == "gluon"


@cpu_only
def test_hopper_8bit_op_falls_back_to_the_triton_8bit_kernel(gen, monkeypatch):
    """Inputs the 8-bit Gluon kernel does not take (fp16 here) run ``triton_attention_v2``'s 8-bit kernel
    (interpreted) inside the Hopper op: bitwise its result, sparse and dense."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    pytest.importorskip("triton")
    from xattn_video.kernels import gluon_attention_fp8 as g8
    from xattn_video.kernels import triton_attention_v2 as v2

    asked = []
    real_takes = g8.takes_8bit
    monkeypatch.setattr(g8, "takes_8bit", lambda *a: asked.append(1) or real_takes(*a))
    monkeypatch.setattr(v2, "attention_kernel", lambda device: "gluon")  # the Hopper op, as on an H100
    q, k, v = make_qkv(gen, 2, 300, 1, 64, dtype=torch.float16)  # one head: a routing test, interpreted kernels
    kv = torch.tensor([300, 211], dtype=torch.int32)
    sel = BlockSelection.from_mask(torch.rand(2, 1, 3, 3, generator=gen) < 0.5, block_size=128, q_len=300, kv_len=kv)
    for precision in ("int8", "fp8"):
        out = v2.attention_8bit(q, k, v, sel, kv, precision)
        assert torch.equal(out, v2.attention_v2(q, k, v, sel, kv, precision=precision)), f"seed {gen.initial_seed()}"
        dense = v2.attention_8bit(q, k, v, None, kv, precision)
        assert torch.equal(dense, v2.attention_v2(q, k, v, None, kv, precision=precision)), \
            f"seed {gen.initial_seed()}"
    assert len(asked) == 4, "the Hopper op did not run"


# --- on a Hopper GPU ----------------------------------------------------------------------------------------------

def _case(gen, S, D, dtype=torch.bfloat16, B=2, H=3, density=0.35, poison=True):
    q, k, v = make_qkv(gen, B, S, H, D, dtype=dtype, device="cuda")
    kv = torch.tensor([S, S - 301 if S > 602 else S - S // 3][:B], dtype=torch.int32, device="cuda")
    if poison:  # padding must never matter
        k[-1, int(kv[-1]):] = float("inf")
        v[-1, int(kv[-1]):] = float("nan")
    n = -(-S // 128)
    mask = torch.rand(B, H, n, n, generator=gen).cuda() < density
    if n >= 3:
        mask[0, 1, 2] = False  # a query block without keys: zeros
        mask[-1, 0, 1] = False
        mask[-1, 0, 1, 0] = True  # one kept block
    return q, k, v, kv, BlockSelection.from_mask(mask, block_size=128, q_len=S, kv_len=kv)


CONFIGS = [ga.GluonAttentionConfig(), ga.GluonAttentionConfig(pingpong=False),
           ga.GluonAttentionConfig(num_stages=3), ga.GluonAttentionConfig(num_stages=3, pingpong=False)]


@requires_hopper_gluon
@pytest.mark.parametrize("S", [1000, 2309])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sparse_and_dense_match_reference(gen, S, D, dtype):
    q, k, v, kv, sel = _case(gen, S, D, dtype)
    ref = block_sparse_attention(q.float(), k.float(), v.float(), sel, backend="torch")
    full = BlockSelection.from_mask(torch.ones_like(sel.mask), block_size=128, q_len=S, kv_len=kv)
    ref_dense = block_sparse_attention(q.float(), k.float(), v.float(), full, backend="torch")
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    for cfg in CONFIGS:
        out = ga.attention_gluon(q, k, v, sel, kv, config=cfg)
        assert out.dtype == dtype and torch.isfinite(out).all(), f"seed {gen.initial_seed()}: {cfg}"
        assert (out[0, 256:384, 1] == 0).all(), f"seed {gen.initial_seed()}: {cfg}"
        assert_rel_err(out, ref, tol, seed=gen, what=f"sparse {cfg}")
        assert_rel_err(ga.attention_gluon(q, k, v, None, kv, config=cfg), ref_dense, tol, seed=gen,
                       what=f"dense {cfg}")


@requires_hopper_gluon
def test_views_batch_one_and_short_sequences(gen):
    """bshd views of bhsd data, B=1, a sequence shorter than one query half (TMA clips the rows past S)."""
    for S, B in ((2999, 1), (40, 2), (129, 2)):
        q, k, v, kv, sel = _case(gen, S, 128, B=B, poison=False)
        q, k, v = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v))
        ref = block_sparse_attention(q.float(), k.float(), v.float(), sel, backend="torch")
        assert_rel_err(ga.attention_gluon(q, k, v, sel, kv), ref, 1e-2, seed=gen, what=f"S={S} B={B}")


@requires_hopper_gluon
def test_operator_runs_the_hopper_kernel_and_matches_the_triton_kernel(gen, monkeypatch):
    q, k, v = make_qkv(gen, 2, 4100, 4, 128, dtype=torch.bfloat16, device="cuda")
    kw = dict(threshold=[0.8, 0.9, 0.95, 1.0], text_start=4000, kv_len=[4100, 4050])
    calls = []
    real = ga._launch
    monkeypatch.setattr(ga, "_launch", lambda *a, **k_: calls.append(1) or real(*a, **k_))
    out = xattention(q, k, v, **kw)
    assert calls, "the operator did not run the Hopper kernel"
    monkeypatch.setenv("XATTN_ATTN_VARIANT", "v1")
    triton_out = xattention(q, k, v, **kw)
    assert_rel_err(out, triton_out, 5e-3, seed=gen)
    ref = xattention(q.float(), k.float(), v.float(), backend="torch", **kw)
    assert_rel_err(out, ref, 2e-2, seed=gen)


@requires_hopper_gluon
def test_dense_attention_runs_the_hopper_kernel(gen, monkeypatch):
    q, k, v = make_qkv(gen, 2, 3000, 3, 128, dtype=torch.bfloat16, device="cuda")
    calls = []
    real = ga._launch
    monkeypatch.setattr(ga, "_launch", lambda *a, **k_: calls.append(1) or real(*a, **k_))
    for lens in ([3000, 3000], [3000, 2500]):
        out = dense_attention(q, k, v, lens)
        ref = torch.cat([torch.nn.functional.scaled_dot_product_attention(
            q[b:b + 1].float().transpose(1, 2), k[b:b + 1, :n].float().transpose(1, 2),
            v[b:b + 1, :n].float().transpose(1, 2)).transpose(1, 2) for b, n in enumerate(lens)])
        assert_rel_err(out, ref, 1e-2, seed=gen, what=str(lens))
    assert len(calls) == 2
    other = dense_attention(q, k, v, [3000, 3000], scale=0.5)  # another scale: SDPA
    assert len(calls) == 2 and other.shape == q.shape


@requires_hopper_gluon
def test_hopper_path_is_capturable_in_a_cuda_graph(gen):
    q, k, v = make_qkv(gen, 1, 3000, 4, 128, device="cuda", dtype=torch.bfloat16)
    kw = dict(threshold=[0.7, 0.8, 0.9, 0.95], stride=8, text_start=2900, kv_len=2950)
    eager, captured = capture_and_replay(lambda *x: xattention(*x, **kw), (q, k, v), gen)
    assert_rel_err(captured, xattention(q, k, v, **kw), 1e-3, seed=gen)
    assert rel_err(captured, eager) > 0.1
    eager, captured = capture_and_replay(lambda *x: dense_attention(*x, [2950]), (q, k, v), gen)
    assert_rel_err(captured, dense_attention(q, k, v, [2950]), 1e-3, seed=gen)


# --- the 8-bit version (gluon_attention_fp8): what precision fp8 / int8 run on Hopper -----------------------------

@requires_hopper_gluon
@pytest.mark.parametrize("S", [1000, 2309])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("fmt", ["e4m3", "int8"])
def test_8bit_kernel_matches_the_triton_8bit_kernel(gen, S, D, fmt):
    """Same quantized operands and arithmetic as ``triton_attention_v2`` (q·kᵀ in 8 bits, bf16 P·V): the two
    kernels agree to accumulation order (the probe measured 2e-5 to 2e-3), emptied rows are exactly 0, padding with
    inf/NaN never reaches the output; with FP8 P·V (one- and two-level) they agree with the Triton FP8 P·V kernel."""
    from xattn_video.kernels import gluon_attention_fp8 as g8
    from xattn_video.kernels.triton_attention_v2 import attention_v2

    q, k, v, kv, sel = _case(gen, S, D)
    precision = "fp8" if fmt == "e4m3" else "int8"
    for selection in (sel, None):
        what = f"{fmt} {'sparse' if selection is not None else 'dense'}"
        out = g8.attention_gluon_fp8(q, k, v, selection, kv, pv_fp8=False, qk_format=fmt)
        assert torch.isfinite(out).all(), f"seed {gen.initial_seed()}: {what}"
        assert_rel_err(out, attention_v2(q, k, v, selection, kv, precision=precision), 5e-3, seed=gen, what=what)
        for cfg in (g8.GluonFP8Config(), g8.GluonFP8Config(two_level=False)):
            out8 = g8.attention_gluon_fp8(q, k, v, selection, kv, pv_fp8=True, config=cfg, qk_format=fmt)
            ref8 = attention_v2(q, k, v, selection, kv, precision=precision, pv_fp8=True)
            assert_rel_err(out8, ref8, 1e-2, seed=gen, what=f"{what} pv_fp8 {cfg}")
    out = g8.attention_gluon_fp8(q, k, v, sel, kv, pv_fp8=False, qk_format=fmt)
    assert (out[0, 256:384, 1] == 0).all(), f"seed {gen.initial_seed()}"


@requires_hopper_gluon
@pytest.mark.parametrize("precision", ["fp8", "int8"])
def test_operator_8bit_runs_the_hopper_kernel(gen, monkeypatch, precision):
    from xattn_video.kernels import gluon_attention_fp8 as g8
    from xattn_video.kernels.api import sparse_kernel

    assert sparse_kernel("cuda", "auto", precision) == f"gluon-{precision}"
    q, k, v = make_qkv(gen, 2, 4100, 4, 128, dtype=torch.bfloat16, device="cuda")
    kw = dict(threshold=[0.8, 0.9, 0.95, 1.0], text_start=4000, kv_len=[4100, 4050], precision=precision)
    calls = []
    real = g8._launch
    monkeypatch.setattr(g8, "_launch", lambda *a, **k_: calls.append(1) or real(*a, **k_))
    out = xattention(q, k, v, **kw)
    dense = dense_attention(q, k, v, [4100, 4050], precision=precision)
    assert len(calls) == 2, "the operator did not run the 8-bit Hopper kernel (sparse and dense)"
    monkeypatch.setenv("XATTN_ATTN_VARIANT", "v1")
    assert_rel_err(out, xattention(q, k, v, **kw), 5e-3, seed=gen, what="vs the Triton 8-bit kernel")
    assert_rel_err(dense, dense_attention(q, k, v, [4100, 4050], precision=precision), 5e-3, seed=gen, what="dense")
    monkeypatch.delenv("XATTN_ATTN_VARIANT")
    eager, captured = capture_and_replay(lambda *x: xattention(*x, **kw), (q, k, v), gen)
    assert_rel_err(captured, xattention(q, k, v, **kw), 1e-3, seed=gen, what="CUDA graph")
