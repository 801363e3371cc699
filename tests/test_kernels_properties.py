"""Properties every backend must have (spec §1–3), on fresh random inputs."""

import pytest
import torch
import torch.nn.functional as F

from helpers import TORCH_F32_TOL, assert_close, assert_rel_err, make_qkv
from xattn_video.kernels import BlockSelection, block_sparse_attention, estimate_block_scores, select_blocks, xattention
from xattn_video.kernels.api import full_selection


@pytest.fixture(params=["torch", "triton"])
def backend_device(request, triton_device):
    return request.param, ("cpu" if request.param == "torch" else triton_device)



def _sdpa(q, k, v, kv_len=None):
    mask = None
    if kv_len is not None:
        kv = torch.as_tensor(kv_len, device=q.device)
        mask = (torch.arange(k.shape[1], device=q.device)[None, :] < kv[:, None])[:, None, None, :]
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2)


def test_tau_one_equals_dense_sdpa(gen, backend_device):
    backend, device = backend_device
    q, k, v = make_qkv(gen, 2, 150, 2, device=device)
    out = xattention(q, k, v, threshold=1.0, block_size=32, backend=backend)
    assert_close(out, _sdpa(q, k, v), **TORCH_F32_TOL, seed=gen)
    out = xattention(q, k, v, threshold=1.5, block_size=32, kv_len=[150, 99], backend=backend)
    assert_close(out, _sdpa(q, k, v, [150, 99]), **TORCH_F32_TOL, seed=gen)


def test_all_blocks_selection_equals_dense(gen, backend_device):
    backend, device = backend_device
    q, k, v = make_qkv(gen, 2, 170, 2, device=device)
    kv = torch.tensor([170, 111], dtype=torch.int32, device=device)
    sel = full_selection(2, 2, 170, 170, kv, 32)
    out = block_sparse_attention(q, k, v, sel, backend=backend)
    assert_rel_err(out, _sdpa(q, k, v, [170, 111]), 1e-5, seed=gen)


def test_kept_mass_reaches_threshold(gen):
    q, k, _ = make_qkv(gen, 2, 320, 3)
    scores = estimate_block_scores(q, k, stride=8, block_size=32, kv_len=[320, 181], backend="torch")
    tau = torch.tensor([0.3, 0.7, 0.95])
    sel = select_blocks(scores, tau, block_size=32, q_len=320, kv_len=[320, 181], keep_diagonal=False)
    kept_mass = (scores * sel.mask).sum(-1)
    assert torch.all(kept_mass >= tau.view(1, 3, 1) - 1e-6)
    # minimal: dropping the smallest kept block falls below τ
    smallest = torch.where(sel.mask, scores, torch.full_like(scores, 2.0)).min(-1).values
    assert torch.all(kept_mass - smallest < tau.view(1, 3, 1) + 1e-6)
    assert sel.density() < 1.0


def test_padding_keys_never_change_output(gen, backend_device):
    backend, device = backend_device
    q, k, v = make_qkv(gen, 2, 200, 2, device=device)
    kv_len = [163, 200]  # 163 is inside a stride-8 key group and a 32-block
    out, sel = xattention(q, k, v, threshold=0.8, block_size=32, kv_len=kv_len, backend=backend,
                          return_selection=True)
    k2, v2 = k.clone(), v.clone()
    k2[0, 163:] = 50 * torch.randn(37, 2, 64, generator=gen).to(device)
    v2[0, 163:] = 1e4
    out2, sel2 = xattention(q, k2, v2, threshold=0.8, block_size=32, kv_len=kv_len, backend=backend,
                            return_selection=True)
    assert torch.equal(sel.mask, sel2.mask)
    assert_close(out2, out, atol=1e-6, rtol=1e-6, seed=gen)


def test_non_finite_padding_never_leaks(gen, backend_device):
    backend, device = backend_device
    q, k, v = make_qkv(gen, 1, 130, 2, device=device)
    out = xattention(q, k, v, threshold=0.9, block_size=32, kv_len=100, backend=backend)
    k[:, 100:] = float("inf")
    v[:, 100:] = float("nan")
    out_bad = xattention(q, k, v, threshold=0.9, block_size=32, kv_len=100, backend=backend)
    assert torch.isfinite(out_bad).all()
    assert_close(out_bad, out, **TORCH_F32_TOL, seed=gen)


def test_different_kv_len_per_batch_equals_separate_calls(gen, backend_device):
    backend, device = backend_device
    q, k, v = make_qkv(gen, 2, 140, 2, device=device)
    out = xattention(q, k, v, threshold=0.7, block_size=32, kv_len=[140, 75], backend=backend)
    for b, kv in enumerate([140, 75]):
        single = xattention(q[b:b + 1], k[b:b + 1], v[b:b + 1], threshold=0.7, block_size=32, kv_len=kv,
                            backend=backend)
        assert_close(out[b:b + 1], single, atol=1e-6, rtol=1e-5, seed=gen, what=f"batch {b}")


def test_per_head_threshold(gen):
    q, k, v = make_qkv(gen, 1, 256, 3)
    out, sel = xattention(q, k, v, threshold=[0.2, 1.0, 0.9], block_size=32, keep_diagonal=False,
                          backend="torch", return_selection=True)
    assert torch.all(sel.counts[0, 1] == 8)  # τ = 1: every block
    assert sel.counts[0, 0].sum() < sel.counts[0, 2].sum()
    for h, tau in enumerate([0.2, 1.0, 0.9]):
        _, sel_h = xattention(q[:, :, h:h + 1], k[:, :, h:h + 1], v[:, :, h:h + 1], threshold=tau, block_size=32,
                              keep_diagonal=False, backend="torch", return_selection=True)
        assert torch.equal(sel.mask[:, h:h + 1], sel_h.mask)
    assert_close(out[:, :, 1], _sdpa(q, k, v)[:, :, 1], **TORCH_F32_TOL, seed=gen)


def test_text_start_forces_text_blocks(gen):
    q, k, v = make_qkv(gen, 2, 300, 2)
    text_start, kv_len = 230, [280, 300]
    _, sel = xattention(q, k, v, threshold=0.1, block_size=32, kv_len=kv_len, text_start=text_start,
                        keep_diagonal=False, backend="torch", return_selection=True)
    # key blocks 7 and 8 hold text (224..287); block 9 (288..) is padding in batch 0
    assert torch.all(sel.mask[:, :, :, 7:9])
    assert not sel.mask[0, :, :, 9].any() and torch.all(sel.mask[1, :, :, 9])
    # query blocks 7..9 overlap [230, 300): dense over valid blocks
    assert torch.all(sel.counts[0, :, 7:] == 9) and torch.all(sel.counts[1, :, 7:] == 10)
    assert torch.all(sel.counts[:, :, :7] < 9)


def test_bhsd_layout_matches_bshd(gen, backend_device):
    backend, device = backend_device
    q, k, v = make_qkv(gen, 1, 130, 2, device=device)
    out = xattention(q, k, v, threshold=0.8, block_size=32, kv_len=101, backend=backend)
    qt, kt, vt = (x.transpose(1, 2).contiguous() for x in (q, k, v))
    out_t = xattention(qt, kt, vt, threshold=0.8, block_size=32, kv_len=101, layout="bhsd", backend=backend)
    assert out_t.shape == qt.shape
    assert_close(out_t.transpose(1, 2), out, atol=1e-6, rtol=1e-5, seed=gen, what="output")
    s = estimate_block_scores(q, k, block_size=32, backend=backend)
    s_t = estimate_block_scores(qt, kt, block_size=32, layout="bhsd", backend=backend)
    assert_close(s, s_t, **TORCH_F32_TOL, seed=gen, what="scores")


def test_swapping_q_and_k_changes_scores():
    """Regression for the public code's video integration, which once passed K and Q swapped."""
    g = torch.Generator().manual_seed(0)
    B, S, H, D, bs = 1, 256, 1, 64, 32
    direction = torch.randn(D, generator=g)
    q = 0.3 * torch.randn(B, S, H, D, generator=g) + direction
    k = 0.3 * torch.randn(B, S, H, D, generator=g)
    k[:, 64:96] += 3 * direction  # only key block 2 aligns with every query
    scores = estimate_block_scores(q, k, stride=8, block_size=bs, backend="torch")
    swapped = estimate_block_scores(k, q, stride=8, block_size=bs, backend="torch")
    assert torch.all(scores[0, 0].argmax(-1) == 2)
    assert scores[0, 0, :, 2].min() > 0.9
    assert not torch.all(swapped[0, 0].argmax(-1) == 2)


def test_stride_and_block_not_dividing_length(gen):
    q, k, v = make_qkv(gen, 1, 131, 2)
    out = xattention(q, k, v, threshold=0.95, stride=4, block_size=64, backend="torch")
    assert out.shape == q.shape and torch.isfinite(out).all()
    out_dense = xattention(q, k, v, threshold=0.999999, stride=4, block_size=64, backend="torch")
    assert_rel_err(out_dense, _sdpa(q, k, v), 1e-3, seed=gen)


def test_selection_built_from_mask_round_trips(gen):
    mask = torch.rand(2, 2, 3, 5, generator=gen) < 0.5
    sel = BlockSelection.from_mask(mask, block_size=16, q_len=40, kv_len=torch.tensor([80, 80]))
    rebuilt = torch.zeros_like(mask)
    for b in range(2):
        for h in range(2):
            for i in range(3):
                rebuilt[b, h, i, sel.indices[b, h, i, : sel.counts[b, h, i]].long()] = True
    assert torch.equal(rebuilt, mask)
