"""The training attention processor gives the stock Wan processor's outputs and gradients."""

import copy
import json

import pytest
import torch
from helpers import tiny_args

from xattn_video.mini import train
from xattn_video.mini.model import LATENT_CHANNELS, build_components
from xattn_video.mini.train_attention import rotate_pairs, use_training_attention


def test_rotate_pairs():
    x = torch.arange(6.0)
    assert rotate_pairs(x).tolist() == [-1.0, 0.0, -3.0, 2.0, -5.0, 4.0]


@pytest.mark.parametrize("seed", [0, 1])
def test_training_processor_matches_the_stock_processor(seed):
    torch.manual_seed(seed)
    stock = build_components(0)["transformer"].train()
    with torch.no_grad():  # random norm weights, so a wrong channel order in the rotation shows
        for name, p in stock.named_parameters():
            if "norm_q" in name or "norm_k" in name:
                p.copy_(1 + 0.5 * torch.randn_like(p))
    ours = copy.deepcopy(stock)
    use_training_attention(ours)
    z = torch.randn(2, LATENT_CHANNELS, 3, 6, 10)  # odd token grid: 3 x 3 x 5 patches
    text = torch.randn(2, 7, stock.config.text_dim)
    t = torch.tensor([900.0, 250.0])
    outs, grads = [], []
    for model in (stock, ours):
        out = model(z, timestep=t, encoder_hidden_states=text, return_dict=False)[0]
        out.square().mean().backward()
        outs.append(out.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5, msg=f"seed {seed}: outputs differ")
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6, msg=f"seed {seed}: gradients differ")


def test_training_with_it_follows_the_same_loss_curve(tmp_path):
    """`mini.train --training-attention` trains the same model: the same losses step by step."""
    curves = []
    for name, extra in (("stock", ()), ("ours", ("--training-attention",))):
        folder = tmp_path / name
        folder.mkdir()
        assert train.main(tiny_args(folder, *extra)) == 0
        record = json.loads((folder / "mini" / "training.json").read_text())
        assert record["args"]["training_attention"] == (name == "ours")
        curves.append([loss for _, loss in record["loss_curve"]])
    assert len(curves[0]) == 7
    assert curves[1] == pytest.approx(curves[0], rel=1e-3), "the loss curves differ"
