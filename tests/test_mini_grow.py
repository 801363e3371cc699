"""Deepening a trained mini model (xattn_video.mini.grow): the deeper model computes what the folder's did, its
added blocks can learn, and a shallower or mismatched model is refused with one line."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import TINY_RECIPE, generator, seed_id, tiny_args

from xattn_video.mini import grow, train

SEEDS = [0, 1]


def tiny_wan(layers: int, seed: int):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
        text_dim=24, freq_dim=32, ffn_dim=48, num_layers=layers, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=64)
    with torch.no_grad():  # diffusers zero-initialises some weights (e.g. the output head): make every one count
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator(seed + param.numel())) * 0.2)
    return model


def tiny_umt5(layers: int, seed: int):
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    return UMT5EncoderModel(UMT5Config(vocab_size=40, d_model=24, d_kv=8, d_ff=48, num_layers=layers, num_heads=3,
                                       relative_attention_num_buckets=8, dropout_rate=0.0, pad_token_id=0))


def wan_inputs(seed: int):
    gen = generator(seed)
    # an odd token grid: 3 latent frames of 6x10 pixels -> 3x3x5 patches
    return dict(hidden_states=torch.randn(2, 4, 3, 6, 10, generator=gen),
                timestep=torch.tensor([300.0, 700.0]),
                encoder_hidden_states=torch.randn(2, 7, 24, generator=gen), return_dict=False)


@pytest.mark.parametrize("seed", SEEDS, ids=seed_id)
def test_a_deepened_transformer_computes_what_the_shallow_one_did(seed):
    shallow, deep = tiny_wan(2, seed), tiny_wan(4, seed + 100)
    assert grow.load_deepened(deep, shallow.state_dict()) == 2
    inputs = wan_inputs(seed)
    with torch.no_grad():
        expected, got = shallow(**inputs)[0], deep(**inputs)[0]
    assert torch.allclose(got, expected, atol=1e-5), f"seed {seed}: max diff {(got - expected).abs().max()}"
    # the added blocks can learn: their zeroed output projections get gradients at once
    deep(**inputs)[0].square().mean().backward()
    for block in deep.blocks[2:]:
        for linear in (block.attn1.to_out[0], block.attn2.to_out[0], block.ffn.net[-1]):
            assert linear.weight.grad is not None and linear.weight.grad.abs().sum() > 0, f"seed {seed}"


@pytest.mark.parametrize("seed", SEEDS, ids=seed_id)
def test_a_deepened_text_encoder_computes_what_the_shallow_one_did(seed):
    shallow, deep = tiny_umt5(2, seed), tiny_umt5(3, seed + 100)
    assert grow.load_deepened(deep, shallow.state_dict()) == 2
    ids = torch.randint(2, 40, (2, 9), generator=generator(seed))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # padding in the second prompt
    with torch.no_grad():
        expected = shallow(ids, mask).last_hidden_state
        got = deep(ids, mask).last_hidden_state
    assert torch.allclose(got, expected, atol=1e-5), f"seed {seed}: max diff {(got - expected).abs().max()}"
    # a silenced block is not the identity by accident: without silencing, the deeper model differs
    fresh = tiny_umt5(3, seed + 100)
    fresh.load_state_dict(shallow.state_dict(), strict=False)
    with torch.no_grad():
        assert not torch.allclose(fresh(ids, mask).last_hidden_state, expected, atol=1e-3), f"seed {seed}"


def test_a_shallower_or_mismatched_model_is_refused():
    with pytest.raises(ValueError, match="4 blocks, more than the 2"):
        grow.load_deepened(tiny_wan(2, 0), tiny_wan(4, 0).state_dict())
    partial = {key: value for key, value in tiny_wan(2, 0).state_dict().items() if key != "scale_shift_table"}
    with pytest.raises(ValueError, match="lacks weight 'scale_shift_table'"):
        grow.load_deepened(tiny_wan(3, 0), partial)
    wide = tiny_umt5(2, 0).state_dict()
    wide["shared.weight"] = torch.zeros(41, 24)
    with pytest.raises(ValueError, match="'shared.weight' of shape"):
        grow.load_deepened(tiny_umt5(3, 0), wide)


def test_init_with_more_layers_grows_the_folder_and_refuses_fewer(tmp_path, capsys):
    from diffusers import WanTransformer3DModel
    from transformers import UMT5EncoderModel

    recipe = {"phases": [TINY_RECIPE["phases"][0]]}
    assert train.main(tiny_args(tmp_path, "--layers", "2", recipe=recipe)) == 0
    first = tmp_path / "first"
    (tmp_path / "mini").rename(first)
    one_step = {"phases": [{**TINY_RECIPE["phases"][0], "steps": 1}]}
    args = tiny_args(tmp_path, "--layers", "3", "--text-layers", "3", recipe=one_step)
    args[args.index("--init-vae")] = "--init"
    args[args.index("--init") + 1] = str(first)
    assert train.main(args) == 0
    transformer = WanTransformer3DModel.from_pretrained(tmp_path / "mini" / "transformer")
    text_encoder = UMT5EncoderModel.from_pretrained(tmp_path / "mini" / "text_encoder")
    assert len(transformer.blocks) == 3 and len(text_encoder.encoder.block) == 3
    record = json.loads((tmp_path / "mini" / "training.json").read_text())
    assert (record["args"]["layers"], record["args"]["text_layers"]) == (3, 3)
    # without the flags a folder keeps its own depths (here 2 and the default text depth)
    args = [a for a in args if a not in ("--layers", "--text-layers", "3")]
    args[args.index("--out") + 1] = str(tmp_path / "again")
    assert train.main(args) == 0
    assert WanTransformer3DModel.from_pretrained(tmp_path / "again" / "transformer").config.num_layers == 2
    with pytest.raises(SystemExit) as stop:
        train.main(["--out", str(tmp_path / "x"), "--init", str(first), "--layers", "1"])
    assert stop.value.code == 2 and "--layers 1: the --init folder's transformer has 2 blocks" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        train.main(["--out", str(tmp_path / "x"), "--init", str(tmp_path), "--text-layers", "4"])
    assert stop.value.code == 2 and "no transformer/config.json" in capsys.readouterr().err
