"""What makes diffusers' cache hooks correct in our pipelines, without copying them.

* True CFG: our pipelines run the conditional and the unconditional branch as two transformer calls inside
  ``cache_context("cond")`` / ``("uncond")``. FirstBlockCache, MagCache and TaylorSeer keep their state per
  context; Pyramid Attention Broadcast and FasterCache's attention hooks keep one state per module, so the
  unconditional call would reuse the conditional call's attention output (and the iteration count would advance
  twice per step). :func:`per_context_states` gives those hooks one state per context (:class:`PerContextState`)
  and keeps their frames out of torch.compile (:func:`untraced`: they branch on a count).
* Context parallelism: FirstBlockCache decides from the rank's own tokens, so ranks could disagree and the next
  all-to-all would hang. :func:`consensus_decision` makes every rank compute when any rank wants to.
* FasterCache inside its timestep range "reuses" from a module's first call on, with nothing cached yet (it fails
  when a run, or Wan 2.2's second expert, starts inside the range); a new context's iteration starts at the skip
  range instead of 0, so the first call computes and the pattern after it is unchanged.
* Context parallelism, Wan: diffusers splits the tokens at ``blocks.0``'s input with a hook; a cache enabled after
  that would wrap the split (:func:`lift_parallel_hooks` moves the split back on top).
* HunyuanVideo 1.5: its block class is missing from diffusers' ``TransformerBlockRegistry`` (which FirstBlockCache
  and MagCache read); :func:`register_blocks` adds it (it returns ``(hidden_states, encoder_hidden_states)``).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from diffusers.hooks.hooks import StateManager

FALLBACK_CONTEXT = "inference"  # a call outside any cache_context (as MagCache names it)


class PerContextState(StateManager):
    """A hook's ``state`` attribute with one state object per cache context.

    diffusers sets the context on every ``StateManager`` attribute of a stateful hook (``_set_cache_context``),
    so a hook whose ``state`` is this object reads and writes ``state.iteration``, ``state.cache``, ... of the
    running context. ``reused`` counts assignments of the very object already cached (PAB's "broadcast").
    """

    _FIELDS = ("iteration", "cache", "batch_size", "low_frequency_delta", "high_frequency_delta")

    def __init__(self, state_cls: type, initial: dict[str, Any] | None = None) -> None:
        super().__init__(state_cls)
        self.reused = 0
        self.initial = dict(initial or {})

    def current(self) -> Any:
        name = self._context.name if self._context is not None else FALLBACK_CONTEXT
        if name not in self._state_cache:
            state = self._state_cls()
            for key, value in self.initial.items():
                setattr(state, key, value)
            self._state_cache[name] = state
        return self._state_cache[name]

    def reset(self, *args: Any, **kwargs: Any) -> None:
        """All contexts forgotten (what the hooks' ``reset_state`` asks for between generations)."""
        self._state_cache.clear()


def _field(name: str) -> property:
    def get(self: PerContextState) -> Any:
        return getattr(self.current(), name)

    def set_(self: PerContextState, value: Any) -> None:
        state = self.current()
        if name == "cache" and value is not None and value is getattr(state, "cache", None):
            self.reused += 1
        setattr(state, name, value)

    return property(get, set_)


for _name in PerContextState._FIELDS:
    setattr(PerContextState, _name, _field(_name))


def per_context_states(transformer: torch.nn.Module, hook_name: str,
                       initial: Callable[[Any], dict[str, Any]] | None = None) -> list[Any]:
    """Replace the ``state`` of every ``hook_name`` hook under ``transformer`` by a :class:`PerContextState`
    (each new context's state gets ``initial(hook)``); returns the hooks."""
    hooks = []
    for module in transformer.modules():
        registry = getattr(module, "_diffusers_hook", None)
        hook = registry.get_hook(hook_name) if registry is not None else None
        if hook is None or isinstance(getattr(hook, "state", None), PerContextState):
            continue
        hook.state = PerContextState(type(hook.state), initial(hook) if initial is not None else None)
        untraced(hook, module)
        hooks.append(hook)
    return hooks


def untraced(hook: Any, module: torch.nn.Module) -> None:
    """Keep dynamo out of the hook's own frame (the module it wraps is still traced).

    PAB's and FasterCache's hooks sit on attention modules inside the compiled blocks and branch on an iteration
    count; traced, every new count is a guard failure, and after ``recompile_limit`` the block runs eagerly."""
    import functools
    import types

    plain = getattr(type(hook).new_forward, "__wrapped__", type(hook).new_forward)  # without diffusers' own disable
    fn = torch.compiler.disable(types.MethodType(plain, hook), recursive=False)
    hook.fn_ref.forward = functools.update_wrapper(functools.partial(fn, module), plain)


def untraced_hooks(transformer: torch.nn.Module, hook_name: str) -> None:
    """:func:`untraced` for every ``hook_name`` hook under ``transformer``. MagCache decorates its block hooks
    with ``torch.compiler.disable`` (recursive): that keeps the whole block out of the compiled graphs; here only
    the hook's frame is."""
    for module in transformer.modules():
        registry = getattr(module, "_diffusers_hook", None)
        hook = registry.get_hook(hook_name) if registry is not None else None
        if hook is not None:
            untraced(hook, module)


def consensus_decision(hook: Any, parallel: Callable[[], bool]) -> None:
    """Make FirstBlockCache's skip decision the same on every rank: compute when any rank wants to.

    ``parallel()`` says whether the transformer runs context-parallel now (checked per call, so the same
    install serves one-GPU and multi-rank runs)."""
    decide = hook._should_compute_remaining_blocks

    @torch.compiler.disable
    def agreed(residual: torch.Tensor) -> bool:
        compute = decide(residual)
        if parallel():
            import torch.distributed as dist

            flag = torch.tensor([1.0 if compute else 0.0], device=residual.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            compute = bool(flag.item())
        return compute

    hook._should_compute_remaining_blocks = agreed


def lift_parallel_hooks(transformer: torch.nn.Module) -> None:
    """Put diffusers' context-parallel split/gather hooks back on top of the chains a cache hooked after them.

    Wan's plan splits the tokens at the input of ``blocks.0``, where FirstBlockCache and MagCache put their head
    hook: registered later, the cache hook would wrap the split and compare the whole sequence with this rank's
    share. The context-parallel hooks are pre/post hooks, so moving them up (remove, register again) is exact.
    """
    from ..pipelines.dispatch import remove_hook

    for module in transformer.modules():
        registry = getattr(module, "_diffusers_hook", None)
        if registry is None:
            continue
        names = list(registry._hook_order)
        cp = [n for n in names if n.startswith(("cp_input---", "cp_output---"))]
        if not cp or all(names.index(n) >= len(names) - len(cp) for n in cp):
            continue  # none, or already on top
        for name in cp:
            hook = registry.hooks[name]
            remove_hook(module, name)
            registry.register_hook(hook, name)


def register_blocks(transformer: torch.nn.Module) -> None:
    """Teach diffusers' ``TransformerBlockRegistry`` the block classes of our families it lacks."""
    from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry

    for module in transformer.modules():
        cls = type(module)
        if cls.__name__ != "HunyuanVideo15TransformerBlock":
            continue
        try:
            TransformerBlockRegistry.get(cls)
        except ValueError:
            TransformerBlockRegistry.register(model_class=cls, metadata=TransformerBlockMetadata(
                return_hidden_states_index=0, return_encoder_hidden_states_index=1))


__all__ = ["PerContextState", "consensus_decision", "lift_parallel_hooks", "per_context_states", "register_blocks",
           "untraced", "untraced_hooks"]
