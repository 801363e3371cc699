"""Per denoising step: was each transformer call computed, skipped, predicted, or did it reuse attention?

A :class:`LedgerHook` on each transformer wraps its forward (outside the blocks, so it is never compiled) and,
after the call, asks a *probe* what the cache did in it. Probes only read the state diffusers' hooks keep (or the
counters of :mod:`.compose` and our own callbacks); they never decide anything themselves:

* ``firstblock``, ``magcache``: the shared state's ``should_compute`` → ``computed`` or ``skipped`` (the blocks
  after the first / all blocks were not run; their residual was added back);
* ``taylorseer``: a hooked module whose Taylor factors were not updated in this call was ``predicted``;
* ``pab``, ``fastercache``: attention modules that returned a cached (PAB) or extrapolated (FasterCache) output
  → ``reused`` (the blocks ran, those attention modules did not).

The step is the pipeline's own denoising step (:class:`xattn_video.warmup.StepTracker`, the same source
XAttention's warmup uses), so a call the cache skipped neither advances nor shifts anything: steps are counted,
not transformer calls. The context (``cond``/``uncond``) is the one the pipeline set with ``cache_context``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable

import torch
from diffusers.hooks import ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

from ..warmup import StepTracker

LEDGER_HOOK = "xattn_video_cache_ledger"
STATUSES = ("computed", "skipped", "predicted", "reused")


@dataclass(frozen=True)
class CallStatus:
    """One transformer call: its step, expert (0/1), cache context, status, and how many of the hooked modules
    the cache served (``served``, of ``hooked``: attention modules, or 1 for the whole-call caches)."""

    step: int | None
    expert: int
    context: str
    status: str
    served: int = 0
    hooked: int = 1


class _Nothing(BaseState):
    def reset(self, *args: Any, **kwargs: Any) -> None:
        pass


Probe = Callable[[], tuple[str, int, int]]  # after a call: (status, served, hooked)


class LedgerHook(ModelHook):
    """Records one :class:`CallStatus` per forward of the transformer it is on."""

    _is_stateful = True  # so that diffusers hands it the cache context (see _set_cache_context)

    def __init__(self, ledger: "CacheLedger", expert: int, probe_factory: Callable[[], Callable[[], Probe]]):
        super().__init__()
        self.ledger, self.expert = ledger, expert
        self.context = StateManager(_Nothing)
        self.probe_factory = probe_factory
        self._pending: tuple[int | None, Probe] | None = None

    # pre/post, not new_forward: see XAttnLayerHook (diffusers' remove_hook drops a new_forward hook above a
    # removed one, e.g. when the user calls transformer.disable_cache())
    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple, dict]:
        self._pending = (self.ledger.tracker.current(), self.probe_factory())  # `after()` reads what the cache did
        return args, kwargs

    def post_forward(self, module: torch.nn.Module, output: Any) -> Any:
        step, after = self._pending
        context = self.context._context.name if self.context._context is not None else "inference"
        status, served, hooked = after() if getattr(module, "is_cache_enabled", True) else ("computed", 0, 1)
        self.ledger.calls.append(CallStatus(step, self.expert, context, status, served, hooked))
        if self.ledger.after_call is not None:
            self.ledger.after_call()
        return output

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        return module


class CacheLedger:
    """All calls of one install; :meth:`summary` is what run records show."""

    def __init__(self, name: str, tracker: StepTracker):
        self.name = name
        self.tracker = tracker
        self.calls: list[CallStatus] = []
        self.after_call: Callable[[], None] | None = None  # e.g. MagCache calibration capture

    def clear(self) -> None:
        self.calls.clear()

    def per_step(self) -> list[dict]:
        """``[{step, status, calls: {context: status}}]`` in step order; a step's status is its calls' when they
        agree, else ``computed+<other>`` (e.g. cond computed, uncond skipped)."""
        steps: dict[Any, dict[str, str]] = defaultdict(dict)
        served: dict[Any, float] = defaultdict(float)
        for c in self.calls:
            key = f"{c.context}" if c.expert == 0 else f"t2.{c.context}"
            steps[c.step][key] = c.status
            served[c.step] += c.served / max(1, c.hooked)
        out = []
        for step in sorted(steps, key=lambda s: -1 if s is None else s):
            statuses = sorted(set(steps[step].values()), key=STATUSES.index)
            out.append({"step": step, "status": "+".join(statuses), "calls": steps[step]})
        return out

    def computed_fraction(self) -> float | None:
        """Mean over steps of the share of the step's transformer calls that were fully computed."""
        by_step: dict[Any, list[bool]] = defaultdict(list)
        for c in self.calls:
            by_step[c.step].append(c.status == "computed")
        if not by_step:
            return None
        return sum(sum(v) / len(v) for v in by_step.values()) / len(by_step)

    def summary(self) -> dict:
        counts = {s: sum(c.status == s for c in self.calls) for s in STATUSES}
        return {"name": self.name, "computed_step_fraction": self.computed_fraction(), "calls": counts,
                "steps": self.per_step()}


# ------------------------------------------------------------------------------------------------- probes
def _hooks(transformer: torch.nn.Module, name: str) -> list[Any]:
    found = []
    for module in transformer.modules():
        registry = getattr(module, "_diffusers_hook", None)
        hook = registry.get_hook(name) if registry is not None else None
        if hook is not None:
            found.append(hook)
    return found


def whole_call_probe(transformer: torch.nn.Module, leader_hook: str) -> Callable[[], Probe]:
    """FirstBlockCache / MagCache: the leader hook's shared state says whether the rest was computed."""
    hooks = _hooks(transformer, leader_hook)

    def start() -> Probe:
        def after() -> tuple[str, int, int]:
            if not hooks:
                return "computed", 0, 1
            computed = hooks[0].state_manager.get_state().should_compute
            return ("computed", 0, 1) if computed else ("skipped", 1, 1)
        return after
    return start


def taylorseer_probe(transformer: torch.nn.Module, hook_name: str) -> Callable[[], Probe]:
    """TaylorSeer: a hooked module whose factors were not updated at its current step was predicted."""
    hooks = _hooks(transformer, hook_name)

    def start() -> Probe:
        def after() -> tuple[str, int, int]:
            predicted = 0
            for hook in hooks:
                state = hook.state_manager.get_state()
                predicted += state.last_update_step != state.current_step
            return ("predicted" if predicted else "computed"), predicted, max(1, len(hooks))
        return after
    return start


def counter_probe(count: Callable[[], int], hooked: int,
                  reset: Callable[[], None] | None = None) -> Callable[[], Probe]:
    """PAB / FasterCache: ``count()`` grows by one per attention module served from the cache (``reset`` runs
    before each call)."""
    def start() -> Probe:
        if reset is not None:
            reset()
        before = count()

        def after() -> tuple[str, int, int]:
            served = count() - before
            return ("reused" if served else "computed"), served, max(1, hooked)
        return after
    return start


__all__ = ["CacheLedger", "CallStatus", "LEDGER_HOOK", "LedgerHook", "STATUSES", "counter_probe",
           "taylorseer_probe", "whole_call_probe"]
