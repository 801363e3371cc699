"""Per (denoising step, layer) attention statistics: density, and optionally estimate/attention time.

Densities are kept as device scalars and only read when a report is asked for, so collecting them adds
no host synchronization. Timing (off by default) uses CUDA events and synchronizes when read.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

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


@dataclass
class _Record:
    step: int | None
    layer: int
    density: torch.Tensor | float  # 1.0 for dense calls
    sparse: bool
    watch: Stopwatch | None = None  # marks: start, after estimate, after selection, after attention


@dataclass
class AttentionStats:
    records: list[_Record] = field(default_factory=list)

    def record(self, step: int | None, layer: int, density: torch.Tensor | float, sparse: bool,
               watch: Stopwatch | None = None) -> None:
        self.records.append(_Record(step, layer, density.detach() if isinstance(density, torch.Tensor) else density,
                                    sparse, watch))

    def clear(self) -> None:
        self.records.clear()

    def _host_densities(self) -> list[float]:
        """One float per record; reads all device scalars in a single transfer."""
        tensors = [r.density for r in self.records if isinstance(r.density, torch.Tensor)]
        host = iter(torch.stack([t.float().reshape(()).cpu() for t in tensors]).tolist() if tensors else [])
        return [next(host) if isinstance(r.density, torch.Tensor) else float(r.density) for r in self.records]

    def density_table(self, densities: list[float] | None = None) -> dict[int | None, dict[int, float]]:
        """{step: {layer: mean density over the calls of that step (1.0 = dense)}}; synchronizes once."""
        acc: dict = defaultdict(lambda: defaultdict(list))
        for r, d in zip(self.records, densities if densities is not None else self._host_densities()):
            acc[r.step][r.layer].append(d)
        return {step: {layer: sum(v) / len(v) for layer, v in sorted(layers.items())}
                for step, layers in sorted(acc.items(), key=lambda kv: -1 if kv[0] is None else kv[0])}

    def timing_table(self) -> dict[int | None, dict[int, dict[str, float]]]:
        """{step: {layer: {"estimate_ms", "selection_ms", "attention_ms"}}} summed over the calls of a step.

        Timed calls only; a call timed with two intervals (estimate+selection, attention) counts the first
        as estimate.
        """
        out: dict = defaultdict(lambda: defaultdict(lambda: {"estimate_ms": 0.0, "selection_ms": 0.0,
                                                             "attention_ms": 0.0}))
        for r in self.records:
            if r.watch is None:
                continue
            intervals = r.watch.intervals_ms()
            if len(intervals) == 3:
                for key, ms in zip(("estimate_ms", "selection_ms", "attention_ms"), intervals):
                    out[r.step][r.layer][key] += ms
            elif len(intervals) == 2:
                out[r.step][r.layer]["estimate_ms"] += intervals[0]
                out[r.step][r.layer]["attention_ms"] += intervals[1]
            elif len(intervals) == 1:
                out[r.step][r.layer]["attention_ms"] += intervals[0]
        return {s: dict(v) for s, v in out.items()}

    def summary(self) -> dict:
        densities = self._host_densities()
        sparse = [d for r, d in zip(self.records, densities) if r.sparse]
        table = self.density_table(densities)
        return {
            "calls": len(self.records),
            "sparse_calls": len(sparse),
            "mean_density_sparse_calls": sum(sparse) / len(sparse) if sparse else None,
            "density_per_step_layer": {str(step): {str(layer): d for layer, d in layers.items()}
                                       for step, layers in table.items()},
        }
