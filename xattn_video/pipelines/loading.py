"""Loading a HunyuanVideo pipeline: the built-in tiny model, a local diffusers folder, or a hub id."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from ..config import TINY_MODEL, ModelConfig

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
    return model.path == TINY_MODEL


def load_pipeline(model: ModelConfig, pipeline_cls: type | None = None) -> Any:
    """Build or load the pipeline described by ``model`` and place it on its device (or offload it).

    Real checkpoints: transformer in ``model.dtype`` (bfloat16 by default), the rest in float16, VAE tiling
    on unless ``model.vae_tiling`` is false. On the CPU everything runs in float32.
    """
    from diffusers import HunyuanVideoPipeline, HunyuanVideoTransformer3DModel

    from .tiny import build_tiny_pipeline

    cls = pipeline_cls or HunyuanVideoPipeline
    device = resolve_device(model.device)
    on_gpu = device.type == "cuda"
    if model.offload is not None and not on_gpu:
        raise ModelLoadError(f"config key 'model.offload' ({model.offload}) moves models between the CPU and a GPU; "
                             f"the device here is {device}")
    if is_tiny(model):
        pipe = build_tiny_pipeline(pipeline_cls=cls)
        if on_gpu:
            pipe.transformer.to(DTYPES[model.dtype])
        tiling = bool(model.vae_tiling)
    else:
        source = _check_source(model.path)
        dtype = DTYPES[model.dtype] if on_gpu else torch.float32
        try:
            transformer = HunyuanVideoTransformer3DModel.from_pretrained(source, subfolder="transformer",
                                                                         dtype=dtype)
            pipe = cls.from_pretrained(source, transformer=transformer,
                                       dtype=torch.float16 if on_gpu else torch.float32)
        except (OSError, ValueError, ConnectionError) as exc:
            if Path(source).exists():  # a download hint would be wrong for a local folder
                raise ModelLoadError(f"could not load HunyuanVideo from the local folder {model.path!r}: "
                                     f"{str(exc).splitlines()[0]}") from exc
            raise ModelLoadError(
                f"could not load HunyuanVideo from the Hugging Face hub ({model.path!r}): {str(exc).splitlines()[0]}\n"
                f"Without network access, download the diffusers-format checkpoint elsewhere (for example "
                f"hunyuanvideo-community/HunyuanVideo) and pass --model /path/to/that/folder."
            ) from exc
        tiling = model.vae_tiling is not False
    if tiling:
        pipe.vae.enable_tiling()
    if model.offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif model.offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)
    return pipe


def _check_source(path: str) -> str:
    local = Path(path).expanduser()
    if local.exists():
        if not (local / "model_index.json").is_file():
            raise ModelLoadError(f"{local} is not a diffusers pipeline folder (it has no model_index.json)")
        _check_local_files(local)
        return str(local)
    if path.startswith((".", "/", "~")) or not HUB_ID.match(path):
        raise ModelLoadError(f"model path {path!r} does not exist (and is not a hub id of the form owner/name)")
    _check_hub(path)
    return path


# Files every model component of a diffusers folder needs: a config and weights (any of these names).
_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json",
            "diffusion_pytorch_model.bin", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
            "pytorch_model.bin.index.json")


def _check_local_files(local: Path) -> None:
    """Name the first missing file of a local folder (diffusers would say "no file named config.json" in the
    folder's root, not which component lacks it)."""
    import json

    try:
        index = json.loads((local / "model_index.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {local / 'model_index.json'}: {exc}") from None
    if not isinstance(index, dict):
        raise ModelLoadError(f"{local / 'model_index.json'} is not a diffusers model index (not a JSON object)")
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        if name not in index and name != "transformer":
            continue
        folder = local / name
        if not (folder / "config.json").is_file():
            raise ModelLoadError(f"{local} has no {name}/config.json: the folder is not a complete diffusers "
                                 f"checkpoint (copy every component folder that model_index.json lists)")
        if not any((folder / w).is_file() for w in _WEIGHTS):
            example = _WEIGHTS[3] if name.startswith("text_encoder") else _WEIGHTS[0]
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
