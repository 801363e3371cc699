"""Per (denoising step, layer) attention statistics: density, and optionally estimate/attention time.

Densities are summed online on the device per (step, layer) and only read when a report is asked for, so
collecting them adds no host synchronization and memory stays bounded over any number of generations. Timing (off by default) uses CUDA events and synchronizes when read.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch


class Stopwatch:
    """Marks on the device timeline (CUDA events) or the host clock (CPU, where work is synchronous)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list = []

    def mark(self) -> None:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.marks.append(ev)
        else:
            self.marks.append(time.perf_counter())

    def intervals_ms(self) -> list[float]:
        if self.cuda:
            self.marks[-1].synchronize()
            return [a.elapsed_time(b) for a, b in zip(self.marks, self.marks[1:])]
        return [(b - a) * 1e3 for a, b in zip(self.marks, self.marks[1:])]


Label = int | str  # layer label: 5 for ``transformer``, "t2.5" for ``transformer_2`` (Wan 2.2)


@dataclass(frozen=True)
class CallRecord:
    """One attention call (no tensors): kept in a bounded ring buffer for inspection and tests."""

    step: int | None
    layer: Label
    sparse: bool


def layer_order(label: Label) -> tuple[int, int]:
    """Sort key of a layer label: (expert, index); ``transformer``'s layers first, then ``"t2.N"``."""
    if isinstance(label, str) and label.startswith("t2."):
        return 1, int(label[3:])
    return 0, int(label)


def parse_label(text: str | int) -> Label:
    """A label back from its string form (JSON keys): ``"5"`` -> 5, ``"t2.5"`` stays ``"t2.5"``."""
    expert, index = layer_order(text)
    return index if expert == 0 else f"t2.{index}"


_layer_order = layer_order


@dataclass
class AttentionStats:
    """Density per (step, layer) aggregated online: one running device sum per key, whatever the number of
    calls or generations (bounded by steps × layers), plus the last ``max_records`` calls without tensors.

    Timing (``time_stats``) reads each call's CUDA events when it is recorded (it synchronizes: profiling only).
    """

    max_records: int = 4096
    records: deque = field(default_factory=deque)
    calls: int = 0
    _sums: dict = field(default_factory=dict)  # (step, layer) -> [density sum (tensor | float), calls, sparse calls]
    _timing: dict = field(default_factory=dict)  # (step, layer) -> [estimate_ms, selection_ms, attention_ms]

    def __post_init__(self) -> None:
        self.records = deque(self.records, maxlen=self.max_records)

    def record(self, step: int | None, layer: Label, density: torch.Tensor | float, sparse: bool,
               watch: Stopwatch | None = None) -> None:
        self.calls += 1
        self.records.append(CallRecord(step, layer, sparse))
        value = density.detach().float().reshape(()) if isinstance(density, torch.Tensor) else float(density)
        entry = self._sums.get((step, layer))
        if entry is None:
            self._sums[(step, layer)] = [value, 1, int(sparse)]
        else:
            entry[0] = entry[0] + value  # a device add for tensors: no host synchronization
            entry[1] += 1
            entry[2] += int(sparse)
        if watch is not None:
            intervals = watch.intervals_ms()
            acc = self._timing.setdefault((step, layer), [0.0, 0.0, 0.0])
            if len(intervals) == 3:
                for i, ms in enumerate(intervals):
                    acc[i] += ms
            elif len(intervals) == 2:
                acc[0] += intervals[0]
                acc[2] += intervals[1]
            elif len(intervals) == 1:
                acc[2] += intervals[0]

    def clear(self) -> None:
        self.records.clear()
        self._sums.clear()
        self._timing.clear()
        self.calls = 0

    def tensor_count(self) -> int:
        """Device tensors held (bounded by steps × layers)."""
        return sum(isinstance(v[0], torch.Tensor) for v in self._sums.values())

    def _host_sums(self) -> dict:
        """{(step, layer): (density sum, calls, sparse calls)} on the host; reads all tensors in one transfer."""
        keys = list(self._sums)
        tensors = [self._sums[k][0] for k in keys if isinstance(self._sums[k][0], torch.Tensor)]
        host = iter(torch.stack([t.cpu() for t in tensors]).tolist() if tensors else [])
        out = {}
        for k in keys:
            total, n, n_sparse = self._sums[k]
            out[k] = (next(host) if isinstance(total, torch.Tensor) else float(total), n, n_sparse)
        return out

    @staticmethod
    def _sorted(keys: Any) -> list:
        return sorted(keys, key=lambda k: (-1 if k[0] is None else k[0], _layer_order(k[1])))

    def density_table(self, sums: dict | None = None) -> dict[int | None, dict[Label, float]]:
        """{step: {layer: mean density over the calls of that step (1.0 = dense)}}; synchronizes once."""
        sums = self._host_sums() if sums is None else sums
        table: dict = {}
        for step, layer in self._sorted(sums):
            total, n, _ = sums[(step, layer)]
            table.setdefault(step, {})[layer] = total / n
        return table

    def timing_table(self) -> dict[int | None, dict[Label, dict[str, float]]]:
        """{step: {layer: {"estimate_ms", "selection_ms", "attention_ms"}}} summed over the calls of a step.

        Timed calls only. A call timed with three intervals (the operator's sparse path) fills all three; two
        intervals count as estimate (estimate + selection) and attention; one (a dense call) as attention.
        """
        table: dict = {}
        for step, layer in self._sorted(self._timing):
            est, sel, att = self._timing[(step, layer)]
            table.setdefault(step, {})[layer] = {"estimate_ms": est, "selection_ms": sel, "attention_ms": att}
        return table

    def summary(self) -> dict:
        sums = self._host_sums()
        # Dense calls count 1.0 each, so the sparse mean is (sum of all - dense calls) / sparse calls.
        sparse_calls = sum(n_sparse for _, _, n_sparse in sums.values())
        sparse_sum = sum(total - (n - n_sparse) for total, n, n_sparse in sums.values())
        table = self.density_table(sums)
        return {
            "calls": self.calls,
            "sparse_calls": sparse_calls,
            "mean_density_sparse_calls": sparse_sum / sparse_calls if sparse_calls else None,
            "density_per_step_layer": {str(step): {str(layer): d for layer, d in layers.items()}
                                       for step, layers in table.items()},
        }
