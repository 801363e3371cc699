"""Triton kernels against the torch reference (interpreted on CPU, fp16/fp32; natively on a GPU)."""

import pytest
import torch

from helpers import TORCH_F32_TOL, assert_close, assert_rel_err, grid_scores, make_qkv
from xattn_video.kernels import BlockSelection, block_sparse_attention, estimate_block_scores, select_blocks, xattention



@pytest.mark.parametrize(
    "dtype,Sq,Sk,stride,block_size,kv_len,D",
    [
        (torch.float32, 300, 300, 8, 32, [300, 251], 64),
        (torch.float16, 200, 173, 4, 32, [173, 60], 64),
        (torch.float32, 150, 150, 16, 64, [150, 141], 128),
        (torch.float16, 70, 70, 8, 16, [70, 9], 64),
    ],
)
def test_triton_scores_match_reference(gen, triton_device, dtype, Sq, Sk, stride, block_size, kv_len, D):
    q, k, _ = make_qkv(gen, 2, Sq, 2, D, Sk=Sk, dtype=dtype, device=triton_device)
    got = estimate_block_scores(q, k, stride=stride, block_size=block_size, kv_len=kv_len, backend="triton")
    ref = estimate_block_scores(q.cpu().float(), k.cpu().float(), stride=stride, block_size=block_size,
                                kv_len=kv_len, backend="torch")
    assert got.dtype == torch.float32
    assert_close(got.cpu(), ref, atol=1e-4, rtol=1e-3, seed=gen)


@pytest.mark.parametrize(
    "dtype,Sq,Sk,block_size,kv_len,layout",
    [
        (torch.float32, 300, 300, 32, [300, 233], "bshd"),
        (torch.float16, 190, 260, 64, [260, 65], "bhsd"),
        (torch.float16, 100, 100, 16, [100, 37], "bshd"),
    ],
)
def test_triton_attention_matches_reference_on_same_selection(gen, triton_device, dtype, Sq, Sk, block_size,
                                                               kv_len, layout):
    q, k, v = make_qkv(gen, 2, Sq, 3, 64, Sk=Sk, dtype=dtype, device=triton_device)
    nq, nk = -(-Sq // block_size), -(-Sk // block_size)
    mask = torch.rand(2, 3, nq, nk, generator=gen) < 0.4
    mask[1, 2, 1] = False  # empty row: zeros
    sel = BlockSelection.from_mask(mask.to(triton_device), block_size=block_size, q_len=Sq,
                                   kv_len=torch.tensor(kv_len, dtype=torch.int32, device=triton_device))
    if layout == "bhsd":
        q, k, v = (x.transpose(1, 2).contiguous() for x in (q, k, v))
    got = block_sparse_attention(q, k, v, sel, layout=layout, backend="triton")
    sel_cpu = BlockSelection.from_mask(mask, block_size=block_size, q_len=Sq,
                                       kv_len=torch.tensor(kv_len, dtype=torch.int32))
    ref = block_sparse_attention(q.cpu().float(), k.cpu().float(), v.cpu().float(), sel_cpu, layout=layout,
                                 backend="torch")
    assert got.shape == q.shape and got.dtype == q.dtype
    assert torch.isfinite(got).all()
    tol = 1e-5 if dtype == torch.float32 else 3e-3
    assert_rel_err(got, ref, tol, seed=gen)
    empty_rows = got.transpose(1, 2) if layout == "bhsd" else got
    assert torch.all(empty_rows[1, block_size: 2 * block_size, 2] == 0)


def test_triton_output_is_fully_written(gen, triton_device):
    """Poison the output buffer: every element must be overwritten."""
    from xattn_video.kernels.triton_attention import block_sparse_attention_triton

    q, k, v = make_qkv(gen, 1, 100, 2, 64, Sk=100, dtype=torch.float32, device=triton_device)
    mask = torch.ones(1, 2, 4, 4, dtype=torch.bool, device=triton_device)
    kv = torch.tensor([100], dtype=torch.int32, device=triton_device)
    sel = BlockSelection.from_mask(mask, block_size=32, q_len=100, kv_len=kv)
    out = torch.full_like(q, float("nan"))
    block_sparse_attention_triton(q, k, v, sel, kv, out=out)
    assert torch.isfinite(out).all()


def test_triton_xattention_end_to_end_matches_torch(gen, triton_device):
    q, k, v = make_qkv(gen, 2, 260, 2, 64, Sk=260, dtype=torch.float32, device=triton_device)
    kw = dict(threshold=torch.tensor([0.6, 0.9]), stride=8, block_size=32, kv_len=[260, 201], text_start=230,
              return_selection=True)
    out_t, sel_t = xattention(q, k, v, backend="triton", **kw)
    out_r, sel_r = xattention(q.cpu(), k.cpu(), v.cpu(), backend="torch", **kw)
    # Scores agree to ~1e-7; a selection can differ only where a prefix sum sits on τ within that.
    assert (sel_t.mask.cpu() == sel_r.mask).float().mean().item() > 0.99
    ref_on_triton_selection = block_sparse_attention(q.cpu(), k.cpu(), v.cpu(), _to_cpu(sel_t), backend="torch")
    assert_rel_err(out_t, ref_on_triton_selection, 1e-5, seed=gen)
    assert_rel_err(out_r, ref_on_triton_selection, 0.05, seed=gen)  # same operator, near-identical selections


def _to_cpu(sel):
    return BlockSelection.from_mask(sel.mask.cpu(), block_size=sel.block_size, q_len=sel.q_len,
                                    kv_len=sel.kv_len.cpu())


def test_triton_non_contiguous_inputs(gen, triton_device):
    base = torch.randn(1, 2 * 120, 4, 64, generator=gen).to(triton_device)
    q = base[:, ::2, :2]  # strided along the sequence and the heads
    k = torch.randn(1, 120, 2, 64, generator=gen).to(triton_device)
    v = torch.randn(1, 2, 120, 64, generator=gen).to(triton_device).transpose(1, 2)  # bshd view of bhsd data
    assert not q.is_contiguous() and not v.is_contiguous()
    scores = estimate_block_scores(q, k, stride=8, block_size=32, backend="triton")
    scores_c = estimate_block_scores(q.contiguous(), k, stride=8, block_size=32, backend="triton")
    assert_close(scores, scores_c, **TORCH_F32_TOL, seed=gen, what="scores")
    sel = select_blocks(scores, 0.8, block_size=32, q_len=120)
    out = block_sparse_attention(q, k, v, sel, backend="triton")
    out_c = block_sparse_attention(q.contiguous(), k, v.contiguous(), sel, backend="triton")
    assert_close(out, out_c, **TORCH_F32_TOL, seed=gen, what="output")


@pytest.mark.parametrize("block_m,block_n", [(16, 16), (32, 16), (16, 32)])
def test_triton_attention_sub_tiles(gen, triton_device, block_m, block_n):
    """Query/key tiles smaller than the selection block (the launch shapes tuned for Hopper)."""
    from xattn_video.kernels.triton_attention import AttentionConfig, block_sparse_attention_triton

    q, k, v = make_qkv(gen, 1, 150, 2, 64, Sk=150, dtype=torch.float32, device=triton_device)
    mask = torch.rand(1, 2, 5, 5, generator=gen) < 0.5
    kv = torch.tensor([141], dtype=torch.int32)
    sel = BlockSelection.from_mask(mask.to(triton_device), block_size=32, q_len=150, kv_len=kv.to(triton_device))
    cfg = AttentionConfig(block_m=block_m, block_n=block_n, num_warps=4, num_stages=1)
    got = block_sparse_attention_triton(q, k, v, sel, sel.kv_len, config=cfg)
    ref = block_sparse_attention(q.cpu(), k.cpu(), v.cpu(), _to_cpu(sel), backend="torch")
    assert_rel_err(got, ref, 1e-5, seed=gen)


def test_triton_scores_split_over_heads(gen, triton_device, monkeypatch):
    """Large problems are scored in head chunks; the result must not depend on the split."""
    from xattn_video.kernels import triton_estimate

    q, k, _ = make_qkv(gen, 2, 100, 3, 64, Sk=100, dtype=torch.float32, device=triton_device)
    whole = estimate_block_scores(q, k, stride=8, block_size=32, kv_len=[100, 61], backend="triton")
    monkeypatch.setattr(triton_estimate, "SCRATCH_BYTES", 1)
    split = estimate_block_scores(q, k, stride=8, block_size=32, kv_len=[100, 61], backend="triton")
    assert_close(split, whole, **TORCH_F32_TOL, seed=gen)


@pytest.mark.parametrize("stride,block_k,block_n,key_splits", [(8, 32, 16, 2), (4, 64, 32, 3), (2, 64, 64, 1)])
def test_triton_scores_launch_shapes(gen, triton_device, stride, block_k, block_n, key_splits):
    """K chunks and key splits (the launch shapes tuned for Hopper) compute the same scores."""
    from xattn_video.kernels.triton_estimate import EstimateConfig, estimate_block_scores_triton

    q, k, _ = make_qkv(gen, 2, 150, 2, 64, Sk=150, dtype=torch.float32, device=triton_device)
    kv = torch.tensor([150, 77], dtype=torch.int32, device=triton_device)
    cfg = EstimateConfig(block_m=32, block_n=block_n, num_warps=4, num_stages=1, out_blocks=16,
                         block_k=block_k, key_splits=key_splits)
    got = estimate_block_scores_triton(q, k, kv, stride=stride, block_size=32, config=cfg)
    ref = estimate_block_scores(q.cpu(), k.cpu(), stride=stride, block_size=32, kv_len=[150, 77], backend="torch")
    assert_close(got.cpu(), ref, atol=1e-5, rtol=1e-4, seed=gen)


@pytest.mark.parametrize(
    "tau,kv_len,text_start,keep_diagonal,max_density,nq,nk",
    [
        (0.9, [320, 320], None, True, None, 10, 10),
        ([0.3, 0.95, 1.0], [320, 131], None, True, None, 10, 10),
        (0.7, [320, 290], 250, True, None, 10, 10),
        (0.99, [320, 320], None, False, 0.35, 10, 10),
        (0.8, [320, 100], 150, True, 0.5, 10, 10),
        (0.6, [1100, 700], 100, True, None, 4, 35),  # a row longer than one power of two
    ],
)
def test_triton_selection_matches_torch(gen, triton_device, tau, kv_len, text_start, keep_diagonal, max_density,
                                        nq, nk):
    B, H, bs = 2, 3, 32
    scores = grid_scores(gen, B, H, nq, nk)
    scores[:, :, :, 3] = scores[:, :, :, 5]  # ties: the lower block index must win, as in the stable sort
    kw = dict(block_size=bs, q_len=nq * bs - 5, kv_len=kv_len, keep_diagonal=keep_diagonal, text_start=text_start,
              max_density=max_density)
    ref = select_blocks(scores, tau, backend="torch", **kw)
    got = select_blocks(scores.to(triton_device), tau, backend="triton", **kw)
    assert torch.equal(got.mask.cpu(), ref.mask), f"seed {gen.initial_seed()}"
    assert torch.equal(got.counts.cpu(), ref.counts)
    assert torch.equal(got.indices.cpu(), ref.indices)


def test_launch_falls_back_to_fewer_stages_once():
    from dataclasses import dataclass

    import triton

    from xattn_video.kernels.launch import launch_with_fallback

    @dataclass(frozen=True)
    class Cfg:
        num_stages: int

    tried = []

    def launch(cfg):
        tried.append(cfg.num_stages)
        if cfg.num_stages > 2:
            raise triton.runtime.errors.OutOfResources(300000, 232448, "shared memory")
        return cfg.num_stages

    cache = {}
    assert launch_with_fallback(cache, "key", Cfg(4), launch) == 2
    assert tried == [4, 3, 2]
    assert launch_with_fallback(cache, "key", Cfg(4), launch) == 2
    assert tried == [4, 3, 2, 2]  # remembered: no second search
    with pytest.raises(triton.runtime.errors.OutOfResources):
        launch_with_fallback({}, "other", Cfg(4), lambda cfg: launch(Cfg(cfg.num_stages + 5)))
