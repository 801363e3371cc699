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
