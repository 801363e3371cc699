"""Choose τ per layer (or per layer × head) from a ``CalibrationProfile``.

Objectives (exactly one):
- ``target_recall`` R: per unit, the lowest-density candidate whose measured recall is ≥ R;
- ``target_error`` E: per unit, the lowest-density candidate whose output relative error is ≤ E (per head:
  the head's error over the layer's mean head output norm, so the layer's output error stays ≤ E);
- ``density`` budget d: a global block budget (mean density over the profiled units ≤ d) spent greedily
  where the marginal recall per unit of density is highest (steps along each unit's concave recall–density
  hull, the classic greedy for this multiple-choice knapsack).
A unit is a layer (one τ on all its heads) or, with ``per_head``, a (layer, head).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import ConfigError
from .checks import check_target
from ..stats import Label, layer_order
from .profile import CalibrationProfile


@dataclass
class Unit:
    """One thing that gets a τ: a layer (head None) or a (layer, head); stats over the candidates [T]."""

    layer: Label
    head: int | None
    kept: torch.Tensor  # mean kept blocks per call, per candidate
    possible: float  # mean possible blocks per call
    recall: torch.Tensor
    error: torch.Tensor
    choice: int = -1
    met: bool = True

    @property
    def density(self) -> torch.Tensor:
        return self.kept / max(self.possible, 1.0)


@dataclass
class Solution:
    """Chosen τ per layer (a float, or a per-head list), with predicted density / recall / error."""

    taus: tuple[float, ...]  # the candidates
    objective: str
    target: float
    per_head: bool
    units: list[Unit]
    thresholds: dict[Label, float | list[float]] = field(default_factory=dict)  # 5, or "t2.5" (transformer_2)
    mean_density: float = 1.0
    mean_recall: float = 1.0
    mean_error: float = 0.0
    notes: list[str] = field(default_factory=list)

    def threshold_config(self, default: float | None = None, expert: int = 0) -> dict[Any, Any]:
        """``{default: τ, <layer>: τ or [τ per head]}`` as ``xattn.threshold`` accepts it, for one expert
        (0: ``transformer``; 1: ``transformer_2``, whose layers are numbered from 0 as ``xattn.expert2`` wants).

        ``default`` (layers that were never profiled: dense layers, or layers a partial run never reached)
        defaults to the most common chosen τ of that expert.
        """
        mine = {layer_order(label)[1]: tau for label, tau in self.thresholds.items() if layer_order(label)[0] == expert}
        if default is None:
            # an expert without profiled layers takes the most common τ of the other
            flat = [t for v in (mine or self.thresholds).values() for t in (v if isinstance(v, list) else [v])]
            default = max(set(flat), key=lambda t: (flat.count(t), t)) if flat else 1.0
        return {"default": default, **dict(sorted(mine.items()))}

    def experts(self) -> list[int]:
        """The experts with a calibrated layer (0: ``transformer``, 1: ``transformer_2``)."""
        return sorted({layer_order(label)[0] for label in self.thresholds}) or [0]

    def xattn_fragment(self) -> dict[str, Any]:
        """``{"threshold": {...}}`` (and ``{"expert2": {"threshold": {...}}}`` when Wan 2.2's second expert was
        profiled): the part of an xattn config calibration sets (merge it into yours)."""
        out: dict[str, Any] = {"threshold": self.threshold_config()}
        if 1 in self.experts():
            out["expert2"] = {"threshold": self.threshold_config(expert=1)}
        return out

    def layer_rows(self) -> list[dict]:
        """Per layer: τ, predicted density, recall and error (from the profile)."""
        rows = []
        for layer in sorted(self.thresholds, key=layer_order):
            units = [u for u in self.units if u.layer == layer]
            kept = sum(float(u.kept[u.choice]) for u in units)
            possible = sum(u.possible for u in units)
            recall = sum(float(u.recall[u.choice]) * u.possible for u in units) / max(possible, 1.0)
            error = _combined_error(units)
            rows.append({"layer": layer, "tau": self.thresholds[layer], "density": kept / max(possible, 1.0),
                         "recall": recall, "error": error})
        return rows


def _combined_error(units: list[Unit]) -> float:
    # layer errors, or head errors over the layer's mean head norm: the RMS is the output error of them all
    num = sum(float(u.error[u.choice]) ** 2 * u.possible for u in units)
    return math.sqrt(num / max(sum(u.possible for u in units), 1.0))


def _units(profile: CalibrationProfile, per_head: bool) -> list[Unit]:
    units = []
    for layer, p in sorted(profile.layers.items(), key=lambda kv: layer_order(kv[0])):
        calls = max(p.calls, 1)
        if per_head:
            density, recall, _ = p.head_stats()
            # a head's error is measured against the layer's mean head output norm, not its own: a diffuse
            # head has a tiny output whose own relative error says nothing about the layer's output. Every head
            # within E this way keeps the layer's output error (all heads together) within E too.
            error = (p.err_num / (p.err_den.sum() / p.err_den.numel()).clamp_min(1e-30)).sqrt()
            for h in range(density.shape[0]):
                units.append(Unit(layer, h, p.kept[h] / calls, float(p.possible[h]) / calls, recall[h], error[h]))
        else:
            density, recall, error = p.layer_stats()
            units.append(Unit(layer, None, p.kept.sum(0) / calls, float(p.possible.sum()) / calls, recall, error))
    return units


def _cheapest_meeting(unit: Unit, ok: torch.Tensor, fallback: torch.Tensor) -> None:
    """Lowest density among candidates where ``ok``; ties go to the better ``fallback`` score."""
    order = sorted(range(len(ok)), key=lambda t: (float(unit.kept[t]), -float(fallback[t])))
    feasible = [t for t in order if bool(ok[t])]
    if feasible:
        unit.choice, unit.met = feasible[0], True
    else:  # no candidate reaches the target: take the best one and say so
        unit.choice, unit.met = max(range(len(ok)), key=lambda t: (float(fallback[t]), -float(unit.kept[t]))), False


def _hull(unit: Unit) -> list[int]:
    """Candidates on the upper concave hull of (kept, recall), from the cheapest upward."""
    order = sorted(range(len(unit.kept)), key=lambda t: (float(unit.kept[t]), -float(unit.recall[t])))
    hull: list[int] = []
    for t in order:
        x, y = float(unit.kept[t]), float(unit.recall[t])
        if hull and y <= float(unit.recall[hull[-1]]):
            continue  # costs at least as much, buys no recall
        while len(hull) >= 2:
            (x0, y0), (x1, y1) = ((float(unit.kept[i]), float(unit.recall[i])) for i in hull[-2:])
            if (y1 - y0) * (x - x1) <= (y - y1) * (x1 - x0):  # hull[-1] lies on or below the chord
                hull.pop()
            else:
                break
        hull.append(t)
    return hull


def _spend_budget(units: list[Unit], budget: float) -> bool:
    """Greedy over hull steps by recall gained per block; returns False if even the cheapest τ overshoots.

    Recall is weighted by the unit's possible blocks (proportional to its query rows), so the greedy
    maximizes the mean recall of the profiled calls.
    """
    hulls = [_hull(u) for u in units]
    pos = [0] * len(units)
    spent = sum(float(u.kept[h[0]]) for u, h in zip(units, hulls))
    total = sum(u.possible for u in units)
    allowed = budget * total

    def push(heap: list, i: int) -> None:
        if pos[i] + 1 < len(hulls[i]):
            a, b = hulls[i][pos[i]], hulls[i][pos[i] + 1]
            cost = float(units[i].kept[b] - units[i].kept[a])
            gain = float(units[i].recall[b] - units[i].recall[a]) * units[i].possible
            heapq.heappush(heap, (-gain / max(cost, 1e-12), i, cost))

    heap: list = []
    for i in range(len(units)):
        push(heap, i)
    while heap:
        _, i, cost = heapq.heappop(heap)
        if spent + cost <= allowed * (1 + 1e-12):
            spent += cost
            pos[i] += 1
            push(heap, i)  # a unit whose next step does not fit is dropped; smaller steps elsewhere may
    for u, h, p in zip(units, hulls, pos):
        u.choice = h[p]
    return sum(float(u.kept[h[0]]) for u, h in zip(units, hulls)) <= allowed * (1 + 1e-12)


def solve(profile: CalibrationProfile, *, target_recall: float | None = None, target_error: float | None = None,
          density: float | None = None, per_head: bool = False) -> Solution:
    """Pick τ per layer (per head with ``per_head``) for the objective; see the module docstring."""
    objective, target = check_target(target_recall, target_error, density)
    if not profile.layers:
        raise ConfigError("the calibration profile is empty: no sparse-eligible attention call was observed "
                          "(are all steps warmup steps, or all layers dense?)")
    units = _units(profile, per_head)
    sol = Solution(taus=profile.taus, objective=objective, target=target, per_head=per_head, units=units)
    if objective == "recall":
        for u in units:
            _cheapest_meeting(u, u.recall >= target, u.recall)
    elif objective == "error":
        for u in units:
            _cheapest_meeting(u, u.error <= target, -u.error)
    else:
        if not _spend_budget(units, target):
            sol.notes.append(f"density budget {target:g} is below the lowest density reachable with the candidate "
                             f"thresholds; every unit takes its cheapest τ")
    missed = [u for u in units if not u.met]
    if missed:
        names = ", ".join(f"layer {u.layer}" + ("" if u.head is None else f" head {u.head}") for u in missed[:8])
        sol.notes.append(f"{len(missed)} unit(s) cannot reach the target with the candidate τ ({names}"
                         f"{', …' if len(missed) > 8 else ''}); they take the best candidate")
    for layer in sorted({u.layer for u in units}, key=layer_order):
        lu = [u for u in units if u.layer == layer]
        taus = [profile.taus[u.choice] for u in lu]
        sol.thresholds[layer] = taus[0] if len(set(taus)) == 1 else taus
    total = sum(u.possible for u in units)
    sol.mean_density = sum(float(u.kept[u.choice]) for u in units) / max(total, 1.0)
    sol.mean_recall = sum(float(u.recall[u.choice]) * u.possible for u in units) / max(total, 1.0)
    sol.mean_error = _combined_error(units)
    return sol
