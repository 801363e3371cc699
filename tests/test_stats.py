"""Timing and density statistics: Stopwatch, AttentionStats.timing_table, and the time_stats path of the operator."""

import pytest
import torch

from helpers import assert_close, make_qkv
from xattn_video.kernels import xattention
from xattn_video.stats import AttentionStats, Stopwatch


class FakeWatch(Stopwatch):
    """A Stopwatch whose intervals are given, so the table arithmetic is checked exactly."""

    def __init__(self, intervals):
        super().__init__(torch.device("cpu"))
        self._intervals = intervals

    def intervals_ms(self):
        return list(self._intervals)


def test_stopwatch_cpu_intervals_are_the_host_clock(monkeypatch):
    clock = iter([10.0, 10.25, 11.0])
    monkeypatch.setattr("xattn_video.stats.time.perf_counter", lambda: next(clock))
    watch = Stopwatch(torch.device("cpu"))
    for _ in range(3):
        watch.mark()
    assert watch.intervals_ms() == pytest.approx([250.0, 750.0])
    assert Stopwatch(torch.device("cpu")).intervals_ms() == []


def test_timing_table_sums_per_step_and_layer():
    stats = AttentionStats()
    stats.record(0, 1, torch.tensor(0.5), sparse=True, watch=FakeWatch([2.0, 3.0]))
    stats.record(0, 1, torch.tensor(0.25), sparse=True, watch=FakeWatch([1.0, 4.0]))  # same step and layer: summed
    stats.record(0, 2, 1.0, sparse=False, watch=FakeWatch([7.0]))  # dense call: attention only
    stats.record(1, 1, 1.0, sparse=False)  # untimed: not in the table
    stats.record(1, 3, torch.tensor(0.5), sparse=True, watch=FakeWatch([1.0, 0.5, 2.0]))  # the operator's marks
    assert stats.timing_table() == {0: {1: {"estimate_ms": 3.0, "selection_ms": 0.0, "attention_ms": 7.0},
                                        2: {"estimate_ms": 0.0, "selection_ms": 0.0, "attention_ms": 7.0}},
                                    1: {3: {"estimate_ms": 1.0, "selection_ms": 0.5, "attention_ms": 2.0}}}
    assert stats.density_table() == {0: {1: 0.375, 2: 1.0}, 1: {1: 1.0, 3: 0.5}}


def test_xattention_marks_each_step_and_returns_the_same_output(gen):
    q, k, v = make_qkv(gen, 2, 150, 2, Sk=150)
    kw = dict(threshold=0.6, block_size=32, stride=8, kv_len=[150, 97], backend="torch")
    watch = Stopwatch(q.device)
    out, sel = xattention(q, k, v, return_selection=True, stopwatch=watch, **kw)
    assert len(watch.marks) == 4  # before estimate, after estimate, after selection, after attention
    assert all(ms >= 0 for ms in watch.intervals_ms())
    ref, ref_sel = xattention(q, k, v, return_selection=True, **kw)
    assert_close(out, ref, atol=0, rtol=0, seed=gen)
    assert torch.equal(sel.mask, ref_sel.mask)

    dense_watch = Stopwatch(q.device)
    xattention(q, k, v, threshold=1.0, block_size=32, stopwatch=dense_watch)
    assert len(dense_watch.marks) == 2  # dense SDPA: one interval, reported as attention time


def test_time_stats_records_estimate_and_attention_per_layer():
    from xattn_video.pipelines.hunyuan_video import apply_xattention
    from xattn_video.pipelines.tiny import TINY_PROMPT_TEMPLATE, build_tiny_pipeline

    pipe = build_tiny_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    call = dict(prompt="a cat", height=64, width=64, num_frames=5, num_inference_steps=2, output_type="np",
                prompt_template=TINY_PROMPT_TEMPLATE, max_sequence_length=16)
    cfg = {"threshold": 0.5, "block_size": 32, "warmup_steps": 1, "time_stats": True}
    with apply_xattention(pipe, cfg) as handle:
        timed = pipe(generator=torch.Generator().manual_seed(0), **call).frames[0]
        table = handle.stats.timing_table()
        sparse_layers = {(r.step, r.layer) for r in handle.stats.records if r.sparse}
    with apply_xattention(pipe, {**cfg, "time_stats": False}):
        untimed = pipe(generator=torch.Generator().manual_seed(0), **call).frames[0]
    assert sparse_layers and {(s, layer) for s, row in table.items() for layer in row} == sparse_layers
    for step, layer in sparse_layers:
        cell = table[step][layer]
        assert cell["estimate_ms"] > 0 and cell["attention_ms"] > 0
    assert (timed == untimed).all()  # timing changes nothing but the clock
