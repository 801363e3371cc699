"""The torch reference backend and the selection against literal transcriptions of the spec."""

import pytest
import torch

from helpers import TORCH_F32_TOL, assert_close, assert_rel_err, grid_scores, make_qkv
from spec_reference import spec_attention, spec_scores, spec_select
from xattn_video.kernels import BlockSelection, block_sparse_attention, estimate_block_scores, select_blocks
from xattn_video.kernels.naive import naive_block_sparse_attention
from xattn_video.kernels.torch_attention import sdpa_block_sparse_attention



@pytest.mark.parametrize(
    "Sq,Sk,stride,block_size,kv_len",
    [
        (300, 300, 8, 32, [300, 251]),  # lengths not multiples of the block or the stride
        (256, 256, 8, 128, [256, 256]),
        (130, 203, 4, 64, [203, 77]),  # cross lengths, kv_len inside the last key group
        (97, 97, 16, 64, [97, 90]),
    ],
)
def test_scores_match_spec(gen, Sq, Sk, stride, block_size, kv_len):
    q, k, _ = make_qkv(gen, 2, Sq, 2, 64, Sk=Sk)
    got = estimate_block_scores(q, k, stride=stride, block_size=block_size, kv_len=kv_len, backend="torch")
    ref = spec_scores(q, k, kv_len, stride, block_size)
    assert got.dtype == torch.float32 and got.shape == ref.shape
    assert_close(got.double(), ref, atol=2e-6, rtol=1e-5, seed=gen)


def test_scores_rows_are_normalized_and_padding_blocks_zero(gen):
    q, k, _ = make_qkv(gen, 2, 200, 3, 64, Sk=200)
    scores = estimate_block_scores(q, k, stride=8, block_size=32, kv_len=[200, 70], backend="torch")
    assert_close(scores.sum(-1), torch.ones(2, 3, 7), **TORCH_F32_TOL, seed=gen)
    assert torch.all(scores[1, :, :, 3:] == 0)  # key blocks starting at ≥ 70 are padding for batch 1
    assert torch.all(scores[1, :, :, :3] > 0)



@pytest.mark.parametrize(
    "tau,kv_len,text_start,keep_diagonal,max_density",
    [
        (0.9, [320, 320], None, True, None),
        (0.5, [320, 200], None, False, None),
        ([0.3, 0.95, 1.0], [320, 131], None, True, None),  # per-head τ, one head dense
        (0.7, [320, 290], 250, True, None),  # text keys and text queries forced
        (0.99, [320, 320], None, False, 0.3),  # cap on threshold-selected blocks
        (0.8, [320, 100], 150, True, 0.5),  # text_start past kv_len in batch 1: no text keys there
    ],
)
def test_selection_matches_spec(gen, tau, kv_len, text_start, keep_diagonal, max_density):
    B, H, bs, q_len = 2, 3, 32, 300
    nq, nk = 10, 10
    scores = grid_scores(gen, B, H, nq, nk)
    # re-normalize rows over each batch's valid blocks, as the estimator does
    for b in range(B):
        n_valid = -(-kv_len[b] // bs)
        scores[b, :, :, n_valid:] = 0
        scores[b] = scores[b] / scores[b].sum(-1, keepdim=True)
    taus = tau if isinstance(tau, list) else [tau] * H
    sel = select_blocks(scores, tau, block_size=bs, q_len=q_len, kv_len=kv_len, keep_diagonal=keep_diagonal,
                        text_start=text_start, max_density=max_density)
    ref = spec_select(scores, taus, bs, q_len, kv_len, keep_diagonal, text_start, max_density)
    assert torch.equal(sel.mask, ref), f"seed {gen.initial_seed()}"
    assert torch.equal(sel.counts, ref.sum(-1).int())
    # kept blocks first in ascending order, then the dropped ones in ascending order
    for b, h, i in [(0, 0, 0), (1, H - 1, nq - 1), (1, 1, 4)]:
        kept = torch.nonzero(ref[b, h, i]).flatten().tolist()
        dropped = torch.nonzero(~ref[b, h, i]).flatten().tolist()
        assert sel.indices[b, h, i].tolist() == kept + dropped
    assert sel.indices.dtype == torch.int32 and sel.counts.dtype == torch.int32


def test_selection_ties_keep_lower_block_index():
    scores = torch.full((1, 1, 1, 4), 0.25)
    sel = select_blocks(scores, 0.5, block_size=16, q_len=16, kv_len=64, keep_diagonal=False)
    assert sel.mask[0, 0, 0].tolist() == [True, True, False, False]


def test_density(gen):
    scores = grid_scores(gen, 2, 2, 4, 4)
    sel = select_blocks(scores, 0.6, block_size=16, q_len=64, kv_len=[64, 20], keep_diagonal=False)
    valid = torch.tensor([4, 2])
    expected = sel.counts.sum() / (2 * 4 * valid.sum())  # heads × query blocks × valid key blocks
    assert_close(sel.density(), expected.float(), **TORCH_F32_TOL, seed=gen)
    per_head = sel.counts.sum(dim=(0, 2)).float() / (4 * valid.sum())
    assert_close(sel.density_per_head(), per_head, **TORCH_F32_TOL, seed=gen)


@pytest.mark.parametrize("Sq,Sk,block_size,kv_len", [(300, 300, 32, [300, 213]), (100, 257, 64, [257, 1])])
def test_sparse_attention_matches_spec(gen, Sq, Sk, block_size, kv_len):
    q, k, v = make_qkv(gen, 2, Sq, 2, 64, Sk=Sk)
    nq, nk = -(-Sq // block_size), -(-Sk // block_size)
    mask = torch.rand(2, 2, nq, nk, generator=gen) < 0.5
    mask[0, 0, 0] = False  # a row block with no kept key: zeros, not NaN
    sel = BlockSelection.from_mask(mask, block_size=block_size, q_len=Sq, kv_len=torch.tensor(kv_len, dtype=torch.int32))
    out = block_sparse_attention(q, k, v, sel, backend="torch")
    ref = spec_attention(q, k, v, mask, block_size, kv_len)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert torch.all(out[0, :block_size, 0] == 0)
    assert_close(out.double(), ref, atol=1e-5, rtol=1e-5, seed=gen)
    assert_rel_err(out, ref, 1e-6, seed=gen)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_torch_backend_attention_matches_the_naive_reference(gen, dtype, tol):
    """The torch backend runs SDPA with the block mask (torch_attention.py); naive.py is the readable reference.
    Random blocks, padding, odd lengths, B = 2, and non-finite keys/values in a dropped block (must not leak)."""
    Sq, Sk, bs, kv_len = 300, 257, 64, [257, 100]
    q, k, v = (x.to(dtype) for x in make_qkv(gen, 2, Sq, 3, 64, Sk=Sk))
    mask = torch.rand(2, 3, 5, 5, generator=gen) < 0.5
    mask[0, 1, 2] = False  # a query block keeping no key: zeros
    mask[0, 0, :, 3] = False  # key block 3 of (b 0, h 0) dropped everywhere: its inf/NaN must not matter
    k[0, 3 * bs + 5, 0, 7], v[0, 3 * bs + 9, 0, 1] = float("inf"), float("nan")
    k[1, 100:], v[1, 100:] = float("nan"), float("inf")  # padding of batch 1
    kv = torch.tensor(kv_len, dtype=torch.int32)
    sel = BlockSelection.from_mask(mask, block_size=bs, q_len=Sq, kv_len=kv)
    out = sdpa_block_sparse_attention(q, k, v, sel, kv)
    ref = naive_block_sparse_attention(q, k, v, sel, kv)
    assert out.shape == ref.shape and out.dtype == dtype
    assert torch.isfinite(out).all(), f"a dropped block or padding leaked a non-finite value (seed {gen.initial_seed()})"
    assert torch.all(out[0, 2 * bs:3 * bs, 1] == 0)
    assert_close(out.float(), ref.float(), atol=tol, rtol=tol, seed=gen)
    # and a kept non-finite value reaches exactly the rows that keep its block, as in the reference
    v[0, 0, 2, 0] = float("nan")
    out, ref = sdpa_block_sparse_attention(q, k, v, sel, kv), naive_block_sparse_attention(q, k, v, sel, kv)
    assert torch.equal(torch.isnan(out).any(-1), torch.isnan(ref).any(-1)), f"seed {gen.initial_seed()}"
