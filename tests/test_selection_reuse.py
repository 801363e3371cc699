"""Selection reuse across denoising steps (warmup/reuse.py): when a cached selection may serve a step."""

import pytest
import torch

from xattn_video.kernels import BlockSelection
from xattn_video.warmup.reuse import SelectionCache, selection_signature


def _selection(seed: int) -> BlockSelection:
    mask = torch.rand(1, 2, 3, 3, generator=torch.Generator().manual_seed(seed)) > 0.5
    return BlockSelection.from_mask(mask, block_size=32, q_len=96, kv_len=torch.tensor([90], dtype=torch.int32))


SIG = selection_signature(1, 96, 96, 2, 32, [90], 80)


def test_reuse_on_the_next_every_minus_one_steps_only():
    cache, sel = SelectionCache(3), _selection(0)
    assert cache.get(4, 5, SIG) is None
    cache.put(4, 5, SIG, sel)
    assert cache.get(4, 5, SIG) is None  # same step again (e.g. the second call of true CFG): re-estimate
    assert cache.get(4, 6, SIG) is sel and cache.get(4, 7, SIG) is sel
    assert cache.get(4, 8, SIG) is None  # every=3: step 8 estimates afresh
    assert cache.get(4, 2, SIG) is None  # a new generation started
    assert cache.get(3, 6, SIG) is None  # another layer
    assert cache.get(4, 6, None) is None and cache.get(4, None, SIG) is None
    assert (cache.hits, cache.misses) == (2, 6)


def test_a_new_shape_or_prompt_length_re_estimates():
    cache = SelectionCache(4)
    cache.put(0, 5, SIG, _selection(0))
    assert cache.get(0, 6, selection_signature(1, 128, 128, 2, 32, [90], 80)) is None  # resolution
    assert cache.get(0, 6, selection_signature(1, 96, 96, 2, 32, [85], 80)) is None  # text length
    assert cache.get(0, 6, selection_signature(2, 96, 96, 2, 32, [90, 90], 80)) is None  # batch


@pytest.mark.parametrize("every", [0, 1])
def test_off(every):
    cache = SelectionCache(every)
    cache.put(0, 5, SIG, _selection(0))
    assert not cache.enabled and cache.get(0, 6, SIG) is None


def test_signatures_per_layer_are_bounded_and_clear_frees():
    cache = SelectionCache(2, max_signatures=2)
    sigs = [selection_signature(1, 96, 96, 2, 32, [n], 80) for n in (88, 89, 90)]
    for i, sig in enumerate(sigs):
        cache.put(0, 5, sig, _selection(i))
    assert cache.get(0, 6, sigs[0]) is None  # the oldest was dropped
    assert cache.get(0, 6, sigs[1]) is not None and cache.get(0, 6, sigs[2]) is not None
    cache.clear()
    assert cache.get(0, 6, sigs[2]) is None
    with pytest.raises(ValueError):
        SelectionCache(-1)
