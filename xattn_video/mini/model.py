"""The mini model's components: a small Wan 2.1-style text-to-video pipeline (``WanPipeline``) made of a
byte-level tokenizer, a small UMT5 text encoder, a small ``AutoencoderKLWan`` and a ``WanTransformer3DModel``.

All are stock diffusers/transformers classes, so the pipeline folder written by ``save_pretrained`` loads with
``WanPipeline.from_pretrained`` and XAttention installs through the ordinary Wan adapter. The configs live here
so that training, the tests and the shipped folder agree on them.
"""

from __future__ import annotations

from typing import Any

import torch


LATENT_CHANNELS = 8
TEXT_DIM = 128
# Text positions per prompt (bytes + end-of-sequence; the longest training prompt has 104). Generation must pass
# max_sequence_length=TEXT_LEN (the mini presets do), as training encodes prompts exactly as generation does.
# Not WanPipeline's default 512: Wan's cross-attention has no mask, so the zero-padded positions are keys like any
# other; with 512 of them the ~25 prompt positions got 1-5% of the cross-attention mass in every layer of the
# first model trained, whose output barely depended on the prompt.
TEXT_LEN = 128

VAE_CONFIG: dict[str, Any] = dict(
    base_dim=16, z_dim=LATENT_CHANNELS, dim_mult=[1, 2, 2], num_res_blocks=1, temperal_downsample=[True, True],
    scale_factor_spatial=4, scale_factor_temporal=4,  # frames 4k+1 -> k+1 latent frames; 4x4 pixels per latent
    latents_mean=[0.0] * LATENT_CHANNELS, latents_std=[1.0] * LATENT_CHANNELS,  # measured by training
)
TRANSFORMER_CONFIG: dict[str, Any] = dict(
    patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=64, in_channels=LATENT_CHANNELS,
    out_channels=LATENT_CHANNELS, text_dim=TEXT_DIM, freq_dim=256, ffn_dim=1024, num_layers=8, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
)
TEXT_ENCODER_CONFIG: dict[str, Any] = dict(
    vocab_size=384, d_model=TEXT_DIM, d_kv=32, d_ff=512, num_layers=2, num_heads=4, relative_attention_num_buckets=32,
    relative_attention_max_distance=128, dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
)
# Wan's own sampler (UniPC on flow-matching sigmas); flow_shift 3 as Wan uses below 720p
SCHEDULER_CONFIG: dict[str, Any] = dict(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
                                        num_train_timesteps=1000)


def tokens_per_call(frames: int, height: int, width: int) -> int:
    """Video tokens per self-attention call: latent frames x (height/4/2) x (width/4/2)."""
    return ((frames - 1) // 4 + 1) * (height // 8) * (width // 8)


def build_vae(**overrides: Any) -> Any:
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(**{**VAE_CONFIG, **overrides})


def latent_norm(vae: Any, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE's latent mean and std as [1, C, 1, 1, 1] tensors: the pipeline denoises (z - mean) / std."""
    mean = torch.tensor(vae.config.latents_mean, device=device).view(1, -1, 1, 1, 1)
    return mean, torch.tensor(vae.config.latents_std, device=device).view(1, -1, 1, 1, 1)


def build_components(seed: int = 0, flow_shift: float = SCHEDULER_CONFIG["flow_shift"], layers: int | None = None,
                     text_layers: int | None = None) -> dict[str, Any]:
    """Untrained components of the mini pipeline (float32), seeded; the scheduler shifted by ``flow_shift``; the
    transformer and text encoder as :data:`TRANSFORMER_CONFIG` / :data:`TEXT_ENCODER_CONFIG` give them, with
    ``layers`` / ``text_layers`` blocks where not None."""
    from diffusers import UniPCMultistepScheduler, WanTransformer3DModel
    from transformers import ByT5Tokenizer, UMT5Config, UMT5EncoderModel

    text_config = TEXT_ENCODER_CONFIG if text_layers is None else {**TEXT_ENCODER_CONFIG, "num_layers": text_layers}
    transformer_config = TRANSFORMER_CONFIG if layers is None else {**TRANSFORMER_CONFIG, "num_layers": layers}
    torch.manual_seed(seed)
    return {
        "tokenizer": ByT5Tokenizer(),
        "text_encoder": UMT5EncoderModel(UMT5Config(**text_config)),
        "vae": build_vae(),
        "transformer": WanTransformer3DModel(**transformer_config),
        "scheduler": UniPCMultistepScheduler(**{**SCHEDULER_CONFIG, "flow_shift": flow_shift}),
    }


def byte_ids(prompts: list[str], max_len: int = TEXT_LEN) -> tuple[torch.Tensor, torch.Tensor]:
    """ByT5 token ids and attention mask of ``prompts``, cleaned as ``WanPipeline`` cleans them, padded to the
    longest (at most ``max_len``): [B, L] int64 each. The same ids as the pipeline's ``ByT5Tokenizer`` (a byte is
    its value + 3, then end-of-sequence 1), without its per-character Python loop, so training is not held up."""
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean

    rows = [[b + 3 for b in prompt_clean(p).encode("utf-8")][: max_len - 1] + [1] for p in prompts]
    length = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    return ids, (ids > 0).long()


def encode_prompts(text_encoder: Any, prompts: list[str], device: torch.device | str,
                   max_len: int = TEXT_LEN) -> torch.Tensor:
    """What ``WanPipeline.encode_prompt`` gives for ``prompts`` ([B, max_len, TEXT_DIM]: the encoder's states of
    the prompt's tokens, zeros after them), computed over the longest prompt instead of all ``max_len`` positions
    (padding is masked, so the states are the same; padding positions are zeros either way)."""
    ids, mask = byte_ids(prompts, max_len)
    states = text_encoder(ids.to(device), mask.to(device)).last_hidden_state
    states = states * mask.to(device).unsqueeze(-1).to(states.dtype)
    return torch.nn.functional.pad(states, (0, 0, 0, max_len - states.shape[1]))


def build_pipeline(components: dict[str, Any]) -> Any:
    from diffusers import WanPipeline

    return WanPipeline(**components)


def load_folder(folder: Any = None) -> tuple[Any, Any]:
    """(folder, its ``WanPipeline``) for a mini pipeline folder (default: the mini weights, or
    ``XVID_MINI_WEIGHTS``), float32 on the CPU with the transformer in eval mode: what the probe scripts read."""
    from diffusers import WanPipeline

    from . import weights_dir

    folder = folder or weights_dir()
    pipe = WanPipeline.from_pretrained(folder)
    pipe.transformer.eval()
    return folder, pipe


__all__ = ["LATENT_CHANNELS", "SCHEDULER_CONFIG", "TEXT_ENCODER_CONFIG", "TEXT_LEN", "TRANSFORMER_CONFIG",
           "VAE_CONFIG", "build_components", "build_pipeline", "build_vae", "byte_ids", "encode_prompts",
           "latent_norm", "load_folder", "tokens_per_call"]
