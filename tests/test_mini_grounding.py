"""The cross-attention grounding loss of the mini model's training (``mini.grounding``)."""

import random

import torch

from xattn_video.mini import grounding
from xattn_video.mini.data import render
from xattn_video.mini.grammar import ObjectSpec

RED = ObjectSpec("red", "ball", "right")
BLUE = ObjectSpec("blue", "square", "up")


def test_render_masks_mark_each_object_in_its_slot():
    clip = render([[RED], [RED, BLUE]], 5, 32, 32, random.Random(0))
    assert clip.masks.shape == (2, 2, 5, 32, 32)
    assert clip.masks[0, 1].sum() == 0  # a lone object: slot 1 empty
    from xattn_video.mini.grammar import COLOURS

    for b, slot, name in ((0, 0, "red"), (1, 0, "red"), (1, 1, "blue")):
        inside = clip.masks[b, slot] > 0.99
        assert inside.any()
        rgb = (clip.video[b].permute(1, 2, 3, 0)[inside] + 1) / 2  # the object's colour where its mask is full
        assert torch.allclose(rgb, torch.tensor(COLOURS[name]), atol=1e-5), (b, slot)


def test_clause_spans_are_token_positions_of_the_cleaned_prompt():
    prompt = "A video of  a red ball moving right and a blue square moving up ."
    spans = grounding.clause_spans(prompt)
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean

    text = prompt_clean(prompt)
    assert [text[a:b] for a, b in spans] == ["a red ball moving right", "a blue square moving up"]
    assert grounding.clause_spans("") == [] and grounding.clause_spans("a cat") == []


def test_regions_follow_the_token_grid():
    masks = torch.zeros(1, 2, 9, 32, 32)
    masks[0, 0, :, :8, :8] = 1  # top-left 8x8 pixels in every frame: the first token of each latent frame
    from xattn_video.mini.train import latent_thumbnail  # the masks' latent grid, as training pools them

    regions = grounding.token_regions(latent_thumbnail(masks))
    assert regions.shape == (1, 2, 3 * 4 * 4)
    assert torch.equal(regions[0, 0].nonzero().flatten(), torch.tensor([0, 16, 32]))
    assert regions[0, 1].sum() == 0


def test_loss_is_low_when_each_object_reads_its_clause_and_high_when_crossed():
    prompt = "a red ball moving right and a blue square moving up"
    (a0, a1), (b0, b1) = grounding.clause_spans(prompt)
    N, L = 8, 64
    regions = torch.zeros(1, 2, N)
    regions[0, 0, :4], regions[0, 1, 4:] = 1, 1
    bound = torch.full((1, N, L), 1e-4)
    bound[0, :4, a0:a1], bound[0, 4:, b0:b1] = 1, 1
    crossed = torch.full((1, N, L), 1e-4)
    crossed[0, :4, b0:b1], crossed[0, 4:, a0:a1] = 1, 1
    norm = lambda m: m / m.sum(-1, keepdim=True)  # noqa: E731
    low = grounding.grounding_loss([norm(bound)], regions, [prompt])
    high = grounding.grounding_loss([norm(crossed)], regions, [prompt])
    assert low < 0.01 and high > 0.99
    assert grounding.grounding_loss([norm(bound)], regions, [""]) == 0  # no clause: nothing to ground


def test_recorded_maps_are_the_cross_attention_and_the_output_is_unchanged():
    from xattn_video.mini.model import build_components

    transformer = build_components(seed=0)["transformer"].eval()
    z = torch.randn(1, 8, 2, 8, 8)
    text = torch.randn(1, 16, 128)
    with torch.no_grad():
        plain = transformer(z, timestep=torch.tensor([500.0]), encoder_hidden_states=text, return_dict=False)[0]
        with grounding.CrossAttentionMaps(transformer) as maps:
            recorded = transformer(z, timestep=torch.tensor([500.0]), encoder_hidden_states=text, return_dict=False)[0]
    assert torch.allclose(plain, recorded, atol=1e-5)
    assert len(maps.layers) == len(transformer.blocks)
    assert maps.layers[0].shape == (1, 2 * 4 * 4, 16)
    assert torch.allclose(maps.layers[0].sum(-1), torch.ones(1, 32), atol=1e-5)
    assert all(type(b.attn2.processor).__name__ != "_RecordingProcessor" for b in transformer.blocks)


def test_loss_trains_the_cross_attention():
    from xattn_video.mini.model import build_components

    transformer = build_components(seed=0)["transformer"]
    prompt = "a red ball moving right and a blue square moving up"
    z = torch.randn(1, 8, 2, 8, 8)
    text = torch.randn(1, 64, 128)
    regions = torch.zeros(1, 2, 32)
    regions[0, 0, :16], regions[0, 1, 16:] = 1, 1
    with grounding.CrossAttentionMaps(transformer) as maps:
        transformer(z, timestep=torch.tensor([500.0]), encoder_hidden_states=text, return_dict=False)
    loss = grounding.grounding_loss(maps.layers, regions, [prompt])
    loss.backward()
    assert 0 < loss.item() < 1
    assert transformer.blocks[0].attn2.to_k.weight.grad.abs().sum() > 0


def test_batched_loss_equals_the_per_clause_definition():
    gen = torch.Generator().manual_seed(3)
    prompts = ["a red ball moving right and a blue square moving up", "", "a video of a green ball moving left"]
    N, L = 12, 80
    layers = [torch.rand(3, N, L, generator=gen).softmax(-1) for _ in range(2)]
    regions = torch.rand(3, 2, N, generator=gen)
    terms = []
    for b, prompt in enumerate(prompts):
        for slot, (start, end) in enumerate(grounding.clause_spans(prompt)):
            for maps in layers:
                mass = maps[b, :, start:end].sum(-1)
                terms.append(1 - (regions[b, slot] * mass).sum() / mass.sum())
    expected = torch.stack(terms).mean()
    assert len(terms) == 3 * 2
    assert torch.allclose(grounding.grounding_loss(layers, regions, prompts), expected, atol=1e-6)


def test_only_clips_in_the_sigma_window_are_grounded():
    prompts = ["a red ball moving left and a blue square moving up", "a green ball moving down", ""]
    sigma = torch.tensor([0.99, 0.5, 0.97]).view(3, 1, 1, 1, 1)
    assert grounding.prompts_in_window(prompts, sigma, 0.9) == [prompts[0], "", ""]
    assert grounding.prompts_in_window(prompts, sigma, 0.0) == prompts
    assert grounding.prompts_in_window(prompts, sigma, 0.995) == ["", "", ""]
    # the loss over the window is the loss of the clips in it
    torch.manual_seed(0)
    layers = [torch.rand(3, 12, 128).softmax(-1)]
    regions = torch.rand(3, 2, 12)
    window = grounding.prompts_in_window(prompts, sigma, 0.9)
    assert torch.allclose(grounding.grounding_loss(layers, regions, window),
                          grounding.grounding_loss([layers[0][:1]], regions[:1], prompts[:1]))
