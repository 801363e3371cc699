"""The sparse call under Ulysses context parallelism, simulated in one process: each rank's forward op sees the
full sequence for its heads and uses its slice of the per-head τ; ring parallelism runs dense with one warning."""

import types

import pytest
import torch
from diffusers.models import attention_dispatch

from xattn_video.config import xattn_config
from xattn_video.kernels import xattention
from xattn_video.pipelines import dispatch
from xattn_video.warmup import AttentionPlan, StepTracker

TAUS = (0.3, 0.5, 0.7, 0.9)


def _state():
    cfg = xattn_config({"threshold": [list(TAUS)], "block_size": 16, "warmup_steps": 0})
    return dispatch.XAttentionState(config=cfg, plans={0: AttentionPlan(cfg, 1, len(TAUS))}, tracker=StepTracker(None))


def _parallel(ulysses, ring=1, rank=0):
    cp = types.SimpleNamespace(ulysses_degree=ulysses, ring_degree=ring, _ulysses_local_rank=rank)
    return types.SimpleNamespace(context_parallel_config=cp)


def test_ulysses_ranks_see_full_sequence_and_their_head_slice_of_tau(monkeypatch, gen):
    seed = int(torch.randint(0, 2**31, (1,), generator=gen))
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 80, 4, 64, generator=g) for _ in range(3))
    expected = xattention(q, k, v, threshold=TAUS, stride=8, block_size=16)
    world = 2

    def fake_templated(query, key, value, attn_mask, *args, forward_op, backward_op, _parallel_config):
        rank = _parallel_config.context_parallel_config._ulysses_local_rank
        heads = slice(rank * 2, rank * 2 + 2)  # what diffusers' all-to-all gives rank r: all tokens, its heads
        with pytest.raises(RuntimeError, match="inference-only"):
            backward_op(None)
        return forward_op(None, query[:, :, heads], key[:, :, heads], value[:, :, heads], attn_mask, 0.0, False,
                          None, False, False)

    monkeypatch.setattr(attention_dispatch, "_templated_context_parallel_attention", fake_templated)
    state = _state()
    dispatch._ACTIVE.append(dispatch._Active(state, dispatch.AttentionLayer(torch.nn.Identity(), 0), None, None))
    try:
        outs = [dispatch.xattn_dispatch(q, k, v, parallel_config=_parallel(world, rank=r),
                                        _original=lambda *a, **kw: pytest.fail("dense path taken"))
                for r in range(world)]
    finally:
        dispatch._ACTIVE.pop()
    torch.testing.assert_close(torch.cat(outs, dim=2), expected, msg=f"seed {seed}")
    assert state.parallel == {"ulysses_degree": 2, "ring_degree": 1, "rank": 1}
    assert state.stats.summary()["sparse_calls"] == 2


def test_ring_parallel_runs_dense_with_one_warning():
    state = _state()
    q = torch.randn(1, 32, 4, 64)
    dense_calls = []

    def original(*args, **kwargs):
        dense_calls.append(kwargs["parallel_config"])
        return args[0]

    dispatch._ACTIVE.append(dispatch._Active(state, dispatch.AttentionLayer(torch.nn.Identity(), 0), None, None))
    try:
        with pytest.warns(RuntimeWarning, match="ring context parallelism"):
            dispatch.xattn_dispatch(q, q, q, parallel_config=_parallel(1, ring=2), _original=original)
        dispatch.xattn_dispatch(q, q, q, parallel_config=_parallel(1, ring=2), _original=original)  # no 2nd warning
    finally:
        dispatch._ACTIVE.pop()
    assert len(dense_calls) == 2 and len(state.warned) == 1


def test_no_active_layer_delegates_untouched():
    q = torch.randn(1, 8, 2, 64)
    sentinel = object()
    seen = {}

    def original(*args, **kwargs):
        seen.update(kwargs)
        return sentinel

    assert dispatch.xattn_dispatch(q, q, q, attn_mask=None, backend="native", parallel_config=None,
                                   _original=original) is sentinel
    assert seen["backend"] == "native"
    assert dispatch.parallel_degree(None) == (1, 1) and dispatch.parallel_degree(_parallel(4, 2)) == (4, 2)


def _simulated_ulysses(world):
    """diffusers' Ulysses all-to-all for ``world`` simulated ranks, one process: every rank's forward op gets the
    ranks' token chunks concatenated in rank order for its heads, and the key masks gathered the same way."""
    chunks = {}

    def fake_templated(query, key, value, attn_mask, *args, forward_op, backward_op, _parallel_config):
        rank = _parallel_config.context_parallel_config._ulysses_local_rank
        chunks[rank] = (query, key, value, attn_mask, forward_op)
        if len(chunks) < world:
            return None
        out = []
        for r in range(world):
            h = query.shape[2] // world
            heads = slice(r * h, (r + 1) * h)
            q, k, v = (torch.cat([chunks[i][j][:, :, heads] for i in range(world)], dim=1) for j in range(3))
            mask = None if attn_mask is None else torch.cat([chunks[i][3] for i in range(world)], dim=-1)
            out.append(chunks[r][4](None, q, k, v, mask, 0.0, False, None, False, False))
        return torch.cat(out, dim=2)  # [B, S, H, D] in the gathered token order, all heads

    return fake_templated


def test_ulysses_reorders_video_text_chunks_and_reads_kv_len_once_per_forward(monkeypatch, gen):
    # Each rank holds [video_r, text_r]; padded text at the end of the prompt (the last rank's chunk).
    seed = int(torch.randint(0, 2**31, (1,), generator=gen))
    g = torch.Generator().manual_seed(seed)
    world, video, text, valid_text = 2, 96, 24, 17
    q, k, v = (torch.randn(2, video + text, 4, 64, generator=g) for _ in range(3))
    keys = torch.arange(video + text) < video + valid_text
    mask = keys[None, None, None, :].expand(2, 1, 1, -1)
    kv_len = torch.full((2,), video + valid_text, dtype=torch.int32)
    expected = xattention(q, k, v, threshold=TAUS, stride=8, block_size=16, kv_len=kv_len, text_start=video)

    def rank_chunk(x, r, dim):  # [video_r, text_r] of a [video, text] tensor
        vr, tr = video // world, text // world
        idx = torch.cat([torch.arange(r * vr, (r + 1) * vr), video + torch.arange(r * tr, (r + 1) * tr)])
        return x.index_select(dim, idx)

    monkeypatch.setattr(attention_dispatch, "_templated_context_parallel_attention", _simulated_ulysses(world))
    state = _state()
    syncs = []
    original_key_padding = state.key_padding

    def counting_key_padding(m, cache_key=None):
        if (cache_key, m.shape) != state._mask_key:
            syncs.append(cache_key)
        return original_key_padding(m, cache_key)

    monkeypatch.setattr(state, "key_padding", counting_key_padding)
    state.forward = 1
    for _layer in range(2):  # two layers of one forward: one prefix check
        out = None
        for r in range(world):
            active = dispatch._Active(state, dispatch.AttentionLayer(torch.nn.Identity(), 0), video // world, None)
            dispatch._ACTIVE.append(active)
            try:
                result = dispatch.xattn_dispatch(*(rank_chunk(x, r, 1) for x in (q, k, v)),
                                                 attn_mask=rank_chunk(mask, r, 3),
                                                 parallel_config=_parallel(world, rank=r),
                                                 _original=lambda *a, **kw: pytest.fail("dense path taken"))
                out = out if result is None else result  # the last rank's call runs every rank's op
            finally:
                dispatch._ACTIVE.pop()
        gathered = torch.cat([rank_chunk(expected, r, 1) for r in range(world)], dim=1)
        torch.testing.assert_close(out, gathered, msg=f"seed {seed}")
    assert syncs == [1]


def test_ulysses_key_mask_reduces_query_key_masks_only():
    valid = torch.tensor([True] * 5 + [False] * 3)
    qk = (valid[:, None] & valid[None, :])[None, None]  # HunyuanVideo 1.5: [B, 1, S, S]
    assert torch.equal(dispatch.ulysses_key_mask(qk), valid[None, None, None, :])
    key = valid[None, None, None, :]
    assert dispatch.ulysses_key_mask(key) is key and dispatch.ulysses_key_mask(None) is None
    additive = torch.zeros(1, 1, 8, 8)
    assert dispatch.ulysses_key_mask(additive) is additive
