"""Loading a pipeline: a built-in tiny model, a local diffusers folder, or a hub id (class from model_index.json)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import torch

from ..config import DEFAULT_MODEL, MINI_MODELS, TINY_MODELS, ModelConfig, RunConfig, unknown_model_message

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class ModelLoadError(RuntimeError):
    """The model could not be found or loaded; the message says what to do."""


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise ModelLoadError(f"config key 'model.device': {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("config key 'model.device' asks for CUDA but no CUDA GPU is available")
    return device


def is_tiny(model: ModelConfig) -> bool:
    return model.path in TINY_MODELS


# Tiny model name -> (builder in tiny.py, keyword arguments). All are built offline with random weights.
_TINY_BUILDERS: dict[str, tuple[str, dict]] = {
    "tiny": ("build_tiny_pipeline", {}),
    "tiny-wan": ("build_tiny_wan_pipeline", {}),
    "tiny-wan22": ("build_tiny_wan_pipeline", {"two_experts": True}),
    "tiny-wan-i2v": ("build_tiny_wan_pipeline", {"i2v": True}),
    "tiny-wan22-i2v": ("build_tiny_wan_pipeline", {"i2v": True, "two_experts": True}),
    "tiny-hunyuan15": ("build_tiny_hunyuan15_pipeline", {}),
    "tiny-hunyuan15-i2v": ("build_tiny_hunyuan15_pipeline", {"i2v": True}),
    "tiny-hunyuan-i2v": ("build_tiny_hunyuan_i2v_pipeline", {}),
}
assert set(_TINY_BUILDERS) == set(TINY_MODELS)


_TINY_CLASSES = {
    "tiny": "HunyuanVideoPipeline", "tiny-wan": "WanPipeline", "tiny-wan22": "WanPipeline",
    "tiny-wan-i2v": "WanImageToVideoPipeline", "tiny-wan22-i2v": "WanImageToVideoPipeline",
    "tiny-hunyuan15": "HunyuanVideo15Pipeline", "tiny-hunyuan15-i2v": "HunyuanVideo15ImageToVideoPipeline",
    "tiny-hunyuan-i2v": "HunyuanVideoImageToVideoPipeline",
}


def pipeline_class_for(model: ModelConfig) -> type:
    """The pipeline class ``load_pipeline`` will build, known before any weights load."""
    import diffusers

    if is_tiny(model):
        return getattr(diffusers, _TINY_CLASSES[model.path])
    return resolve_pipeline_class(pipeline_class_name(_check_source(model.path, files=False)))


def takes_image(cls: type) -> bool:
    """Whether the pipeline is image-to-video (its ``__call__`` takes an ``image``)."""
    import inspect

    return "image" in inspect.signature(cls.__call__).parameters


def build_tiny(name: str, pipeline_cls: type | None = None) -> Any:
    from . import tiny

    builder, kwargs = _TINY_BUILDERS[name]
    if pipeline_cls is not None:
        if name != "tiny":
            raise ModelLoadError(f"a pipeline class can only be given for the tiny HunyuanVideo model, not {name!r}")
        kwargs = {**kwargs, "pipeline_cls": pipeline_cls}
    return getattr(tiny, builder)(**kwargs)


def pipeline_class_name(source: str) -> str:
    """``_class_name`` from the checkpoint's ``model_index.json`` (local folder or hub id, cached or fetched)."""
    import json

    local = Path(source)
    if local.exists():
        index = local / "model_index.json"
    else:
        from huggingface_hub import hf_hub_download

        try:
            index = Path(hf_hub_download(source, "model_index.json"))
        except Exception as exc:  # connection and hub errors come in several types
            raise ModelLoadError(f"cannot read model_index.json of {source!r}: {str(exc).splitlines()[0]}") from None
    try:
        name = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelLoadError(f"{index} is not a readable diffusers model_index.json ({exc})") from None
    if not isinstance(name, str):
        raise ModelLoadError(f"{index} names no pipeline class (_class_name)")
    return name


def resolve_pipeline_class(name: str) -> type:
    """The diffusers pipeline class called ``name`` if XAttention supports it, else a clear error."""
    import diffusers

    from .family import supported_pipelines

    supported = supported_pipelines()
    stock = "HunyuanVideoPipeline" if name == "XAttnHunyuanVideoPipeline" else name
    if stock not in supported:
        raise ModelLoadError(f"the checkpoint is a {name}, which XAttention does not support; supported pipelines: "
                             f"{', '.join(supported)}")
    return getattr(diffusers, stock)


def load_pipeline(model: str | ModelConfig | RunConfig = DEFAULT_MODEL, pipeline_cls: type | None = None,
                  **model_options: Any) -> Any:
    """The ready pipeline of ``model`` (stock diffusers class, XAttention not installed), on its device.

    ``model``: a built-in name (``builtin_models()``: ``mini``, ``tiny``, ...), a local diffusers folder or a hub
    id, with ``model_options`` the other ``ModelConfig`` keys (``device="cpu"``, ``dtype``, ``offload``); or a
    ``ModelConfig`` / ``RunConfig``. The pipeline carries what its model needs at call time (the tiny
    HunyuanVideo models' prompt templates), so ``pipe(prompt=...)`` works as for any diffusers pipeline.

    The pipeline class comes from the checkpoint's ``model_index.json`` (any supported family, see
    ``supported_pipelines()``) unless ``pipeline_cls`` is given. Real checkpoints: transformer(s) in
    ``model.dtype`` (bfloat16 by default), the rest in float16, VAE tiling on unless ``model.vae_tiling`` is
    false. On the CPU everything runs in float32. ``ModelLoadError`` (one line) when it cannot load.
    """
    if isinstance(model, RunConfig):
        model = model.model
    if isinstance(model, str):
        model = ModelConfig(path=model, **model_options)
    elif model_options:
        model = dataclasses.replace(model, **model_options)
    device = resolve_device(model.device)
    on_gpu = device.type == "cuda"
    if model.offload is not None and not on_gpu:
        raise ModelLoadError(f"config key 'model.offload' ({model.offload}) moves models between the CPU and a GPU; "
                             f"the device here is {device}")
    if is_tiny(model):
        pipe = build_tiny(model.path, pipeline_cls)
        if on_gpu:
            for attr in ("transformer", "transformer_2"):
                if getattr(pipe, attr, None) is not None:
                    getattr(pipe, attr).to(DTYPES[model.dtype])
        tiling = bool(model.vae_tiling)
    else:
        source = _check_source(model.path, files=False)
        cls = pipeline_cls or resolve_pipeline_class(pipeline_class_name(source))
        if Path(source).exists():
            _check_local_files(Path(source))  # after the class: an unsupported pipeline is said first
        _check_extras(cls)
        dtype = DTYPES[model.dtype] if on_gpu else torch.float32
        rest = torch.float16 if on_gpu else torch.float32
        try:
            dtypes = {"transformer": dtype, "transformer_2": dtype, "default": rest}
            if cls.__name__.startswith("Wan"):
                dtypes["vae"] = torch.float32  # as Wan's model cards load it
            if model.path in MINI_MODELS:
                dtypes["default"] = torch.float32  # its text encoder and VAE are small: no reason to round them
            pipe = cls.from_pretrained(source, dtype=dtypes)
        except (OSError, ValueError, ConnectionError) as exc:
            if Path(source).exists():  # a download hint would be wrong for a local folder
                raise ModelLoadError(f"could not load {cls.__name__} from the local folder {model.path!r}: "
                                     f"{str(exc).splitlines()[0]}") from exc
            raise ModelLoadError(
                f"could not load {cls.__name__} from the Hugging Face hub ({model.path!r}): "
                f"{str(exc).splitlines()[0]}\n"
                f"Without network access, download the diffusers-format checkpoint elsewhere (for example "
                f"hunyuanvideo-community/HunyuanVideo) and pass --model /path/to/that/folder."
            ) from exc
        tiling = model.vae_tiling is not False if model.path not in MINI_MODELS else bool(model.vae_tiling)
    if tiling and hasattr(pipe.vae, "enable_tiling"):
        pipe.vae.enable_tiling()
    if model.offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif model.offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)
    return pipe


def _check_extras(cls: type) -> None:
    import importlib.util

    if cls.__name__ == "WanImageToVideoPipeline" and importlib.util.find_spec("ftfy") is None:
        raise ModelLoadError("WanImageToVideoPipeline needs the ftfy package (diffusers calls it on every prompt): "
                             "pip install ftfy")


def _check_source(path: str, files: bool = True) -> str:
    """The local folder or hub id to load; ``files``: also check a local folder's component files."""
    if path in MINI_MODELS:
        from ..mini import weights_dir

        try:
            return str(weights_dir())
        except FileNotFoundError as exc:
            raise ModelLoadError(str(exc)) from None
    local = Path(path).expanduser()
    if local.exists():
        if not (local / "model_index.json").is_file():
            raise ModelLoadError(f"{local} is not a diffusers pipeline folder (it has no model_index.json)")
        if files:
            _check_local_files(local)
        return str(local)
    if path.startswith((".", "/", "~")) or not HUB_ID.match(path):
        raise ModelLoadError(unknown_model_message(path))
    _check_hub(path)
    return path


# Files every model component of a diffusers folder needs: a config and weights (any of these names).
_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json",
            "diffusion_pytorch_model.bin", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
            "pytorch_model.bin.index.json")


def read_model_index(local: Path) -> dict:
    """A local folder's ``model_index.json``; one-line ``ModelLoadError`` when it is not a readable JSON object."""
    import json

    try:
        index = json.loads((local / "model_index.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {local / 'model_index.json'}: {exc}") from None
    if not isinstance(index, dict):
        raise ModelLoadError(f"{local / 'model_index.json'} is not a diffusers model index (not a JSON object)")
    return index


def _check_local_files(local: Path) -> None:
    """Name the first missing file of a local folder (diffusers would say "no file named config.json" in the
    folder's root, not which component lacks it)."""
    index = read_model_index(local)
    for name in ("transformer", "transformer_2", "vae", "text_encoder", "text_encoder_2", "image_encoder"):
        entry = index.get(name)
        # [null, null]: a component the family has but this checkpoint does not use (Wan 2.2 TI2V-5B)
        if name != "transformer" and not (isinstance(entry, list) and entry and entry[0] is not None):
            continue
        folder = local / name
        if not (folder / "config.json").is_file():
            raise ModelLoadError(f"{local} has no {name}/config.json: the folder is not a complete diffusers "
                                 f"checkpoint (copy every component folder that model_index.json lists)")
        if not any((folder / w).is_file() for w in _WEIGHTS):
            example = _WEIGHTS[3] if name.startswith(("text_encoder", "image_encoder")) else _WEIGHTS[0]
            raise ModelLoadError(f"{local} has no weights in {name}/ (such as {name}/{example})")


def _check_hub(repo_id: str) -> None:
    """Fail fast, with a clear message, when a hub model is neither cached nor reachable.

    (Without this, a machine without network spends half a minute in download retries and then reports a
    misleading "no file named config.json".)
    """
    import huggingface_hub
    from huggingface_hub import constants

    if isinstance(huggingface_hub.try_to_load_from_cache(repo_id, "model_index.json"), str):
        return  # in the local cache: from_pretrained works offline
    hint = "download the diffusers-format checkpoint elsewhere and pass --model /path/to/that/folder"
    if constants.HF_HUB_OFFLINE:
        raise ModelLoadError(f"{repo_id!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; {hint}")
    try:
        huggingface_hub.model_info(repo_id, timeout=15)
    except huggingface_hub.errors.RepositoryNotFoundError:
        raise ModelLoadError(f"there is no model {repo_id!r} on the Hugging Face hub (or it needs a login)") from None
    except Exception as exc:  # connection errors come from the HTTP client in several types
        raise ModelLoadError(f"cannot reach the Hugging Face hub to download {repo_id!r} "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); {hint}") from None
