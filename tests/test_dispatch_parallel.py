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
