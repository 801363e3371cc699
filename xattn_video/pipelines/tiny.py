"""A tiny random-weight HunyuanVideo pipeline built fully offline (no downloads).

Its output is noise: the weights are random. It exists so that the whole path — text encoders, the
transformer with XAttention (2 heads of head_dim 64, so the real kernels run), the VAE and the mp4 writer —
can be run and tested on a laptop CPU in seconds.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from diffusers import AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoTransformer3DModel
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
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


def tiny_transformer_config(name: str) -> tuple[str, dict, dict | None]:
    """(transformer class, the config keys the multi-GPU checks read, VAE compression) of a tiny model, without
    building it."""
    if name.startswith("tiny-wan"):
        return ("WanTransformer3DModel",
                {"num_attention_heads": 2, "patch_size": [1, 2, 2], "rope_max_seq_len": TINY_WAN_ROPE_POSITIONS}, None)
    if name.startswith("tiny-hunyuan15"):
        return ("HunyuanVideo15Transformer3DModel", {"num_attention_heads": 2, "patch_size": 1, "patch_size_t": 1},
                {"spatial_compression_ratio": 16, "temporal_compression_ratio": 4})
    if name == "tiny-hunyuan-i2v":
        return "HunyuanVideoTransformer3DModel", dict(TINY_HV_I2V_TRANSFORMER_CONFIG), None
    return "HunyuanVideoTransformer3DModel", dict(TINY_TRANSFORMER_CONFIG), None


def byte_tokenizer(max_length: int) -> PreTrainedTokenizerFast:
    """Byte-level tokenizer made in code: every UTF-8 byte is a token, so any prompt tokenizes."""
    specials = ["<pad>", "<s>", "</s>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # A leading <s> as real Llama/CLIP tokenizers add: without it the empty prompt has no valid text token, an
    # all-zero text mask, and the token refiner's masked mean is 0/0 (a video of NaN frames).
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
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
    return carry_prompt_template(cls(**build_tiny_components(seed)), TINY_PROMPT_TEMPLATE)


def carry_prompt_template(pipe: Any, template: dict) -> Any:
    """Make ``pipe`` use ``template`` wherever its caller leaves diffusers' default prompt template, so that
    ``pipe(prompt=...)`` works with no extra argument.

    The stock HunyuanVideo templates are sized for Llama's tokenizer (crop_start 95): with a tiny byte tokenizer
    and a short ``max_sequence_length`` they crop the prompt away and every prompt gives the same video. The
    class is left as it is (family detection, ``save_pretrained``); only this instance's prompt encoding changes,
    and a template the caller passes still wins.
    """
    import inspect
    import sys

    encode = pipe._get_llama_prompt_embeds  # where the template is read (T2V and I2V pipelines alike)
    default = getattr(sys.modules[type(pipe).__module__], "DEFAULT_PROMPT_TEMPLATE", None)
    signature = inspect.signature(encode)

    @functools.wraps(encode)
    def with_template(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        if bound.arguments.get("prompt_template") in (None, default):
            bound.arguments["prompt_template"] = template
        return encode(*bound.args, **bound.kwargs)

    object.__setattr__(pipe, "_get_llama_prompt_embeds", with_template)
    pipe._xvid_prompt_template = template  # what the pipeline carries, for run records and checks
    return pipe


# ------------------------------------------------------------------------------------------------------ Wan
TINY_WAN_ROPE_POSITIONS = 64  # rotary positions per axis: at most 1024 px a side, 253 frames (pipelines/limits.py)
TINY_WAN_TEXT_LEN = 512  # Wan 2.1 I2V's processor hard-codes 512 text tokens (image tokens come first)


def _tiny_umt5(vocab: int):
    from transformers import UMT5Config, UMT5EncoderModel

    return UMT5EncoderModel(UMT5Config(vocab_size=vocab, d_model=TINY_TEXT_DIM, d_kv=8, d_ff=64, num_layers=2,
                                       num_heads=4, relative_attention_num_buckets=8, pad_token_id=0,
                                       eos_token_id=2, decoder_start_token_id=0)).eval()


def _tiny_wan_transformer(in_channels: int = 16, image_dim: int | None = None):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=64, in_channels=in_channels,
        out_channels=16, text_dim=TINY_TEXT_DIM, freq_dim=32, ffn_dim=64, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=image_dim,
        rope_max_seq_len=TINY_WAN_ROPE_POSITIONS,
    )


def build_tiny_wan_components(seed: int = 0, *, two_experts: bool = False, i2v: bool = False) -> dict:
    """Components of a tiny Wan pipeline (float32, random weights). ``two_experts``: Wan 2.2 A14B layout
    (``transformer_2`` for the low-noise steps, boundary 0.5); ``i2v``: Wan 2.1 image-to-video (CLIP image
    encoder, 36 input channels)."""
    from diffusers import AutoencoderKLWan
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    vocab = 3 + 256
    in_channels = 36 if i2v else 16
    image_dim = TINY_TEXT_DIM if (i2v and not two_experts) else None
    components: dict = {
        "transformer": _tiny_wan_transformer(in_channels, image_dim),
        "vae": AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                temperal_downsample=[False, True, True]),
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=5.0),
        "text_encoder": _tiny_umt5(vocab),
        "tokenizer": byte_tokenizer(TINY_WAN_TEXT_LEN),
    }
    if two_experts:
        components["transformer_2"] = _tiny_wan_transformer(in_channels, image_dim)
        components["boundary_ratio"] = 0.5
    if image_dim is not None:
        components["image_encoder"] = CLIPVisionModel(CLIPVisionConfig(
            hidden_size=TINY_TEXT_DIM, projection_dim=TINY_TEXT_DIM, num_hidden_layers=2, num_attention_heads=4,
            image_size=32, intermediate_size=37, patch_size=8)).eval()
        components["image_processor"] = CLIPImageProcessor(crop_size=32, size=32)
    return components


def ftfy_missing_shim() -> bool:
    """diffusers 0.42's Wan I2V pipeline calls ``ftfy.fix_text`` unconditionally (the T2V one only when ftfy is
    installed). Without ftfy, give that module a pass-through ``ftfy`` so the tiny I2V model runs; returns
    whether the shim was needed. Real checkpoints are refused instead (see loading.py)."""
    import importlib.util
    import types

    from diffusers.pipelines.wan import pipeline_wan_i2v

    if importlib.util.find_spec("ftfy") is not None or hasattr(pipeline_wan_i2v, "ftfy"):
        return False
    pipeline_wan_i2v.ftfy = types.SimpleNamespace(fix_text=lambda text: text)
    return True


def build_tiny_wan_pipeline(seed: int = 0, *, two_experts: bool = False, i2v: bool = False):
    from diffusers import WanImageToVideoPipeline, WanPipeline

    if i2v:
        ftfy_missing_shim()
    cls = WanImageToVideoPipeline if i2v else WanPipeline
    return cls(**build_tiny_wan_components(seed, two_experts=two_experts, i2v=i2v))


# ------------------------------------------------------------------------------------------ HunyuanVideo 1.5
TINY_HV15_SETTINGS = {"tokenizer_max_length": 32, "tokenizer_2_max_length": 16, "vision_num_semantic_tokens": 8,
                      "prompt_template_encode_start_idx": 0, "system_message": "Describe the video."}
_CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{% if m['content'] is string %}{{ m['content'] }}"
                  "{% else %}{% for c in m['content'] %}{{ c['text'] }}{% endfor %}{% endif %}{% endfor %}"
                  "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def build_tiny_hunyuan15_components(seed: int = 0, *, i2v: bool = False) -> dict:
    """Components of a tiny HunyuanVideo 1.5 pipeline (float32, random weights, byte-level tokenizers)."""
    from diffusers import AutoencoderKLHunyuanVideo15, ClassifierFreeGuidance, HunyuanVideo15Transformer3DModel
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel
    from transformers.models.qwen2_5_vl import Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel

    torch.manual_seed(seed)
    vocab = 3 + 256
    tokenizer = byte_tokenizer(TINY_HV15_SETTINGS["tokenizer_max_length"] + 64)
    tokenizer.chat_template = _CHAT_TEMPLATE
    text_encoder = Qwen2_5_VLTextModel(Qwen2_5_VLTextConfig(
        vocab_size=vocab, hidden_size=TINY_TEXT_DIM, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]}, bos_token_id=1, eos_token_id=2,
        pad_token_id=0)).eval()
    byt5 = ByT5Tokenizer()
    text_encoder_2 = T5EncoderModel(T5Config(vocab_size=len(byt5), d_model=TINY_TEXT_DIM, d_kv=8, d_ff=64,
                                             num_layers=2, num_heads=4, relative_attention_num_buckets=8)).eval()
    latent = 8
    transformer = HunyuanVideo15Transformer3DModel(
        in_channels=2 * latent + 1, out_channels=latent, num_attention_heads=2, attention_head_dim=64, num_layers=2,
        num_refiner_layers=1, mlp_ratio=2.0, patch_size=1, patch_size_t=1, text_embed_dim=TINY_TEXT_DIM,
        text_embed_2_dim=TINY_TEXT_DIM, image_embed_dim=TINY_TEXT_DIM, rope_axes_dim=(16, 24, 24), target_size=128,
        task_type="i2v" if i2v else "t2v")
    vae = AutoencoderKLHunyuanVideo15(in_channels=3, out_channels=3, latent_channels=latent,
                                      block_out_channels=(16, 16, 16, 16, 16), layers_per_block=1,
                                      spatial_compression_ratio=16, temporal_compression_ratio=4)
    components = {
        "transformer": transformer, "vae": vae, "scheduler": FlowMatchEulerDiscreteScheduler(shift=7.0),
        "text_encoder": text_encoder, "tokenizer": tokenizer, "text_encoder_2": text_encoder_2, "tokenizer_2": byt5,
        "guider": ClassifierFreeGuidance(guidance_scale=6.0),
    }
    if i2v:
        from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

        components["image_encoder"] = SiglipVisionModel(SiglipVisionConfig(
            hidden_size=TINY_TEXT_DIM, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            image_size=32, patch_size=8)).eval()
        components["feature_extractor"] = SiglipImageProcessor(size={"height": 32, "width": 32})
    return components


def build_tiny_hunyuan15_pipeline(seed: int = 0, *, i2v: bool = False):
    from diffusers import HunyuanVideo15ImageToVideoPipeline, HunyuanVideo15Pipeline

    cls = HunyuanVideo15ImageToVideoPipeline if i2v else HunyuanVideo15Pipeline
    pipe = cls(**build_tiny_hunyuan15_components(seed, i2v=i2v))
    for key, value in TINY_HV15_SETTINGS.items():
        setattr(pipe, key, value)
    return pipe


# ---------------------------------------------------------------------------------------- HunyuanVideo I2V
# Llava's special tokens, appended after the byte vocabulary: the pipeline finds the image placeholder by
# ``image_token_index`` and the assistant header by ``<|end_header_id|>`` (3 per prompt: system, user, assistant).
# "assistant" is one token, as in Llama 3: the pipeline crops the 4 tokens <|eot_id|><|start_header_id|>assistant
# <|end_header_id|> off the text.
_LLAVA_SPECIALS = ["<image>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "assistant"]
_HV_I2V_TEMPLATE = ("<|start_header_id|>system<|end_header_id|><image>Describe the video.<|eot_id|>"
                    "<|start_header_id|>user<|end_header_id|>{}<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n")
TINY_HV_I2V_IMAGE_SIZE, TINY_HV_I2V_PATCH = 32, 8
TINY_HV_I2V_IMAGE_TOKENS = (TINY_HV_I2V_IMAGE_SIZE // TINY_HV_I2V_PATCH) ** 2  # Llava drops CLIP's class token
# 1 dual- + 1 single-stream block; latent_concat input: noisy latents, image latents, mask (4 + 4 + 1 channels)
TINY_HV_I2V_TRANSFORMER_CONFIG = {**TINY_TRANSFORMER_CONFIG, "num_layers": 1, "num_single_layers": 1,
                                  "image_condition_type": "latent_concat", "in_channels": 2 * 4 + 1}


def llava_byte_tokenizer(max_length: int) -> PreTrainedTokenizerFast:
    """``byte_tokenizer`` plus the Llava / Llama 3 chat special tokens (ids after the 259 byte-level ones)."""
    tok = byte_tokenizer(max_length)
    tok.add_special_tokens({"additional_special_tokens": _LLAVA_SPECIALS})
    return tok


def tiny_hunyuan_i2v_prompt_template(tokenizer: PreTrainedTokenizerFast | None = None) -> dict:
    """The tiny I2V model's ``prompt_template``, with the positions the pipeline needs computed from the tokenizer.

    ``crop_start``: tokens before the user prompt (system turn with its one ``<image>`` placeholder, user header);
    ``image_emb_start/end``: where Llava's image features sit after the placeholder expands to
    ``image_emb_len`` = the vision tower's patch count. ``double_return_token_id`` (the ``<|end_header_id|>`` id)
    for diffusers versions that read it; 0.42 looks the token up by name.
    """
    tokenizer = tokenizer or llava_byte_tokenizer(512)
    prefix = tokenizer(_HV_I2V_TEMPLATE.split("{}")[0])["input_ids"]
    start = prefix.index(tokenizer.convert_tokens_to_ids("<image>"))
    return {"template": _HV_I2V_TEMPLATE, "crop_start": len(prefix), "image_emb_start": start,
            "image_emb_end": start + TINY_HV_I2V_IMAGE_TOKENS, "image_emb_len": TINY_HV_I2V_IMAGE_TOKENS,
            "double_return_token_id": tokenizer.convert_tokens_to_ids("<|end_header_id|>")}


def build_tiny_hunyuan_i2v_components(seed: int = 0, *, image_condition: str = "latent_concat") -> dict:
    """Components of a tiny ``HunyuanVideoImageToVideoPipeline`` (float32, random weights): a Llava text encoder
    (tiny Llama + tiny CLIP vision tower of 32x32 images, 16 patches), 1 dual- and 1 single-stream block.
    ``image_condition``: ``latent_concat`` (2·4+1 input channels) or ``token_replace`` (4)."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

    components = build_tiny_components(seed)  # seeds the generator; CLIP text encoder, VAE, scheduler reused
    tokenizer = llava_byte_tokenizer(512)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=TINY_TEXT_DIM, intermediate_size=64,
                       num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                       pad_token_id=0, bos_token_id=1, eos_token_id=2)
    vision = CLIPVisionConfig(hidden_size=TINY_TEXT_DIM, intermediate_size=37, num_hidden_layers=2,
                              num_attention_heads=4, image_size=TINY_HV_I2V_IMAGE_SIZE, patch_size=TINY_HV_I2V_PATCH,
                              projection_dim=TINY_TEXT_DIM)
    # pad_token_id on the Llava config: the pipeline reads it there to mask the expanded input ids
    llava = LlavaConfig(text_config=text, vision_config=vision, pad_token_id=0,
                        image_token_index=tokenizer.convert_tokens_to_ids("<image>"))
    config = dict(TINY_HV_I2V_TRANSFORMER_CONFIG)
    if image_condition != "latent_concat":
        config.update(image_condition_type=image_condition, in_channels=4)
    size = TINY_HV_I2V_IMAGE_SIZE
    components.update(
        transformer=HunyuanVideoTransformer3DModel(**config),
        text_encoder=LlavaForConditionalGeneration(llava).eval(),
        tokenizer=tokenizer,
        image_processor=CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}),
    )
    return components


def build_tiny_hunyuan_i2v_pipeline(seed: int = 0, *, image_condition: str = "latent_concat"):
    """A tiny ``HunyuanVideoImageToVideoPipeline`` with random weights; its videos are noise. It carries
    ``tiny_hunyuan_i2v_prompt_template()`` (the stock template is sized for Llava-Llama-3)."""
    from diffusers import HunyuanVideoImageToVideoPipeline

    pipe = HunyuanVideoImageToVideoPipeline(**build_tiny_hunyuan_i2v_components(seed, image_condition=image_condition))
    return carry_prompt_template(pipe, tiny_hunyuan_i2v_prompt_template(pipe.tokenizer))


def tiny_call_kwargs(name: str) -> dict:
    """The prompt template a tiny model's pipeline carries (``carry_prompt_template``; HunyuanVideo's templates
    sized for the byte tokenizers), for code that builds the call itself; ``{}`` for other models."""
    if name == "tiny":
        return {"prompt_template": TINY_PROMPT_TEMPLATE}
    if name == "tiny-hunyuan-i2v":
        return {"prompt_template": tiny_hunyuan_i2v_prompt_template()}
    return {}
