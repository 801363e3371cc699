"""Non-finite inputs: one behaviour on every backend (docs/xattention-spec.md, "Non-finite inputs").

A row whose query, or any kept valid key/value, is non-finite comes out non-finite (never silently zero);
a score row holding NaN/+inf keeps every valid block; padding never matters. Fresh random inputs per run.
"""

import pytest
import torch

from helpers import assert_close
from xattn_video.kernels import select_blocks, xattention

BLOCK = 32
KV_LEN = [80, 70]  # batch 1 has 10 padding keys
BACKENDS = ("torch", "triton")


def _inputs(gen, dtype, device):
    q, k, v = (torch.randn(2, 80, 2, 64, generator=gen).to(device=device, dtype=dtype) for _ in range(3))
    return q, k, v


def _run(q, k, v, backend, threshold=0.5):
    out, sel = xattention(q, k, v, threshold=threshold, block_size=BLOCK, kv_len=KV_LEN, backend=backend,
                          return_selection=True)
    return out.float().cpu(), sel


def _bad_rows(out):
    """bool [B, S, H]: rows with any non-finite value."""
    return ~torch.isfinite(out).all(dim=-1)


CASES = [(c, torch.float32) for c in ("q-nan", "q-inf", "k-nan", "v-nan", "v-inf", "padding")] + [
    (c, torch.float16) for c in ("q-nan", "k-nan", "v-inf")]


@pytest.mark.parametrize("case,dtype", CASES)
def test_non_finite_inputs_agree_across_backends(gen, triton_device, dtype, case):
    seed = gen.initial_seed()
    where, what = case.split("-") if "-" in case else ("kv", "nan")
    value = float(what)
    q, k, v = _inputs(gen, dtype, "cpu")
    b, h = int(torch.randint(0, 2, (), generator=gen)), int(torch.randint(0, 2, (), generator=gen))
    pos = int(torch.randint(0, 70, (), generator=gen))  # a valid position in both batches
    if where == "q":
        q[b, pos, h, 5] = value
    elif where in ("k", "v"):
        (k if where == "k" else v)[b, pos, h, 5] = value
    else:  # non-finite values only in batch 1's padding
        k[1, 70:] = float("inf")
        v[1, 70:] = float("nan")

    results = {}
    for backend in BACKENDS:
        device = "cpu" if backend == "torch" else triton_device
        results[backend] = _run(q.to(device), k.to(device), v.to(device), backend)
    dense = xattention(q, k, v, threshold=1.0, block_size=BLOCK, kv_len=KV_LEN, backend="torch").float()

    (ref, ref_sel), (tri, tri_sel) = results["torch"], results["triton"]
    msg = f"case {case} {dtype} b={b} h={h} pos={pos} seed {seed}"
    assert torch.equal(ref_sel.mask.cpu(), tri_sel.mask.cpu()), msg
    assert torch.equal(_bad_rows(ref), _bad_rows(tri)), msg
    finite = ~_bad_rows(ref)
    assert_close(tri[finite], ref[finite], atol=2e-3, rtol=2e-3, seed=seed, what=msg)

    bad = _bad_rows(ref)
    n_valid = torch.tensor([-(-n // BLOCK) for n in KV_LEN])
    if where == "kv":
        assert not bad.any() and torch.isfinite(dense).all(), msg
        return
    others = torch.ones_like(bad)
    others[b, :, h] = False
    assert not bad[others].any(), msg  # other batches and heads never see it
    if where == "q":
        expected = torch.zeros(80, dtype=torch.bool)
        expected[pos] = True
        assert torch.equal(bad[b, :, h], expected), msg  # exactly that query's row, never zero
        assert torch.equal(_bad_rows(dense)[b, :, h], expected), msg  # as dense attention
        assert ref_sel.counts[b, h, pos // BLOCK] == n_valid[b], msg  # its query block went dense
    elif where == "k":
        assert bad[b, :, h].all() and _bad_rows(dense)[b, :, h].all(), msg  # every row, as dense attention
        assert torch.equal(ref_sel.counts[b, h], n_valid[b].expand(ref_sel.counts.shape[-1]).int()), msg
    else:  # v: exactly the rows whose query block keeps the key's block
        keeps = ref_sel.mask[b, h, :, pos // BLOCK].repeat_interleave(BLOCK)[:80]
        assert torch.equal(bad[b, :, h], keeps), msg


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_score_row_keeps_every_valid_block(gen, triton_device, backend):
    device = "cpu" if backend == "torch" else triton_device
    scores = torch.rand(2, 2, 3, 4, generator=gen)
    scores[1, ..., 3] = 0.0  # batch 1 has 3 valid key blocks
    scores /= scores.sum(-1, keepdim=True)
    scores[0, 1, 2, 1] = float("nan")
    scores[1, 0, 0, 2] = -float("nan")  # a NaN with the sign bit set, as x86 produces for inf - inf
    scores[1, 1, 1, 0] = float("inf")
    scores[1, 0, 2, 3] = float("nan")  # padding (kv_len 70 → 3 valid blocks): never matters
    sel = select_blocks(scores.to(device), 0.3, block_size=BLOCK, q_len=80, kv_len=[128, 70], keep_diagonal=False,
                        backend=backend)
    mask = sel.mask.cpu()
    msg = f"seed {gen.initial_seed()}"
    assert mask[0, 1, 2].all() and mask[1, 0, 0, :3].all() and mask[1, 1, 1, :3].all(), msg
    assert not mask[1, :, :, 3].any(), msg
    assert mask[1, 0, 2].sum() == 1, msg  # NaN only in padding: the usual selection (top block ≥ 1/3 > τ)
