"""bf16 on the GPU (the interpreter's bf16 dot is wrong, so bf16 is only tested here)."""

import pytest
import torch

from helpers import assert_close, assert_rel_err, make_qkv, requires_cuda
from xattn_video.kernels import BlockSelection, block_sparse_attention, estimate_block_scores, xattention

pytestmark = requires_cuda



@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("stride", [8, 16])
def test_bf16_scores_match_reference(gen, D, stride):
    q, k, _ = make_qkv(gen, 2, 3001, 3, D, dtype=torch.bfloat16, device="cuda")
    kv = [3001, 2222]
    got = estimate_block_scores(q, k, stride=stride, kv_len=kv, backend="triton")
    ref = estimate_block_scores(q.float(), k.float(), stride=stride, kv_len=kv, backend="torch")
    assert_close(got, ref, atol=1e-4, rtol=0.0, seed=gen)


@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("layout", ["bshd", "bhsd"])
@pytest.mark.parametrize("use_tma", [False, True])
def test_bf16_attention_matches_reference(gen, D, layout, use_tma):
    from xattn_video.kernels.triton_attention import AttentionConfig, block_sparse_attention_triton

    S = 2999
    q, k, v = make_qkv(gen, 2, S, 3, D, dtype=torch.bfloat16, device="cuda")
    kv = torch.tensor([S, 2100], dtype=torch.int32, device="cuda")
    n = -(-S // 128)
    mask = torch.rand(2, 3, n, n, generator=gen).cuda() < 0.35
    sel = BlockSelection.from_mask(mask, block_size=128, q_len=S, kv_len=kv)
    if layout == "bhsd":
        q, k, v = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v))  # bshd views of bhsd data
    ref = block_sparse_attention(q.float(), k.float(), v.float(), sel, backend="torch")
    for cfg in (AttentionConfig(use_tma=use_tma), AttentionConfig(block_m=64, block_n=64, num_warps=4,
                                                                   use_tma=use_tma)):
        out = torch.full_like(q, float("nan"))
        block_sparse_attention_triton(q, k, v, sel, kv, out=out, config=cfg)
        assert torch.isfinite(out).all()
        assert_rel_err(out, ref, 1e-2, seed=gen, what=str(cfg))


def test_bf16_xattention_end_to_end(gen):
    q, k, v = make_qkv(gen, 2, 4100, 4, 128, dtype=torch.bfloat16, device="cuda")
    out = xattention(q, k, v, threshold=[0.8, 0.9, 0.95, 1.0], text_start=4000, kv_len=[4100, 4050])
    ref = xattention(q.float(), k.float(), v.float(), threshold=[0.8, 0.9, 0.95, 1.0], text_start=4000,
                     kv_len=[4100, 4050], backend="torch")
    assert out.dtype == torch.bfloat16
    assert_rel_err(out, ref, 2e-2, seed=gen)


def test_triton_selection_matches_torch_on_gpu(gen):
    from xattn_video.kernels import select_blocks

    q, k, _ = make_qkv(gen, 2, 5000, 4, 128, dtype=torch.bfloat16, device="cuda")
    scores = estimate_block_scores(q, k, kv_len=[5000, 4100])
    kw = dict(q_len=5000, kv_len=[5000, 4100], text_start=4900, max_density=0.6)
    got = select_blocks(scores, [0.5, 0.8, 0.95, 1.0], backend="triton", **kw)
    ref = select_blocks(scores, [0.5, 0.8, 0.95, 1.0], backend="torch", **kw)
    # the two cumulative sums round differently; only rows with a prefix sum on τ can differ
    assert (got.mask == ref.mask).float().mean() > 0.999
    rows_equal = (got.mask == ref.mask).all(-1)
    assert torch.equal(got.counts[rows_equal], ref.counts[rows_equal])
    assert torch.equal(got.indices[rows_equal], ref.indices[rows_equal])
