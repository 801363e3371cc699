"""Context parallelism (Ulysses) on a pipeline's transformer through diffusers' own engine.

diffusers ships ``_cp_plan`` for Wan but none for HunyuanVideo or HunyuanVideo 1.5; the plans below fill that
gap in diffusers' format (``ContextParallelInput`` / ``ContextParallelOutput``), and ``enable_context_parallel``
applies them with ``transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=N))``. We add no
collectives: splitting, gathering and the attention all-to-all are diffusers'.

Token layout under Ulysses with degree N. HunyuanVideo keeps image and text tokens in separate streams and
concatenates them inside attention as ``[image, text]``. The plan splits both streams into N equal contiguous
chunks, so rank r holds ``[image_r, text_r]``; after diffusers' all-to-all every rank holds, for H/N heads, the
full sequence in *rank-chunk order* ``[image_0, text_0, image_1, text_1, ...]``. Dense attention does not care
(the key mask is all-gathered in the same order). XAttention needs ``[image, text]`` order (text region,
key-padding prefix): its dispatch reorders with ``ulysses_token_order`` and back (pipelines/dispatch.py). Wan
(diffusers' plan) has no text in self-attention and splits the video tokens contiguously, so the gathered order is
already the global one.

Order of installs: XAttention's hooks leave the attention processors untouched, so ``apply_xattention`` and
``enable_context_parallel`` work in either order (the processors keep the ``_parallel_config`` diffusers gives
them).

Ring attention (ring degree > 1) is refused: XAttention selects blocks from a whole row of block scores, which
a ring rank never holds; Ulysses keeps the whole sequence per head, so the sparse step is exact per rank.
"""

from __future__ import annotations

import contextlib
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from ..config import ConfigError, GenerationConfig, ModelConfig
from .dispatch import ulysses_token_order  # noqa: F401  (re-exported: the token order under our plans)

# How latents relate to pixels, per transformer class: VAE compression (time, space) and whether the text stream
# is split across ranks (Wan's own plan keeps text whole: it is cross-attention keys, not part of the sequence).
_FAMILIES: dict[str, dict[str, Any]] = {
    "HunyuanVideoTransformer3DModel": {"vae_t": 4, "vae_s": 8, "text_split": True},
    "HunyuanVideo15Transformer3DModel": {"vae_t": 4, "vae_s": 16, "text_split": True},
    "WanTransformer3DModel": {"vae_t": 4, "vae_s": 8, "text_split": False},
}


def hunyuan_video_cp_plan() -> dict:
    """Context-parallel plan for ``HunyuanVideoTransformer3DModel`` (text-to-video, no token replacement).

    - ``encoder_attention_mask`` [B, T] is split at the model input, so the transformer builds each rank's block
      mask [B, 1, 1, S_img/N + T/N] from its own text chunk (a prefix mask stays a prefix within a chunk). The
      token refiner needs the whole mask; ``_RefinerMaskHook`` hands it the unsplit one.
    - ``x_embedder`` output [B, S_img, C] and ``context_embedder`` output [B, T, C] are split along tokens, after
      the refiner has attended over the whole prompt.
    - ``rope`` outputs (cos, sin), each [S_img, D], are split like the image tokens.
    - ``proj_out`` output [B, S_img, C'] is gathered back.
    """
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    return {
        "": {"encoder_attention_mask": ContextParallelInput(split_dim=1, expected_dims=2, split_output=False)},
        "x_embedder": {0: ContextParallelInput(split_dim=1, expected_dims=3, split_output=True)},
        "context_embedder": {0: ContextParallelInput(split_dim=1, expected_dims=3, split_output=True)},
        "rope": {
            0: ContextParallelInput(split_dim=0, expected_dims=2, split_output=True),
            1: ContextParallelInput(split_dim=0, expected_dims=2, split_output=True),
        },
        "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
    }


def hunyuan_video15_cp_plan() -> dict:
    """Context-parallel plan for ``HunyuanVideo15Transformer3DModel``.

    Its text tokens (Qwen, ByT5, image embedding) are merged and reordered per sample inside ``forward``, so the
    split happens at the first block: image and merged text tokens along dim 1, the merged text mask [B, T] at
    every block (each block receives the same whole mask). ``rope`` outputs and ``proj_out`` as for HunyuanVideo.

    diffusers' HunyuanVideo 1.5 processor turns the text mask into a query×key mask [B, 1, S, S], which Ulysses
    cannot all-gather (it gathers key masks: "size of tensor a (2S) must match ... (S)"). ``enable_context_parallel``
    therefore routes that module's attention through our dispatch, which reduces it to the key mask
    ``mask.any(dim=2, keepdim=True)`` under Ulysses (``dispatch.ulysses_key_mask``; exact for every valid token,
    tests/test_parallel.py: 2 ranks = 1 rank), with or without XAttention.
    """
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    return {
        "transformer_blocks.0": {
            "hidden_states": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False),
            "encoder_hidden_states": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False),
        },
        "transformer_blocks.*": {
            "attention_mask": ContextParallelInput(split_dim=1, expected_dims=2, split_output=False),
        },
        "rope": {
            0: ContextParallelInput(split_dim=0, expected_dims=2, split_output=True),
            1: ContextParallelInput(split_dim=0, expected_dims=2, split_output=True),
        },
        "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
    }


_OUR_PLANS = {
    "HunyuanVideoTransformer3DModel": hunyuan_video_cp_plan,
    "HunyuanVideo15Transformer3DModel": hunyuan_video15_cp_plan,
}


def cp_plan_for(transformer: Any) -> dict | None:
    """Our plan for this transformer, or None when diffusers' own ``_cp_plan`` is used (Wan)."""
    name = type(transformer).__name__
    if name in _OUR_PLANS:
        if getattr(transformer.config, "image_condition_type", None) == "token_replace":
            raise ConfigError("context parallelism does not support HunyuanVideo's token_replace image "
                              "conditioning (its first-frame tokens would be split across ranks)")
        return _OUR_PLANS[name]()
    if getattr(type(transformer), "_cp_plan", None) is not None:
        return None
    raise ConfigError(f"{name} has no context-parallel plan (in diffusers or in xattn-video); multi-GPU "
                      f"generation supports {', '.join(sorted(_FAMILIES))}")


# ----------------------------------------------------------------------------------------------- validation


def check_heads(heads: int, degree: int, what: str = "the model") -> None:
    """Ulysses gives each rank heads/degree whole heads: the degree must divide the head count."""
    if degree < 1:
        raise ConfigError(f"--gpus must be >= 1, got {degree}")
    if heads % degree:
        divisors = [d for d in range(2, 9) if heads % d == 0] or [1]
        raise ConfigError(f"{what} has {heads} attention heads, which do not divide across {degree} GPUs "
                          f"(Ulysses gives each GPU whole heads); use --gpus {'/'.join(map(str, divisors))}")


def hunyuan_i2v_template(model_path: str | None) -> dict:
    """The prompt template HunyuanVideo image-to-video runs with: the one a tiny model passes to its pipeline
    (``tiny_call_kwargs``, as generation does), else diffusers' default."""
    from .tiny import tiny_call_kwargs

    template = tiny_call_kwargs(model_path or "").get("prompt_template")
    if template is not None:
        return template
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video_image2video import DEFAULT_PROMPT_TEMPLATE

    return DEFAULT_PROMPT_TEMPLATE


def condition_tokens(family: str, transformer_config: dict, generation: GenerationConfig,
                     model_path: str | None = None) -> int:
    """Tokens of the text stream of one transformer call (padded text: ``max_sequence_length``).

    HunyuanVideo image-to-video (``latent_concat``; ``token_replace`` has no multi-GPU plan): the Llava encoder
    puts the image features in front of the prompt, the pipeline keeps every 2nd of them (``image_embed_interleave``
    2, also for the negative prompt) and crops 4 assistant-header tokens from the text: 288 + 256 − 4 = 540 with
    diffusers' default template."""
    if family != "HunyuanVideoTransformer3DModel" or not transformer_config.get("image_condition_type"):
        return generation.max_sequence_length
    template = hunyuan_i2v_template(model_path)
    image = template["image_emb_end"] - template["image_emb_start"]
    return -(-image // 2) + generation.max_sequence_length - 4


def token_counts(family: str, transformer_config: dict, generation: GenerationConfig,
                 vae_config: dict | None = None, model_path: str | None = None) -> tuple[int, int]:
    """(image tokens, text tokens) of one transformer call for this generation.

    The VAE's compression comes from ``vae_config`` when given (Wan 2.2 5B compresses space by 16, not 8);
    ``model_path`` picks HunyuanVideo I2V's prompt template (see :func:`condition_tokens`).
    """
    spec = _FAMILIES[family]
    vae = vae_config or {}
    vae_t = vae.get("temporal_compression_ratio", vae.get("scale_factor_temporal")) or spec["vae_t"]
    vae_s = vae.get("spatial_compression_ratio", vae.get("scale_factor_spatial")) or spec["vae_s"]
    patch = transformer_config.get("patch_size", 2)
    patch_t = transformer_config.get("patch_size_t", 1)
    if isinstance(patch, (list, tuple)):  # Wan: (t, h, w)
        patch_t, patch = patch[0], patch[1]
    latent_frames = (generation.frames - 1) // vae_t + 1
    h = generation.height // vae_s // patch
    w = generation.width // vae_s // patch
    return (latent_frames // patch_t) * h * w, condition_tokens(family, transformer_config, generation, model_path)


def check_sequence(family: str, transformer_config: dict, generation: GenerationConfig, degree: int,
                   vae_config: dict | None = None, model_path: str | None = None) -> None:
    """diffusers' equipartition split asserts that every split length divides by the degree; say so up front."""
    image, text = token_counts(family, transformer_config, generation, vae_config, model_path)
    g = generation
    if image % degree:
        raise ConfigError(f"{g.width}x{g.height}x{g.frames} gives {image:,} image tokens, which do not split "
                          f"evenly across {degree} GPUs (Ulysses splits the sequence); choose another --gpus "
                          f"or size")
    if _FAMILIES[family]["text_split"] and text % degree:
        if text != g.max_sequence_length:
            raise ConfigError(f"config key 'generation.max_sequence_length' ({g.max_sequence_length}) gives {text} "
                              f"text-stream tokens with the image features, which must divide by the number of "
                              f"GPUs ({degree}): Ulysses splits the text tokens too")
        raise ConfigError(f"config key 'generation.max_sequence_length' ({text} text tokens) must divide by the "
                          f"number of GPUs ({degree}): Ulysses splits the text tokens too")


def read_transformer_config(model: ModelConfig) -> tuple[str, dict, dict | None]:
    """(transformer class name, its config, the VAE's config or None) without loading any weights."""
    from .loading import _check_source, is_tiny, read_model_index

    if is_tiny(model):
        from .tiny import tiny_transformer_config

        return tiny_transformer_config(model.path)
    source = _check_source(model.path, files=False)  # configs only: no weights needed to check the layout
    local = Path(source).expanduser()
    if local.exists():
        read_model_index(local)  # a broken index is named as such, not as a missing component config

    def read(name: str, required: bool) -> dict | None:
        try:
            if local.exists():
                path = local / name
            else:
                from huggingface_hub import hf_hub_download

                path = Path(hf_hub_download(source, name))
            return json.loads(Path(path).read_text())
        except Exception as exc:  # missing file, JSON or hub errors
            if required:
                raise ConfigError(f"cannot read {name} of {model.path}: {exc}") from None
            return None

    config = read("transformer/config.json", True)
    return config.get("_class_name", "HunyuanVideoTransformer3DModel"), config, read("vae/config.json", False)


def validate_parallel(model: ModelConfig, generation: GenerationConfig, degree: int) -> dict:
    """Every check that can fail before weights load: heads, sequence split, supported family.

    Returns the layout record (family, heads, degree, tokens per rank).
    """
    family, config, vae_config = read_transformer_config(model)
    if family not in _FAMILIES:
        raise ConfigError(f"{family} has no context-parallel plan; multi-GPU generation supports "
                          f"{', '.join(sorted(_FAMILIES))}")
    heads = int(config.get("num_attention_heads", 24 if "Hunyuan" in family else 40))
    check_heads(heads, degree, f"{family} ({model.path})")
    if degree > 1:
        check_sequence(family, config, generation, degree, vae_config, model.path)
    image, text = token_counts(family, config, generation, vae_config, model.path)
    return {"family": family, "heads": heads, "heads_per_rank": heads // degree, "ulysses_degree": degree,
            "ring_degree": 1, "image_tokens": image, "text_tokens": text}


# ------------------------------------------------------------------------------------------------- enabling


class _FullMaskBox:
    """The unsplit text mask of the current transformer call, for the token refiner."""

    mask: torch.Tensor | None = None


def _argument(module: torch.nn.Module, name: str, args: tuple, kwargs: dict) -> tuple[Any, int | None]:
    if name in kwargs:
        return kwargs[name], None
    params = list(inspect.signature(type(module).forward).parameters)[1:]
    index = params.index(name)
    return (args[index], index) if index < len(args) else (None, None)


def _mask_hooks(box: _FullMaskBox) -> tuple[Any, Any]:
    from diffusers.hooks import ModelHook

    class RecordMaskHook(ModelHook):
        """Outermost hook on the transformer: remembers the whole mask before diffusers splits it."""

        def pre_forward(self, module, *args, **kwargs):
            box.mask, _ = _argument(module, "encoder_attention_mask", args, kwargs)
            return args, kwargs

    class RefinerMaskHook(ModelHook):
        """On the token refiner: attention over the whole prompt needs the whole mask back."""

        def pre_forward(self, module, *args, **kwargs):
            mask, index = _argument(module, "attention_mask", args, kwargs)
            if mask is not None and box.mask is not None:
                if index is None:
                    kwargs["attention_mask"] = box.mask
                else:
                    args = args[:index] + (box.mask,) + args[index + 1:]
            return args, kwargs

    return RecordMaskHook(), RefinerMaskHook()


@contextlib.contextmanager
def _cpu_accelerator_shim() -> Iterator[None]:
    """diffusers 0.42.1 computes ``rank % torch.accelerator.device_count()``, which is 0 on CPU-only torch."""
    accel = getattr(torch, "accelerator", None)
    if accel is None or accel.device_count() > 0:
        yield
        return
    original = accel.device_count
    accel.device_count = lambda: 1
    try:
        yield
    finally:
        accel.device_count = original


@dataclass
class ParallelLayout:
    """What ``enable_context_parallel`` set up; goes into run records."""

    ulysses_degree: int
    world_size: int
    rank: int
    backend: str
    device: str
    transformers: list[str] = field(default_factory=list)

    def record(self) -> dict:
        return {"ulysses_degree": self.ulysses_degree, "ring_degree": 1, "world_size": self.world_size,
                "backend": self.backend, "transformers": self.transformers}


def pipeline_transformers(pipe: Any) -> list[tuple[str, Any]]:
    """The pipeline's denoising transformers (Wan 2.2 has two)."""
    return [(name, getattr(pipe, name)) for name in ("transformer", "transformer_2")
            if getattr(pipe, name, None) is not None]


def enable_context_parallel(pipe: Any, degree: int | None = None) -> ParallelLayout:
    """Ulysses context parallelism of ``degree`` (default: the world size) on every transformer of ``pipe``.

    Needs an initialized default process group (``torch.distributed.init_process_group``; NCCL on GPUs, gloo
    on the CPU) and the pipeline on this rank's device. Works before or after ``apply_xattention``.
    """
    import torch.distributed as dist
    from diffusers import ContextParallelConfig
    from torch.distributed.device_mesh import init_device_mesh

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("enable_context_parallel needs torch.distributed initialized (run under torchrun)")
    world = dist.get_world_size()
    degree = world if degree is None else degree
    if degree != world:
        raise ConfigError(f"the Ulysses degree ({degree}) must equal the number of ranks ({world})")
    layout = ParallelLayout(ulysses_degree=degree, world_size=world, rank=dist.get_rank(),
                            backend=str(dist.get_backend()), device="")
    for name, transformer in pipeline_transformers(pipe):
        check_heads(int(transformer.config.num_attention_heads), degree, type(transformer).__name__)
        plan = cp_plan_for(transformer)
        device = next(transformer.parameters()).device
        layout.device = str(device)
        # Our own mesh, on the transformer's device type: diffusers would build it on the default accelerator,
        # which is wrong for --device cpu on a GPU machine.
        mesh = init_device_mesh(device.type, (1, degree), mesh_dim_names=("ring", "ulysses"))
        with _cpu_accelerator_shim():
            transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=degree, mesh=mesh),
                                           cp_plan=plan)
        if type(transformer).__name__ == "HunyuanVideoTransformer3DModel":
            _install_refiner_mask(transformer)
        if type(transformer).__name__ == "HunyuanVideo15Transformer3DModel":
            _reduce_query_key_mask()
        layout.transformers.append(name)
    return layout


def _reduce_query_key_mask() -> None:
    """HunyuanVideo 1.5's processor builds a query×key mask that Ulysses cannot all-gather; route its attention
    through our dispatch, which reduces such masks to key masks under Ulysses (``dispatch.ulysses_key_mask``) and
    otherwise delegates untouched. Reference-counted like an XAttention install; it stays for the process."""
    from .dispatch import patch_dispatch
    from .hunyuan_video15 import HUNYUAN_VIDEO15

    patch_dispatch(HUNYUAN_VIDEO15.patch_modules)


def _install_refiner_mask(transformer: Any) -> None:
    from diffusers.hooks import HookRegistry

    box = _FullMaskBox()
    record, refiner = _mask_hooks(box)
    # Registered after diffusers' split hook on the same module, so it runs first and sees the whole mask.
    HookRegistry.check_if_exists_or_initialize(transformer).register_hook(record, "xvid_cp_record_text_mask")
    HookRegistry.check_if_exists_or_initialize(transformer.context_embedder).register_hook(
        refiner, "xvid_cp_refiner_text_mask")
