"""A tiny random-weight HunyuanVideo pipeline built fully offline (no downloads).

Its output is noise: the weights are random. It exists so that the whole path — text encoders, the
transformer with XAttention (2 heads of head_dim 64, so the real kernels run), the VAE and the mp4 writer —
can be run and tested on a laptop CPU in seconds.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoTransformer3DModel
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel, PreTrainedTokenizerFast

# With the byte-level tokenizer below, HunyuanVideo's long Llama prompt template would use up the whole
# text budget, so the tiny model takes the prompt as it is.
TINY_PROMPT_TEMPLATE = {"template": "{}", "crop_start": 0}
TINY_TEXT_DIM = 32
# The tiny transformer's config (2 heads of head_dim 64), readable without building the model.
TINY_TRANSFORMER_CONFIG = dict(
    in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=64, num_layers=2,
    num_single_layers=2, num_refiner_layers=1, mlp_ratio=2.0, patch_size=2, patch_size_t=1,
    guidance_embeds=True, text_embed_dim=TINY_TEXT_DIM, pooled_projection_dim=TINY_TEXT_DIM,
    rope_axes_dim=(16, 24, 24),
)


def byte_tokenizer(max_length: int) -> PreTrainedTokenizerFast:
    """Byte-level tokenizer made in code: every UTF-8 byte is a token, so any prompt tokenizes."""
    specials = ["<pad>", "<s>", "</s>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   model_max_length=max_length)


def build_tiny_components(seed: int = 0) -> dict:
    """Components of a tiny HunyuanVideo pipeline with seeded random weights (float32)."""
    vocab = 3 + 256
    torch.manual_seed(seed)
    text_encoder = LlamaModel(LlamaConfig(
        vocab_size=vocab, hidden_size=TINY_TEXT_DIM, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    ))
    text_encoder_2 = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab, hidden_size=TINY_TEXT_DIM, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=TINY_TEXT_DIM,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    ))
    transformer = HunyuanVideoTransformer3DModel(**TINY_TRANSFORMER_CONFIG)
    vae = AutoencoderKLHunyuanVideo(
        in_channels=3, out_channels=3, latent_channels=4,
        block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4,
        spatial_compression_ratio=8, temporal_compression_ratio=4, mid_block_add_attention=True,
    )
    return {
        "transformer": transformer,
        "vae": vae,
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=7.0),
        "text_encoder": text_encoder.eval(),
        "tokenizer": byte_tokenizer(512),
        "text_encoder_2": text_encoder_2.eval(),
        "tokenizer_2": byte_tokenizer(77),
    }


def build_tiny_pipeline(seed: int = 0, pipeline_cls: type | None = None):
    """A tiny ``HunyuanVideoPipeline`` (or ``pipeline_cls``) with random weights; its videos are noise."""
    from diffusers import HunyuanVideoPipeline

    cls = pipeline_cls or HunyuanVideoPipeline
    return cls(**build_tiny_components(seed))
