"""Exact dense attention over a key-padding prefix (kernels/dense.py) against the masked SDPA reference."""

import pytest
import torch
import torch.nn.functional as F

from helpers import rel_err
from xattn_video.kernels import XAttentionInputError
from xattn_video.kernels.dense import dense_attention, prefix_kv_lens


def _masked_reference(q, k, v, lens):
    """What diffusers' stock dispatch computes: SDPA with a [B, 1, 1, N] bool key mask, in float64."""
    mask = (torch.arange(k.shape[1])[None, :] < torch.tensor(lens)[:, None])[:, None, None, :]
    # padded positions are zeroed in the reference only: a masked SDPA still multiplies NaN values by 0
    keep = mask[:, 0, 0, :, None, None]
    k, v = (torch.where(keep, x, torch.zeros((), dtype=x.dtype)) for x in (k, v))
    out = F.scaled_dot_product_attention(*(x.double().transpose(1, 2) for x in (q, k, v)), attn_mask=mask)
    return out.transpose(1, 2)


@pytest.mark.parametrize("lens", [[77], [77, 77], [77, 41], [13, 77, 77]])
def test_matches_masked_reference_with_poisoned_padding(gen, lens):
    B, S, Sk, H, D = len(lens), 45, 77, 3, 64
    q = torch.randn(B, S, H, D, generator=gen)
    k, v = torch.randn(B, Sk, H, D, generator=gen), torch.randn(B, Sk, H, D, generator=gen)
    for b, n in enumerate(lens):
        k[b, n:] = float("inf")  # never read: would turn every score row into NaN
        v[b, n:] = float("nan")
    out = dense_attention(q, k, v, lens)
    ref = _masked_reference(q, k, v, lens)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert torch.isfinite(out).all(), f"seed {gen.initial_seed()}"
    assert rel_err(out, ref) < 1e-5, f"seed {gen.initial_seed()}"


def test_bf16_and_no_padding(gen):
    q, k, v = (torch.randn(2, 33, 2, 64, generator=gen).to(torch.bfloat16) for _ in range(3))
    ref = F.scaled_dot_product_attention(*(x.float().transpose(1, 2) for x in (q, k, v))).transpose(1, 2)
    for kv_len in (None, 33, [33, 33]):
        out = dense_attention(q, k, v, kv_len)
        assert out.dtype == torch.bfloat16
        assert rel_err(out, ref) < 1e-2, f"seed {gen.initial_seed()} kv_len={kv_len}"


def test_bad_kv_len_is_one_clear_error(gen):
    q = torch.randn(2, 8, 1, 64, generator=gen)
    with pytest.raises(XAttentionInputError, match="host ints"):
        dense_attention(q, q, q, torch.tensor([8, 8]))
    with pytest.raises(XAttentionInputError, match="2 entries for a batch of 1|entries for a batch"):
        dense_attention(q[:1], q[:1], q[:1], [8, 8])
    with pytest.raises(XAttentionInputError, match=r"1\.\.8"):
        dense_attention(q, q, q, [0, 8])


def test_prefix_kv_lens():
    def mask(rows):
        return torch.tensor(rows, dtype=torch.bool)[:, None, None, :]

    assert prefix_kv_lens(None) == (True, None)
    assert prefix_kv_lens(mask([[1, 1, 0, 0], [1, 1, 1, 0]])) == (True, [2, 3])
    assert prefix_kv_lens(mask([[1, 1, 1, 1]])) == (True, [4])
    assert prefix_kv_lens(mask([[1, 0, 1, 0]])) == (False, None)  # a hole: not a padding prefix
    assert prefix_kv_lens(mask([[0, 0, 0, 0]])) == (False, None)  # nothing valid
    assert prefix_kv_lens(torch.zeros(1, 1, 4, 4, dtype=torch.bool))[0] is False  # a full 2-D mask
    assert prefix_kv_lens(torch.ones(1, 1, 1, 4))[0] is False  # additive float masks are not handled here


def test_fullgraph_compile(gen):
    torch._dynamo.reset()
    q, k, v = (torch.randn(2, 40, 2, 64, generator=gen) for _ in range(3))
    compiled = torch.compile(lambda q, k, v: dense_attention(q, k, v, [31, 40]), fullgraph=True, backend="aot_eager")
    assert rel_err(compiled(q, k, v), dense_attention(q, k, v, [31, 40])) < 1e-6
