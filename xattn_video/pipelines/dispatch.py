"""The one XAttention mechanism for every diffusers video transformer: hooks + a patched ``dispatch_attention_fn``.

How it works (diffusers 0.42):

* Every supported attention processor ends in a call to the module-level name ``dispatch_attention_fn`` of its
  transformer module (``transformer_hunyuan_video``, ``transformer_hunyuan_video15``, ``transformer_wan``). That
  name is replaced, once per module and reference-counted over all installs, by :func:`xattn_dispatch`. With no
  XAttention layer active it delegates to the original at once, so other modules and pipelines are untouched.
* Each self-attention module gets a diffusers ``ModelHook`` (:class:`XAttnLayerHook`) that marks "this layer is
  running" in a shared slot for the duration of its forward, with the token layout the family adapter declares.
  The stock processor still computes q/k/v, norms and rotary; only its final dispatch call is intercepted.
  (Wrapping the processor object instead does not work: ``Attention.forward`` filters keyword arguments by
  ``inspect.signature(processor.__call__)``.)
* Each transformer gets a :class:`StepHook` that, once per forward, reads the denoising step from whichever
  pipeline is running it (see :func:`xattn_video.warmup.calling_pipeline`), so ``from_pipe`` and pipelines built
  from ``pipe.components`` get warmup right.
* Inside an active layer, a call runs dense or ``xattention`` with ``kv_len`` from the key-padding mask and the
  text region forced. Dense calls (warmup steps, dense layers, τ ≥ 1) follow ``xattn.dense_backend``: ``fast``
  (default) drops the padded keys and calls unmasked SDPA (:func:`xattn_video.kernels.dense.dense_attention`,
  exact up to rounding) with the host key lengths of the once-per-forward mask check; ``stock`` makes the original
  dispatch call with the same arguments (bit-identical). Calls whose mask is not a key-padding prefix, other
  attention backends and context-parallel calls always take the original call.
* Sparse calls go through ``xattention`` itself: ``selection=`` for selection reuse across steps
  (``xattn.selection_reuse``, :mod:`xattn_video.warmup.reuse`), ``stopwatch=`` for ``time_stats``. A calibration
  observer (:class:`xattn_video.calibrate.collect.Collector`, ``state.observer``) sees every sparse-eligible call
  with a usable mask before its attention, and with ``observer.run_dense`` the call runs dense.

torch.compile (regional compilation of the transformer blocks, :mod:`xattn_video.compile`): the layer hook's own
frame and :func:`xattn_dispatch` are excluded from tracing (``torch.compiler.disable``), so each hooked attention
module costs one deliberate graph break around its dispatch call. Dynamo still compiles the module's forward (q/k/v
projections, norms, rotary) and the rest of the block, which is where compilation gains (fused elementwise work);
what it never traces is our per-call bookkeeping (step, layer, τ, statistics, the once-per-forward mask check,
selection reuse), which would otherwise be baked into the graphs as constants. Graphs therefore hold only the
model's own math: blocks of one class share them across layers, steps, warmup/sparse modes and per-layer τ, and
nothing recompiles during a generation. The kernels themselves are custom ops and compile with ``fullgraph=True``
on their own (``tests/test_kernels_compile.py``). The StepHook runs outside the blocks.

Context parallelism: with a ``parallel_config`` whose Ulysses degree N > 1, the sparse call runs inside diffusers'
own all-to-all (``_templated_context_parallel_attention``): our forward op sees the full sequence for H/N heads
(rank r holds heads [r·H/N, (r+1)·H/N), the mask all-gathered by diffusers), per-head τ lists are sliced to those
heads, and each rank records statistics for its heads (``summary()["parallel"]``). Token order: when each rank
holds ``[video_r, text_r]`` (our HunyuanVideo / 1.5 plans), the gathered sequence is ``[video_0, text_0, video_1,
text_1, ...]``; the forward op gathers q/k/v and the key mask into ``[video, text]`` order (device index_select,
no host synchronization), runs XAttention with the text region at N·|video_r| and kv_len from the reordered mask
(prefix check once per transformer forward), and puts the output back in the gathered order. Without text in the
self-attention (Wan) the contiguous split already gathers in global order. A query×key mask [B, 1, S, S]
(HunyuanVideo 1.5's processor) cannot be all-gathered by Ulysses; under Ulysses it is reduced to its key mask
``mask.any(dim=2)`` for dense and sparse calls alike (:func:`ulysses_key_mask`). Ring degree > 1: dense only,
with one warning (a ring pass sees one key shard at a time, and block selection needs all keys of a row). The
inference-only backward raises.
"""

from __future__ import annotations

import functools
import importlib
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from diffusers.hooks import HookRegistry, ModelHook

from ..compile import check_not_fullgraph
from ..config import XAttnConfig
from ..kernels import xattention
from ..kernels.dense import dense_attention, prefix_kv_lens
from ..stats import AttentionStats, Stopwatch
from ..warmup import AttentionPlan, StepTracker
from ..warmup.reuse import SelectionCache, selection_signature

LAYER_HOOK = "xattn_video_layer"
STEP_HOOK = "xattn_video_step"

Label = int | str


@dataclass(frozen=True)
class AttentionLayer:
    """One self-attention module: its number within its transformer, the expert (0 = ``transformer``,
    1 = ``transformer_2``) and the label used in configs and statistics (``5`` or ``"t2.5"``)."""

    module: torch.nn.Module
    index: int
    expert: int = 0

    @property
    def label(self) -> Label:
        return self.index if self.expert == 0 else f"t2.{self.index}"


@dataclass
class XAttentionState:
    """Shared by the hooks of one install: config, one plan per expert, the step, statistics, mask cache."""

    config: XAttnConfig
    plans: dict[int, AttentionPlan]
    tracker: StepTracker
    stats: AttentionStats = field(default_factory=AttentionStats)
    step: int | None = None  # set by StepHook at each transformer forward
    forward: int = 0  # transformer forwards so far (StepHook): the key-padding cache key under Ulysses
    parallel: dict = field(default_factory=lambda: {"ulysses_degree": 1, "ring_degree": 1, "rank": 0})
    warned: set = field(default_factory=set)
    reuse: SelectionCache = field(default_factory=lambda: SelectionCache(0))
    # calibration (xattn_video.calibrate.Collector): observe(step, label, q, k, v, kv_len, text_start) on
    # sparse-eligible calls with a usable mask, before the attention; with observer.run_dense the call runs dense
    observer: Any = None
    _mask: Any = None
    _mask_kv_len: Any = None
    _mask_is_prefix: bool = True
    _mask_host_lens: Any = None
    _mask_key: Any = None
    _orders: dict = field(default_factory=dict)

    @property
    def plan(self) -> AttentionPlan:
        return self.plans[0]

    def record(self, step: int | None, label: Label, density: Any, sparse: bool, watch: Stopwatch | None = None) -> None:
        if self.config.collect_stats or watch is not None:
            self.stats.record(step, label, density, sparse, watch=watch)

    def warn_once(self, key: str, message: str) -> None:
        if key not in self.warned:
            self.warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    def key_padding(self, mask: torch.Tensor | None, cache_key: Any = None) -> tuple[bool, torch.Tensor | None]:
        """(usable, kv_len [B] int32 or None) for an attention mask; usable=False: not a key-padding prefix.

        Accepts a bool mask [B, 1, 1, S] (HunyuanVideo) or [B, 1, S_q, S] whose first query row is the key
        padding (HunyuanVideo 1.5, whose first query is a video token and always valid). The transformer passes one
        mask object to all its blocks, so the prefix check (one host synchronization) runs once per forward.
        ``cache_key``: under Ulysses diffusers all-gathers a new mask object in every layer; the caller passes the
        forward number instead (every layer of one forward has the same key padding in the supported families).
        """
        if mask is None:
            return True, None
        hit = mask is self._mask if cache_key is None else (cache_key, mask.shape) == self._mask_key
        if hit:
            return self._mask_is_prefix, self._mask_kv_len
        kv_len, prefix, lens = None, False, None
        if mask.dtype == torch.bool and mask.dim() == 4 and mask.shape[1] == 1:
            flat = mask[:, 0, 0, :]
            prefix, lens = prefix_kv_lens(flat)  # the one host sync; also the fast dense path's lengths
            kv_len = flat.sum(dim=-1, dtype=torch.int32)
        self._mask, self._mask_kv_len, self._mask_is_prefix = mask, (kv_len if prefix else None), prefix
        self._mask_host_lens = lens
        self._mask_key = None if cache_key is None else (cache_key, mask.shape)
        return prefix, self._mask_kv_len

    def host_kv_lens(self, mask: torch.Tensor | None, cache_key: Any = None) -> tuple[bool, list[int] | None]:
        """(usable, valid key count per batch entry as host ints) of the forward's mask (cached, see above)."""
        usable, _ = self.key_padding(mask, cache_key)
        return usable, (self._mask_host_lens if mask is not None else None)

    def token_order(self, video_local: int, text_local: int, degree: int,
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(perm, inverse) from the gathered ``[video_0, text_0, video_1, ...]`` order to ``[video, text]``; cached
        per layout and device, so a forward builds no index tensors after its first layer."""
        key = (video_local, text_local, degree, str(device))
        if key not in self._orders:
            perm = ulysses_token_order(video_local, text_local, degree, device)
            self._orders[key] = (perm, torch.argsort(perm))
        return self._orders[key]


@dataclass
class _Active:
    state: XAttentionState
    layer: AttentionLayer
    text_start: int | None  # first text token in the joint sequence, None when there is no text
    module_mask: torch.Tensor | None  # key-padding mask the adapter derived at module level (or None)


_ACTIVE: list[_Active] = []  # innermost active XAttention layer last


# ----------------------------------------------------------------------------------------------- hooks
class XAttnLayerHook(ModelHook):
    """Marks a self-attention module as active while it runs; ``layout(module, args, kwargs)`` gives
    ``(text_start, module_mask)`` from the module's own inputs (the family adapter's token layout).

    ``pre_forward``/``post_forward``, not ``new_forward``: diffusers' ``HookRegistry.remove_hook`` rewires the next
    hook's ``forward`` when a hook below it is removed, which drops a ``new_forward`` hook from the chain. So that
    ``transformer.disable_cache()`` (whose hooks may sit below ours) leaves XAttention installed, our hooks only
    ever use ``forward`` (and :func:`remove_hook` fixes the reverse case).
    """

    def __init__(self, state: XAttentionState, layer: AttentionLayer,
                 layout: Callable[[torch.nn.Module, tuple, dict], tuple[int | None, Any]]):
        super().__init__()
        self.state, self.layer, self.layout = state, layer, layout

    # Not traced (the module's forward between them is): see the module docstring, torch.compile.
    @torch.compiler.disable
    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple, dict]:
        text_start, module_mask = self.layout(module, args, kwargs)
        _ACTIVE.append(_Active(self.state, self.layer, text_start, module_mask))
        return args, kwargs

    @torch.compiler.disable
    def post_forward(self, module: torch.nn.Module, output: Any) -> Any:
        if _ACTIVE and _ACTIVE[-1].layer is self.layer:
            _ACTIVE.pop()
        return output


class StepHook(ModelHook):
    """On each transformer forward, reads the denoising step from the pipeline that is calling it."""

    def __init__(self, state: XAttentionState):
        super().__init__()
        self.state = state

    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple, dict]:
        # Blocks compiled with fullgraph=True after the install (diffusers' compile_repeated_blocks, the form its
        # docs show) would fail in dynamo with "Skip inlining torch.compiler.disable()d function": say why.
        check_not_fullgraph(module, "XAttention is installed")
        # a forward that raised inside an attention module left its entry (post_forward never ran): drop it
        _ACTIVE[:] = [a for a in _ACTIVE if a.state is not self.state]
        self.state.step = self.state.tracker.current()
        self.state.forward += 1
        return args, kwargs


def uses_xattention(transformer: torch.nn.Module) -> bool:
    """Whether XAttention is installed on ``transformer`` or on any of its attention modules."""
    return any(has_xattention(m) for m in transformer.modules())


def has_xattention(module: torch.nn.Module) -> bool:
    registry = getattr(module, "_diffusers_hook", None)
    return registry is not None and (registry.get_hook(LAYER_HOOK) is not None
                                     or registry.get_hook(STEP_HOOK) is not None)


def add_hook(module: torch.nn.Module, hook: ModelHook, name: str) -> None:
    HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, name)


def remove_hook(module: torch.nn.Module, name: str) -> None:
    """Remove hook ``name`` from ``module``, keeping every other hook of the chain working.

    diffusers' ``HookRegistry.remove_hook`` points the next hook's ``forward`` at what the removed hook wrapped;
    for a next hook with ``new_forward`` (every step-cache hook) that drops it from the chain and leaves the
    removed hook's wrapper behind. Here the next hook's ``original_forward`` is rewired instead when it has one.
    """
    registry = getattr(module, "_diffusers_hook", None)
    if registry is None or name not in registry.hooks:
        return
    index = registry._hook_order.index(name)
    fn_ref = registry._fn_refs[index]
    old_forward = fn_ref.original_forward if fn_ref.original_forward is not None else fn_ref.forward
    if index == len(registry._hook_order) - 1:
        registry._module_ref.forward = old_forward
    else:
        above = registry._fn_refs[index + 1]
        if above.original_forward is not None:
            above.original_forward = old_forward
        else:
            above.forward = old_forward
    hook = registry.hooks.pop(name)
    registry._module_ref = hook.deinitalize_hook(registry._module_ref)
    registry._hook_order.pop(index)
    registry._fn_refs.pop(index)


# ----------------------------------------------------------------------------------------------- the patch
_PATCHES: dict[str, list] = {}  # python module name -> [original dispatch_attention_fn, install count]


def patch_dispatch(module_names: tuple[str, ...]) -> None:
    """Replace ``dispatch_attention_fn`` in each module by :func:`xattn_dispatch` (reference-counted)."""
    for name in module_names:
        entry = _PATCHES.get(name)
        if entry is None:
            mod = importlib.import_module(name)
            _PATCHES[name] = [mod.dispatch_attention_fn, 1]
            mod.dispatch_attention_fn = functools.partial(xattn_dispatch, _original=mod.dispatch_attention_fn)
        else:
            entry[1] += 1


def unpatch_dispatch(module_names: tuple[str, ...]) -> None:
    """Undo one :func:`patch_dispatch`; the original comes back when the last install is removed."""
    for name in module_names:
        entry = _PATCHES.get(name)
        if entry is None:
            continue
        entry[1] -= 1
        if entry[1] <= 0:
            importlib.import_module(name).dispatch_attention_fn = entry[0]
            del _PATCHES[name]


def parallel_degree(parallel_config: Any) -> tuple[int, int]:
    """(ulysses_degree, ring_degree) of a diffusers ``ParallelConfig`` (1, 1 when None or not context-parallel)."""
    cp = getattr(parallel_config, "context_parallel_config", None) if parallel_config is not None else None
    if cp is None:
        return 1, 1
    return int(cp.ulysses_degree or 1), int(cp.ring_degree or 1)


def ulysses_token_order(video_local: int, text_local: int, degree: int, device: Any = None) -> torch.Tensor:
    """Permutation from the gathered order ``[video_0, text_0, video_1, text_1, ...]`` to ``[video..., text...]``.

    ``x[:, perm]`` puts a gathered [B, S, H, D] tensor in single-GPU token order; ``out[:, torch.argsort(perm)]``
    puts a result back in the order diffusers' all-to-all expects. Built on ``device``: no host synchronization.
    """
    chunk = video_local + text_local
    starts = torch.arange(degree, device=device) * chunk
    video = (starts[:, None] + torch.arange(video_local, device=device)).reshape(-1)
    text = (starts[:, None] + video_local + torch.arange(text_local, device=device)).reshape(-1)
    return torch.cat([video, text])


def ulysses_key_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """A rank's query×key mask [B, 1, S_q, S_k] as the key mask [B, 1, 1, S_k] Ulysses can all-gather.

    diffusers' all-to-all gathers masks along the key axis only, so a per-query mask (HunyuanVideo 1.5's
    processor: ``valid[q] & valid[k]``) would keep S_q = S/N rows for S queries and fail. ``any`` over the queries
    gives ``valid[k]`` whenever a rank holds one valid query (each rank holds video tokens, always valid): exact
    for every valid query; padded queries then attend the valid keys instead of nothing, and padded tokens never
    reach a valid token (they are masked as keys and dropped at the output). Other masks pass through.
    """
    if mask is None or mask.dim() != 4 or mask.shape[2] == 1 or mask.dtype != torch.bool:
        return mask
    return mask.any(dim=2, keepdim=True)


@torch.compiler.disable  # eager inside compiled blocks: see the module docstring, torch.compile
def xattn_dispatch(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0, is_causal: bool = False,
                   scale: float | None = None, enable_gqa: bool = False,
                   attention_kwargs: dict[str, Any] | None = None, *, backend: Any = None,
                   parallel_config: Any = None, _original: Callable[..., torch.Tensor]) -> torch.Tensor:
    """Drop-in for ``dispatch_attention_fn`` ([B, S, H, D] in and out): XAttention inside an active layer.

    Under Ulysses a query×key mask is reduced to its key mask first, also outside XAttention layers (see
    :func:`ulysses_key_mask`)."""
    ulysses, ring = parallel_degree(parallel_config)
    if ulysses > 1:
        attn_mask = ulysses_key_mask(attn_mask)

    def stock() -> torch.Tensor:
        return _original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                         scale=scale, enable_gqa=enable_gqa, attention_kwargs=attention_kwargs, backend=backend,
                         parallel_config=parallel_config)

    active = _ACTIVE[-1] if _ACTIVE else None
    if active is None:
        return stock()
    state, layer, cfg = active.state, active.layer, active.state.config
    step = state.step
    plan = state.plans[layer.expert]
    # Only plain self-attention goes sparse (cross-attention calls inside a hooked module stay dense).
    self_attention = (query.shape[1] == key.shape[1] and not is_causal and dropout_p == 0.0 and scale is None
                      and not enable_gqa)
    mask = active.module_mask if active.module_mask is not None else attn_mask

    def dense() -> torch.Tensor:
        # fast: padded keys dropped, unmasked SDPA with the host lengths of the forward's mask check (no extra sync)
        if (cfg.dense_backend == "fast" and self_attention and backend is None and parallel_config is None
                and not attention_kwargs):
            usable, lens = state.host_kv_lens(mask)
            if usable:
                return dense_attention(query, key, value, lens, precision=cfg.precision)
        return stock()

    if not self_attention or not plan.is_sparse(step, layer.index):
        state.record(step, layer.label, 1.0, sparse=False)
        return dense()
    if ring > 1:
        state.warn_once("ring", "xattn-video: ring context parallelism is not supported by XAttention; those "
                                "attention calls run dense")
        state.record(step, layer.label, 1.0, sparse=False)
        return stock()
    tau = plan.threshold(layer.index)
    if ulysses > 1:
        return _ulysses(query, key, value, attn_mask, parallel_config, active, step, tau)
    usable, kv_len = state.key_padding(mask)
    if not usable:
        state.warn_once("mask", "xattn-video: the attention mask is not a key-padding prefix; those calls run "
                                "dense masked attention")
        state.record(step, layer.label, 1.0, sparse=False)
        return stock()
    text_start = active.text_start if cfg.text_forcing else None
    if state.observer is not None:
        state.observer.observe(step, layer.label, query, key, value, kv_len, text_start)
        if state.observer.run_dense:
            return dense()
    lens = state.host_kv_lens(mask)[1] if state.reuse.enabled else None
    return _sparse(query, key, value, state, layer, step, tau, kv_len, text_start, lens)


def _sparse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: XAttentionState, layer: AttentionLayer,
            step: int | None, tau: Any, kv_len: torch.Tensor | None, text_start: int | None,
            host_lens: list[int] | None = None) -> torch.Tensor:
    """``xattention`` on one call: a reused selection (``selection_reuse``), the operator's own timing marks."""
    cfg = state.config
    signature, selection = None, None
    if state.reuse.enabled:  # host values only: no device read
        signature = selection_signature(q.shape[0], q.shape[1], k.shape[1], q.shape[2], cfg.block_size, host_lens,
                                        text_start)
        selection = state.reuse.get(layer.label, step, signature)
    reused = selection is not None
    watch = Stopwatch(q.device) if cfg.time_stats else None  # marks: estimate, selection, attention
    out, selection = xattention(q, k, v, threshold=tau, stride=cfg.stride, block_size=cfg.block_size, kv_len=kv_len,
                                text_start=text_start, keep_diagonal=cfg.keep_diagonal, max_density=cfg.max_density,
                                backend=cfg.backend, return_selection=True, stopwatch=watch, selection=selection,
                                precision=cfg.precision)
    if signature is not None and not reused:
        state.reuse.put(layer.label, step, signature, selection)
    state.record(step, layer.label, selection.density(), sparse=True, watch=watch)
    return out


def _inference_only_backward(*_: Any, **__: Any) -> Any:
    raise RuntimeError("xattn-video: XAttention is inference-only; its context-parallel attention has no backward")


def _ulysses(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None,
             parallel_config: Any, active: _Active, step: int | None, tau: Any) -> torch.Tensor:
    """The sparse call inside diffusers' Ulysses all-to-all: the op sees the full sequence for this rank's heads.

    ``query`` etc. are this rank's tokens [B, S/N, H, D]; with text in the layer (``active.text_start`` = this
    rank's video tokens) the op reorders the gathered sequence to ``[video, text]`` and back.
    """
    from diffusers.models.attention_dispatch import _templated_context_parallel_attention

    state, layer = active.state, active.layer
    cp = parallel_config.context_parallel_config
    world = int(cp.ulysses_degree)
    rank = int(getattr(cp, "_ulysses_local_rank", 0) or 0)
    state.parallel = {"ulysses_degree": world, "ring_degree": 1, "rank": rank}
    video_local, local = active.text_start, query.shape[1]
    order = None
    if video_local is not None and video_local < local:
        order = state.token_order(video_local, local - video_local, world, query.device)
    text_start = video_local * world if order is not None and state.config.text_forcing else None
    forward_key = state.forward

    def forward_op(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                   dropout_p: float, is_causal: bool, scale: Any, enable_gqa: bool, return_lse: bool,
                   _save_ctx: bool = True, _parallel_config: Any = None) -> torch.Tensor:
        if return_lse:
            raise ValueError("xattn-video: XAttention does not return the log-sum-exp")
        heads = q.shape[2]
        local_tau = tau[rank * heads:(rank + 1) * heads] if isinstance(tau, tuple) else tau
        ordered_mask = mask if order is None or mask is None else mask.index_select(-1, order[0])
        usable, kv_len = state.key_padding(ordered_mask, cache_key=forward_key)
        if not usable:
            state.warn_once("mask", "xattn-video: the attention mask is not a key-padding prefix; those calls "
                                    "run dense masked attention")
            state.record(step, layer.label, 1.0, sparse=False)
            return torch.nn.functional.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask).transpose(1, 2)
        lens = state.host_kv_lens(ordered_mask, cache_key=forward_key)[1] if state.reuse.enabled else None
        if order is None:
            return _sparse(q, k, v, state, layer, step, local_tau, kv_len, text_start, lens)
        perm, inverse = order
        q, k, v = (x.index_select(1, perm) for x in (q, k, v))
        out = _sparse(q, k, v, state, layer, step, local_tau, kv_len, text_start, lens)
        return out.index_select(1, inverse)

    return _templated_context_parallel_attention(query, key, value, attn_mask, 0.0, False, None, False, False,
                                                 forward_op=forward_op, backward_op=_inference_only_backward,
                                                 _parallel_config=parallel_config)
