"""``xattn_video.load_pipeline``: built-in names as ready pipelines that never ignore the prompt."""

import pytest
import torch

import xattn_video
from xattn_video.config import ConfigError, builtin_models, check_model_name
from xattn_video.pipelines.loading import ModelLoadError

PROMPTS = ("a cat walks on the grass", "a red fox in the snow")


def latents_per_prompt(pipe):
    out = []
    for prompt in PROMPTS:
        out.append(pipe(prompt=prompt, height=32, width=32, num_frames=1, num_inference_steps=2,
                        max_sequence_length=32, output_type="latent",
                        generator=torch.Generator().manual_seed(0)).frames)
    return out


@pytest.fixture(scope="module")
def tiny():
    return xattn_video.load_pipeline("tiny", device="cpu")


def test_tiny_hunyuan_video_follows_the_prompt(tiny):
    a, b = latents_per_prompt(tiny)
    assert not torch.equal(a, b), "two prompts gave the same video: the prompt was cropped away"
    assert type(tiny).__name__ == "HunyuanVideoPipeline"  # the class is diffusers' own


def test_without_the_carried_template_the_prompt_is_lost(tiny):
    """Why the pipeline carries its template: diffusers' default crops the tiny tokenizer's prompt away."""
    from diffusers import HunyuanVideoPipeline

    bare = HunyuanVideoPipeline(**tiny.components)
    a, b = latents_per_prompt(bare)
    assert torch.equal(a, b)


DEFAULT_PROMPT_TEMPLATE = {"template": "stock {}", "crop_start": 95}  # read by carry_prompt_template


class FakePipeline:
    def _get_llama_prompt_embeds(self, prompt, prompt_template, num_videos_per_prompt=1):
        return prompt_template


def test_the_carried_template_replaces_only_the_default():
    from xattn_video.pipelines.tiny import carry_prompt_template

    carried = {"template": "{}", "crop_start": 0}
    pipe = carry_prompt_template(FakePipeline(), carried)
    assert pipe._get_llama_prompt_embeds("p", DEFAULT_PROMPT_TEMPLATE) is carried
    assert pipe._get_llama_prompt_embeds("p", prompt_template=dict(DEFAULT_PROMPT_TEMPLATE)) is carried
    own = {"template": "mine {}", "crop_start": 1}
    assert pipe._get_llama_prompt_embeds("p", own) is own


def test_load_pipeline_takes_configs_and_refuses_unknown_names():
    run = xattn_video.load_pipeline  # public, from the package
    assert run is xattn_video.pipelines.loading.load_pipeline
    with pytest.raises(ModelLoadError, match="did you mean 'tiny'"):
        xattn_video.load_pipeline("tyni", device="cpu")
    with pytest.raises(ConfigError, match="did you mean 'mini'"):
        check_model_name("minni")
    assert {"mini", "mini-large", "tiny", "tiny-wan"} <= set(builtin_models())
