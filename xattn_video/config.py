"""Structured configuration (omegaconf): defaults in code, YAML presets in configs/, ``--set`` overrides.

A run is ``RunConfig`` = model + xattn + generation + cache (+ output). Unknown keys and wrong types are errors that
name the key. ``xattn.threshold`` is a float, a list with one entry per layer, or a mapping
``{default: τ, <layer>: τ}``; any entry may be a per-head list.
"""

from __future__ import annotations

import difflib
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .caches.params import CacheConfig, cache_problem

TINY_MODEL = "tiny"
DEFAULT_MODEL = "mini"
DENSE_BACKENDS = ("fast", "stock")
PRECISIONS = ("bf16", "fp8", "int8")  # the same tuple as kernels.backend.PRECISIONS (config imports no torch)
# Built-in tiny random-weight models (their videos are noise) -> what they change in the defaults besides
# TINY_DEFAULTS: sizes that run on a CPU in seconds (Wan 2.1 I2V needs 512 text tokens: its processor hard-codes them).
TINY_MODELS: dict[str, dict[str, Any]] = {
    "tiny": {},
    "tiny-wan": {"generation": {"height": 128, "width": 128, "guidance_scale": 5.0}},
    "tiny-wan22": {"generation": {"height": 128, "width": 128, "guidance_scale": 5.0}},
    "tiny-wan-i2v": {"generation": {"height": 128, "width": 128, "guidance_scale": 5.0, "max_sequence_length": 512}},
    "tiny-wan22-i2v": {"generation": {"height": 128, "width": 128, "guidance_scale": 5.0}},
    "tiny-hunyuan15": {"generation": {"height": 128, "width": 128}},
    "tiny-hunyuan15-i2v": {"generation": {"height": 128, "width": 128}},
    # 64 text tokens: the Llava chat template's assistant header must fit after the default prompt
    "tiny-hunyuan-i2v": {"generation": {"height": 128, "width": 128, "max_sequence_length": 64}},
}


# The trained mini model (xattn_video/mini): two size presets of the same shipped weights, on top of MINI_DEFAULTS.
# Tokens per self-attention call: latents (frames-1)/4+1 x height/4 x width/4, patches 1x2x2.
MINI_MODELS: dict[str, dict[str, Any]] = {
    # 9 x 16 x 16 = 2,304 tokens: a CPU video in < 60 s. The refereed composition (pipelines/clauses.py) at mini
    # only: at mini it gained 2 / 0 objects (CPU / H100) on the 24 two-object tuning pairs and 2 / 1 on the 32
    # held-out pairs; at mini-large it lost 3 of 48 on the tuning pairs (README "Composition schedule")
    "mini": {"generation": {"height": 128, "width": 128, "clause_referee": True}},
    "mini-large": {"generation": {"height": 352, "width": 352}},  # 9 x 44 x 44 = 17,424 tokens: for a GPU
}
MINI_DEFAULTS: dict[str, Any] = {
    "xattn": {"block_size": 128, "stride": 8, "threshold": 0.9, "warmup_steps": 2},
    # "A and B" prompts are composed clause by clause (pipelines/clauses.py) in the first 4 of the 20 steps, at
    # weight 1: the clauses bind each direction to its own object where the layout is decided (σ ≥ 0.97), and the
    # later steps run plain (held-out prompt_match 0.797 / 0.812 at mini / mini-large with weight 0.5 on every step
    # -> 0.859 / 0.844, README "Composition schedule"); clause_steps counts steps: scale it with generation.steps
    "generation": {"prompt": "a red ball moving right", "frames": 33, "steps": 20, "fps": 12, "guidance_scale": 1.0,
                   "clause_weight": 1.0, "clause_steps": 4},
}  # + generation.max_sequence_length and .flow_shift: what the weights were trained with (builtin_defaults reads them)
BUILTIN_MODELS = (*MINI_MODELS, *TINY_MODELS)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name (pipelines/loading.py checks the same form)


def builtin_models() -> dict[str, str]:
    """Every built-in model name (``--model NAME``) → one line saying what it is."""
    names = {name: "trained mini model (shipped weights)" for name in MINI_MODELS}
    names.update({name: "random weights (noise), for tests" for name in TINY_MODELS})
    return names


def unknown_model_message(path: str) -> str:
    """Why ``path`` names no model: not built in, not a folder, not ``owner/name``; with a "did you mean"."""
    if path.startswith((".", "/", "~")) or "/" in path or "\\" in path:
        return f"model path {path!r} does not exist (and is not a hub id of the form owner/name)"
    close = difflib.get_close_matches(path, BUILTIN_MODELS, n=2, cutoff=0.5)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return (f"model {path!r} is not a built-in model, an existing folder or a hub id of the form owner/name; "
            f"{hint}built-in models: {', '.join(BUILTIN_MODELS)}")


def check_model_name(path: str) -> None:
    """Refuse a ``--model`` that cannot name anything (a mistyped built-in name), before any import or download.

    Folders and hub ids are checked when the model loads (``pipelines/loading.py``)."""
    if path in BUILTIN_MODELS or _HUB_ID.match(path) or Path(path).expanduser().exists():
        return
    raise ConfigError(unknown_model_message(path))


def builtin_defaults(name: str) -> list[dict[str, Any]]:
    """What a built-in model name changes in the defaults (merged in order); ``[]`` for other paths."""
    if name in MINI_MODELS:
        from .mini import trained_generation

        return [MINI_DEFAULTS, {"generation": trained_generation(name)}, MINI_MODELS[name]]
    if name in TINY_MODELS:
        return [TINY_DEFAULTS, TINY_MODELS[name]]
    return []


def model_folder(path: str) -> str:
    """The pipeline folder of a trained built-in model (``mini``, ``mini-large``: the shipped weights), else
    ``path`` unchanged."""
    if path in MINI_MODELS:
        from .mini import WEIGHTS_DIR

        return str(WEIGHTS_DIR)
    return path


class ConfigError(ValueError):
    """A configuration key or value that cannot be used; the message names the key."""


class XvidWarning(UserWarning):
    """Input that runs but does not do what it seems to ask (every step dense, a pair listed twice, nothing to
    score); the CLI prints it as one ``warning:`` line."""
# torch.Generator.manual_seed takes -2**63..2**64-1 but negatives alias the top half (-1 is 2**64-1); one
# signed-64-bit range keeps every seed a distinct, portable number in run records.
SEED_MAX = 2**63 - 1


def check_seed(seed: Any, what: str = "config key 'generation.seed'") -> int:
    """``seed`` if torch can take it (an int in 0..2**63-1), else ``ConfigError`` naming ``what``."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise ConfigError(f"{what} must be an integer from 0 to {SEED_MAX} (2**63-1), got {seed!r}")
    return seed


@dataclass
class XAttnConfig:
    """How attention is replaced. Layer numbering per family: HunyuanVideo 0..19 dual-stream, 20..59 single-stream;
    HunyuanVideo 1.5 0..53; Wan blocks 0..39 (14B); Wan 2.2's transformer_2 through ``expert2``."""

    threshold: Any = 0.9  # τ: float | list per layer | {default: τ, layer: τ}; entries may be per-head lists
    stride: int = 8
    block_size: int = 128
    warmup_steps: int = 5  # denoising steps 0..warmup_steps-1 run dense attention, no estimation
    dense_layers: list[int] = field(default_factory=list)  # layers that always run dense
    keep_diagonal: bool = True
    text_forcing: bool = True  # text keys always kept, text queries dense
    max_density: Optional[float] = None
    backend: str = "auto"  # auto | torch | triton
    collect_stats: bool = True  # density per (step, layer); adds no host sync
    time_stats: bool = False  # estimate/attention time per (step, layer); synchronizes, for profiling only
    # Dense calls (warmup steps, dense layers, τ ≥ 1): "fast" drops padded keys and calls unmasked SDPA (cuDNN
    # first; exact up to rounding); "stock" calls diffusers' masked dispatch, bit for bit its numerics.
    dense_backend: str = "fast"
    # Estimate on one sparse step, reuse each layer's block selection on the next N-1 sparse steps (0/1: off).
    selection_reuse: int = 0
    # Attention arithmetic: "bf16" (the model's dtype, exact), "fp8" (q/k in e4m3) or "int8" (q/k in int8), both with
    # per-tile scales, for the sparse kernel and the fast dense path (CUDA only: fp8 from compute capability 8.9,
    # int8 from 8.0). P·V and the estimate stay in bf16.
    precision: str = "bf16"
    # Wan 2.2 A14B: overrides for the second expert (transformer_2), layers numbered from 0 within it:
    # {threshold: ..., dense_layers: [...]}; keys not given are inherited from the keys above.
    expert2: Optional[dict[str, Any]] = None


@dataclass
class ModelConfig:
    path: str = DEFAULT_MODEL  # a built-in name (BUILTIN_MODELS), a local diffusers folder, or a hub id
    dtype: str = "bfloat16"  # transformer dtype on CUDA (CPU runs use float32)
    device: str = "auto"  # auto | cuda | cpu | cuda:N
    offload: Optional[str] = None  # None | model | sequential (diffusers CPU offload)
    vae_tiling: Optional[bool] = None  # default: on for real checkpoints, off for the built-in models
    compile: bool = False  # regional torch.compile of the repeated transformer blocks (generate.compile_pipeline)


@dataclass
class GenerationConfig:
    prompt: str = "A cat walks on the grass, realistic"
    negative_prompt: Optional[str] = None
    height: int = 720
    width: int = 1280
    frames: int = 129
    steps: int = 50
    seed: int = 0
    guidance_scale: float = 6.0  # embedded guidance (HunyuanVideo is guidance-distilled)
    true_cfg_scale: float = 1.0  # > 1 with a negative prompt: two transformer calls per step
    fps: int = 24
    max_sequence_length: int = 256
    image: Optional[str] = None  # conditioning image file, for image-to-video pipelines
    # the flow-matching sampler's shift (pipelines/sampler.py); None: the checkpoint's scheduler config
    flow_shift: Optional[float] = None
    # > 0: a prompt of several clauses ("... and ...") is also predicted clause by clause, blended in with this
    # weight (pipelines/clauses.py; Wan family; 0 off, 1 pure composition)
    clause_weight: float = 0.0
    clause_steps: Optional[int] = None  # compose in the first N denoising steps only (None: every step)
    clause_start: int = 0  # compose from denoising step N on; the steps before run plain (0: from the first)
    # appended to each clause's own text (not the whole prompt's): weights trained with partial captions
    # (mini.train --partial-prob) mark "this object, whatever else is there" so; their training.json sets it
    clause_suffix: str = ""
    clause_referee: bool = False  # keep a clause's difference only where it agrees with the prompt's


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    xattn: XAttnConfig = field(default_factory=XAttnConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)  # diffusers step cache (xattn_video.caches)
    dense: bool = False  # run the stock pipeline (no XAttention), e.g. as the quality reference


# What `--model tiny` changes when no preset says otherwise: sizes that run on a laptop CPU in seconds.
TINY_DEFAULTS: dict[str, Any] = {
    "xattn": {"block_size": 32, "stride": 8, "threshold": 0.9, "warmup_steps": 1},
    "generation": {"height": 256, "width": 256, "frames": 9, "steps": 4, "fps": 8, "max_sequence_length": 32,
                   "guidance_scale": 6.0},
}


def _merge(base: DictConfig, other: Any, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{source}: {_describe(exc)}") from None


def _describe(exc: OmegaConfBaseException) -> str:
    key = getattr(exc, "full_key", None)
    msg = str(exc).splitlines()[0]
    if key:
        return f"config key '{key}': {msg}"
    return msg


def _spaced_flow_mapping(item: str) -> str:
    """``key={default:0.5,3:0.95}`` → ``key={default: 0.5,3: 0.95}``.

    YAML needs a space after a mapping colon; without it ``default:0.5`` is one string key and ``3:0.95`` even
    reads as the base-60 number 180.95. People type it without spaces, so add them inside ``{...}`` values.
    """
    key, _, value = item.partition("=")
    if not value.lstrip().startswith("{"):
        return item
    return key + "=" + re.sub(r":(?=[^\s/])", ": ", value)


def _load_yaml(path: Path) -> Any:
    """The YAML file as omegaconf, or a ``ConfigError`` naming the line and column of a syntax error."""
    import yaml

    try:
        return OmegaConf.load(path)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(f"config file {path}{where}: {what}") from None
    except Exception as exc:  # not UTF-8, unreadable, a YAML error without a position
        raise ConfigError(f"cannot read config file {path}: {str(exc).splitlines()[0]}") from None


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (),
                extra: dict[str, Any] | None = None) -> RunConfig:
    """Defaults ← a built-in model's defaults (mini, tiny, ...) ← YAML file ← ``extra`` ← ``key=value`` overrides."""
    file_cfg = None
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"config file {path} is a directory; give a YAML file (see configs/)")
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        file_cfg = _load_yaml(path)
        if not isinstance(file_cfg, DictConfig):
            raise ConfigError(f"config file {path}: the top level must be a mapping of sections (model:, xattn:, "
                              f"generation:), got a {type(file_cfg).__name__.replace('Config', '').lower()}")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
    try:
        cli_cfg = OmegaConf.from_dotlist([_spaced_flow_mapping(item) for item in overrides])
    except OmegaConfBaseException as exc:
        raise ConfigError(f"--set: {_describe(exc)}") from None

    def build(builtin: str | None) -> DictConfig:
        cfg = OmegaConf.structured(RunConfig)
        for defaults in builtin_defaults(builtin or ""):
            cfg = _merge(cfg, defaults, f"{builtin} defaults")
        if file_cfg is not None:
            cfg = _merge(cfg, file_cfg, str(path))
        if extra:
            cfg = _merge(cfg, extra, "command line")
        return _merge(cfg, cli_cfg, "--set")

    cfg = build(None)
    if cfg.model.path in BUILTIN_MODELS:
        cfg = build(cfg.model.path)
    run: RunConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    validate(run)
    return run


def warn_all_dense(run: RunConfig) -> None:
    """``XvidWarning`` when XAttention is asked for but the warmup covers every step: the video is dense."""
    if not run.dense and run.xattn.warmup_steps >= run.generation.steps:
        warnings.warn(f"xattn.warmup_steps ({run.xattn.warmup_steps}) >= generation.steps ({run.generation.steps}): "
                      f"every step runs dense and XAttention never runs; lower the warmup steps or add --dense",
                      XvidWarning, stacklevel=2)


def to_container(cfg: RunConfig | XAttnConfig) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def xattn_config(value: XAttnConfig | dict | DictConfig | None) -> XAttnConfig:
    """Accept an XAttnConfig, a plain dict or a DictConfig (as users pass to ``apply_xattention``)."""
    if value is None:
        return XAttnConfig()
    if isinstance(value, XAttnConfig):
        cfg = value
    else:
        merged = _merge(OmegaConf.structured(XAttnConfig), value, "xattn config (keys are relative to 'xattn')")
        cfg = OmegaConf.to_object(merged)  # type: ignore[assignment]
    validate_xattn(cfg)
    return cfg


def validate(run: RunConfig) -> None:
    validate_xattn(run.xattn)
    problem = cache_problem(run.cache)
    if problem:
        raise ConfigError(problem)
    g = run.generation
    if g.frames < 1 or (g.frames - 1) % 4:
        raise ConfigError(f"config key 'generation.frames' must be 4k+1 (the VAE compresses time by 4), got {g.frames}")
    for key in ("height", "width"):
        v = getattr(g, key)
        if v < 16 or v % 16:
            raise ConfigError(f"config key 'generation.{key}' must be a positive multiple of 16, got {v}")
    if g.steps < 1:
        raise ConfigError(f"config key 'generation.steps' must be >= 1, got {g.steps}")
    check_seed(g.seed)
    if isinstance(g.clause_weight, bool) or not isinstance(g.clause_weight, (int, float)) or not g.clause_weight >= 0:
        raise ConfigError(f"config key 'generation.clause_weight' must be a number >= 0 (0: off), got {g.clause_weight!r}")
    if g.clause_steps is not None and (isinstance(g.clause_steps, bool) or not isinstance(g.clause_steps, int)
                                       or g.clause_steps < 1):
        raise ConfigError(f"config key 'generation.clause_steps' must be an integer >= 1 (or null: every step), "
                          f"got {g.clause_steps!r}")
    if isinstance(g.clause_start, bool) or not isinstance(g.clause_start, int) or g.clause_start < 0:
        raise ConfigError(f"config key 'generation.clause_start' must be an integer >= 0 (0: from the first step), "
                          f"got {g.clause_start!r}")
    if not isinstance(g.clause_referee, bool):
        raise ConfigError(f"config key 'generation.clause_referee' must be true or false, got {g.clause_referee!r}")
    if not isinstance(g.clause_suffix, str):
        raise ConfigError(f"config key 'generation.clause_suffix' must be a string, got {g.clause_suffix!r}")
    if g.clause_steps is not None and g.clause_start >= g.clause_steps:
        raise ConfigError(f"config key 'generation.clause_start' ({g.clause_start}) must be below "
                          f"'generation.clause_steps' ({g.clause_steps}): no step would be composed")
    if g.flow_shift is not None and not g.flow_shift > 0:
        raise ConfigError(f"config key 'generation.flow_shift' must be > 0 (or null: the model's own), got {g.flow_shift}")
    if g.fps < 1:
        raise ConfigError(f"config key 'generation.fps' must be >= 1, got {g.fps}")
    if run.model.offload not in (None, "model", "sequential"):
        raise ConfigError(f"config key 'model.offload' must be model, sequential or null, got {run.model.offload!r}")
    if run.model.compile and run.model.offload == "sequential":
        # sequential offload moves every weight in per-module hooks inside the compiled blocks: not supported
        raise ConfigError("config key 'model.compile' cannot be combined with model.offload: sequential (use "
                          "--offload model, or --set model.compile=false)")
    if run.model.dtype not in ("bfloat16", "float16", "float32"):
        raise ConfigError(f"config key 'model.dtype' must be bfloat16, float16 or float32, got {run.model.dtype!r}")


def validate_xattn(x: XAttnConfig) -> None:
    def fail(key: str, msg: str) -> None:
        raise ConfigError(f"config key 'xattn.{key}' {msg}")

    if x.stride < 1:
        fail("stride", f"must be >= 1, got {x.stride}")
    if x.block_size < 1 or x.block_size % x.stride:
        fail("block_size", f"must be a positive multiple of xattn.stride ({x.stride}), got {x.block_size}")
    if x.warmup_steps < 0:
        fail("warmup_steps", f"must be >= 0, got {x.warmup_steps}")
    if x.max_density is not None and not 0 < x.max_density <= 1:
        fail("max_density", f"must be in (0, 1] or null, got {x.max_density}")
    if x.backend not in ("auto", "torch", "triton"):
        fail("backend", f"must be auto, torch or triton, got {x.backend!r}")
    if x.dense_backend not in DENSE_BACKENDS:
        fail("dense_backend", f"must be one of {', '.join(DENSE_BACKENDS)}, got {x.dense_backend!r}")
    if isinstance(x.selection_reuse, bool) or not isinstance(x.selection_reuse, int) or x.selection_reuse < 0:
        fail("selection_reuse", f"must be an int >= 0 (0 or 1: estimate on every sparse step), got {x.selection_reuse!r}")
    if x.precision not in PRECISIONS:
        fail("precision", f"must be one of {', '.join(PRECISIONS)}, got {x.precision!r}")
    if x.precision != "bf16" and x.backend == "torch":
        fail("precision", f"{x.precision} runs on the triton backend; xattn.backend is torch")
    if any(not isinstance(layer, int) or layer < 0 for layer in x.dense_layers):
        fail("dense_layers", f"must list layer numbers >= 0, got {x.dense_layers}")
    _check_threshold_values(x.threshold)
    if x.expert2 is not None:
        unknown = sorted(set(x.expert2) - {"threshold", "dense_layers"})
        if unknown:
            fail("expert2", f"may set threshold and dense_layers only, got {unknown}")
        if "threshold" in x.expert2:
            _check_threshold_values(x.expert2["threshold"])
        if any(not isinstance(layer, int) or layer < 0 for layer in x.expert2.get("dense_layers", [])):
            fail("expert2.dense_layers", f"must list layer numbers >= 0, got {x.expert2['dense_layers']}")


def _where(where: str) -> str:
    return f"config key 'xattn.threshold{where}'"


def _tau_entry(value: Any, where: str) -> float | tuple[float, ...]:
    if isinstance(value, (ListConfig, list, tuple)):
        taus = tuple(_tau_scalar(v, where) for v in value)
        if not taus:
            raise ConfigError(f"{_where(where)}: empty per-head list")
        return taus
    return _tau_scalar(value, where)


def _tau_scalar(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{_where(where)}: expected a number, got {value!r}")
    value = float(value)
    if math.isnan(value) or value <= 0:
        raise ConfigError(f"{_where(where)}: τ must be > 0 (τ >= 1 means dense), got {value}")
    return value


def _check_threshold_values(threshold: Any) -> None:
    if isinstance(threshold, (DictConfig, dict)):
        for key, value in threshold.items():
            if key != "default" and not (isinstance(key, int) or (isinstance(key, str) and key.isdigit())):
                raise ConfigError(f"config key 'xattn.threshold.{key}': keys must be layer numbers or 'default'")
            _tau_entry(value, f"[{key}]")
    elif isinstance(threshold, (ListConfig, list, tuple)):
        if threshold and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in threshold):
            for i, v in enumerate(threshold):
                _tau_scalar(v, f"[{i}]")
        else:
            for i, v in enumerate(threshold):
                _tau_entry(v, f"[{i}]")
    else:
        _tau_scalar(threshold, "")


def layer_thresholds(threshold: Any, num_layers: int) -> list[float | tuple[float, ...]]:
    """τ for each of ``num_layers`` layers (a float, or a per-head tuple)."""
    if isinstance(threshold, (DictConfig, dict)):
        items = dict(threshold.items())
        default = _tau_entry(items.pop("default", 0.9), "[default]")
        out: list[float | tuple[float, ...]] = [default] * num_layers
        for key, value in items.items():
            layer = int(key)
            if not 0 <= layer < num_layers:
                raise ConfigError(f"config key 'xattn.threshold.{key}': layer out of range 0..{num_layers - 1}")
            out[layer] = _tau_entry(value, f"[{key}]")
        return out
    if isinstance(threshold, (ListConfig, list, tuple)):
        if len(threshold) != num_layers:
            raise ConfigError(
                f"config key 'xattn.threshold': a list needs one entry per layer ({num_layers}), got {len(threshold)}"
            )
        return [_tau_entry(v, f"[{i}]") for i, v in enumerate(threshold)]
    return [_tau_scalar(threshold, "")] * num_layers
