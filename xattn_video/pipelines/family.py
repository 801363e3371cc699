"""Model families and ``apply_xattention``: what differs per family is declared in a :class:`FamilyAdapter`.

An adapter says which modules are the self-attention layers (and their numbering), which transformer
attributes get XAttention (Wan 2.2 A14B: ``transformer`` and ``transformer_2``), where text tokens sit, and how
the key-padding mask is read at module level. Everything else — dense vs sparse, τ per layer and head,
``dense_layers``, warmup, statistics, context parallelism — is the shared mechanism in :mod:`.dispatch`.

Layer labels in configs and statistics: ``0..N-1`` for ``transformer``; for the second expert
(``transformer_2``) ``"t2.0".."t2.M-1"`` in statistics, and its own τ / dense layers in ``xattn.expert2``
(``{threshold: ..., dense_layers: [...]}``, numbered 0..M-1; keys not given are inherited from ``xattn``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..compile import check_not_fullgraph
from ..config import ConfigError, XAttnConfig, xattn_config
from ..kernels import SUPPORTED_HEAD_DIMS
from ..kernels.api import check_backend_support
from ..kernels.backend import precision_refusal, resolve_backend
from ..stats import AttentionStats
from ..warmup import AttentionPlan, StepTracker
from ..warmup.reuse import SelectionCache
from . import dispatch
from .dispatch import LAYER_HOOK, STEP_HOOK, AttentionLayer, StepHook, XAttentionState, XAttnLayerHook

EXPERT_ATTRS = ("transformer", "transformer_2")


@dataclass(frozen=True)
class FamilyAdapter:
    """What one model family declares (see the module docstring)."""

    name: str
    pipeline_classes: tuple[str, ...]
    patch_modules: tuple[str, ...]  # python modules whose ``dispatch_attention_fn`` the processors call
    attention_layers: Callable[[torch.nn.Module], list[torch.nn.Module]]
    joint_text: bool  # self-attention over [video, text]: text starts after the module's hidden_states
    module_mask: Callable[[Any, torch.Tensor], torch.Tensor | None] | None = None  # (module mask, hidden) -> [B,1,1,S]
    never_sparse: str = ""  # documentation: which attention calls always stay dense, and why


_FAMILIES: list[FamilyAdapter] = []


def register_family(adapter: FamilyAdapter) -> FamilyAdapter:
    _FAMILIES.append(adapter)
    return adapter


def supported_pipelines() -> list[str]:
    _load_builtin()
    return [name for family in _FAMILIES for name in family.pipeline_classes]


def _load_builtin() -> None:
    from . import hunyuan_video, hunyuan_video15, wan  # noqa: F401  (each registers its adapter)


def family_of_class(pipeline_cls: type) -> FamilyAdapter:
    """The adapter for a pipeline class (or a base class); one clear error listing the supported classes."""
    _load_builtin()
    for cls in pipeline_cls.__mro__:
        for family in _FAMILIES:
            if cls.__name__ in family.pipeline_classes:
                return family
    raise TypeError(f"XAttention does not support {pipeline_cls.__name__}; supported pipelines: "
                    f"{', '.join(supported_pipelines())}")


def detect_family(pipe: Any) -> FamilyAdapter:
    """The adapter for ``pipe``'s class (or a base class); one clear error listing the supported classes."""
    return family_of_class(type(pipe))


def _expert_config(cfg: XAttnConfig, expert: int) -> XAttnConfig:
    if expert == 0 or not cfg.expert2:
        return cfg
    overrides = dict(cfg.expert2)
    unknown = sorted(set(overrides) - {"threshold", "dense_layers"})
    if unknown:
        raise ConfigError(f"config key 'xattn.expert2' may set threshold and dense_layers only, got {unknown}")
    return dataclasses.replace(cfg, **overrides, expert2=None)


def _layout(adapter: FamilyAdapter, state: XAttentionState) -> Callable:
    cache: dict[str, Any] = {"src": None, "mask": None}

    def layout(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[int | None, Any]:
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        encoder = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        text_start = hidden.shape[1] if adapter.joint_text and encoder is not None else None
        mask = None
        if adapter.module_mask is not None:
            src = kwargs.get("attention_mask", args[2] if len(args) > 2 else None)
            if src is not None and src is cache["src"]:
                mask = cache["mask"]
            elif src is not None:
                mask = adapter.module_mask(src, hidden)
                cache["src"], cache["mask"] = src, mask  # one mask object per forward: key_padding syncs once
        return text_start, mask

    return layout


@dataclass
class _Installed:
    modules: list[tuple[torch.nn.Module, str]] = field(default_factory=list)


class XAttentionHandle:
    """What ``apply_xattention`` installed: statistics, the plans, and ``remove()`` to restore the pipeline."""

    def __init__(self, pipe: Any, family: FamilyAdapter, layers: list[AttentionLayer], state: XAttentionState,
                 installed: _Installed):
        self.pipe = pipe
        self.family = family
        self.layers = layers
        self.state = state
        self._installed = installed
        self.active = True

    @property
    def config(self) -> XAttnConfig:
        return self.state.config

    @property
    def stats(self) -> AttentionStats:
        return self.state.stats

    @property
    def tracker(self) -> StepTracker:
        return self.state.tracker

    def parallel(self) -> dict:
        """Context-parallel degree seen on the last sparse call: {ulysses_degree, ring_degree, rank}."""
        return dict(self.state.parallel)

    def remove(self) -> None:
        """Remove the hooks and, with the last install, the dispatch patch (idempotent)."""
        if not self.active:
            return
        for module, name in self._installed.modules:
            dispatch.remove_hook(module, name)
        dispatch.unpatch_dispatch(self.family.patch_modules)
        self.state.reuse.clear()  # reused selections hold device memory
        self.active = False

    def reset_stats(self) -> None:
        self.state.stats.clear()

    def summary(self) -> dict:
        out = self.state.stats.summary()
        out["family"] = self.family.name
        out["parallel"] = self.parallel()
        if self.state.config.time_stats:
            out["time_per_step_layer_ms"] = {
                str(step): {str(layer): t for layer, t in layers.items()}
                for step, layers in self.state.stats.timing_table().items()
            }
        return out

    def __enter__(self) -> "XAttentionHandle":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def check_precision_runs(precision: str, device: torch.device) -> None:
    """``ConfigError`` naming ``xattn.precision`` when fp8/int8 cannot run on ``device`` (the CPU, GPUs without the
    tensor cores); bf16 runs anywhere. Called when installing, and by generate/launch before any model loads."""
    why = precision_refusal(precision, device)
    if why is not None:
        raise ConfigError(f"config key 'xattn.precision': {why}")


def apply_xattention(pipe: Any, config: XAttnConfig | dict | None = None) -> XAttentionHandle:
    """Install XAttention on every self-attention layer of a supported diffusers video pipeline.

    ``config``: an ``XAttnConfig``, a dict of its keys, or None for the defaults (τ 0.9, stride 8, 5 dense
    warmup steps). Returns a handle; ``handle.remove()`` (or leaving a ``with`` block) restores the pipeline.
    Nothing is installed when the config does not fit the model (the error names the key).
    """
    family = detect_family(pipe)
    cfg = xattn_config(config)
    experts = [(i, getattr(pipe, attr, None)) for i, attr in enumerate(EXPERT_ATTRS)]
    experts = [(i, t) for i, t in experts if t is not None]
    if not experts:
        raise TypeError(f"{type(pipe).__name__} has no transformer to install XAttention on")
    if any(dispatch.has_xattention(t) for _, t in experts):
        raise RuntimeError("XAttention is already installed on this pipeline's transformer; call .remove() on its "
                           "handle first")
    for _, transformer in experts:  # dynamo would fail at the first forward, far from the cause
        check_not_fullgraph(transformer, "apply_xattention")
    if cfg.expert2 and len(experts) < 2:
        raise ConfigError("config key 'xattn.expert2' is for pipelines with a second expert (transformer_2)")
    layers: list[AttentionLayer] = []
    plans: dict[int, AttentionPlan] = {}
    for expert, transformer in experts:
        heads = int(transformer.config.num_attention_heads)
        head_dim = int(transformer.config.attention_head_dim)
        if head_dim not in SUPPORTED_HEAD_DIMS:
            raise ConfigError(f"the model's attention head_dim is {head_dim}; XAttention supports "
                              f"{SUPPORTED_HEAD_DIMS}")
        modules = family.attention_layers(transformer)
        try:
            plans[expert] = AttentionPlan(_expert_config(cfg, expert), len(modules), heads)
        except ConfigError as exc:
            raise ConfigError(f"{exc} (transformer_2: see xattn.expert2)" if expert else str(exc)) from None
        layers += [AttentionLayer(m, i, expert) for i, m in enumerate(modules)]
        if cfg.backend != "auto":
            device = next(transformer.parameters()).device
            check_backend_support(resolve_backend(cfg.backend, device), cfg.stride, cfg.block_size)
        check_precision_runs(cfg.precision, next(transformer.parameters()).device)
    state = XAttentionState(config=cfg, plans=plans, tracker=StepTracker(pipe),
                            reuse=SelectionCache(cfg.selection_reuse))
    installed = _Installed()
    layout = _layout(family, state)
    for _, transformer in experts:
        dispatch.add_hook(transformer, StepHook(state), STEP_HOOK)
        installed.modules.append((transformer, STEP_HOOK))
    for layer in layers:
        dispatch.add_hook(layer.module, XAttnLayerHook(state, layer, layout), LAYER_HOOK)
        installed.modules.append((layer.module, LAYER_HOOK))
    dispatch.patch_dispatch(family.patch_modules)
    return XAttentionHandle(pipe, family, layers, state, installed)
