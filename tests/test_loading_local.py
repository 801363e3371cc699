"""A local model folder that is incomplete: the error names the missing file and gives no download hint."""

import json


from xattn_video.cli import main

INDEX = {"_class_name": "HunyuanVideoPipeline", "_diffusers_version": "0.42.1",
         "transformer": ["diffusers", "HunyuanVideoTransformer3DModel"],
         "vae": ["diffusers", "AutoencoderKLHunyuanVideo"],
         "text_encoder": ["transformers", "LlamaModel"], "text_encoder_2": ["transformers", "CLIPTextModel"],
         "tokenizer": ["transformers", "LlamaTokenizerFast"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
         "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"]}


def _run(tmp_path, capsys, folder):
    rc = main(["generate", "--model", str(folder), "--device", "cpu", "--out", str(tmp_path / "v.mp4")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1, err  # one line
    assert "download" not in err and "hub" not in err, err  # nothing to download for a local folder
    assert not (tmp_path / "v.mp4").exists()
    return err


def test_model_index_without_weights_names_the_missing_file(tmp_path, capsys):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps(INDEX))
    assert "transformer/config.json" in _run(tmp_path, capsys, folder)
    (folder / "transformer").mkdir()
    (folder / "transformer" / "config.json").write_text("{}")
    assert "no weights in transformer/" in _run(tmp_path, capsys, folder)
    (folder / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    assert "vae/config.json" in _run(tmp_path, capsys, folder)


def test_broken_model_index_is_one_line(tmp_path, capsys):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "model_index.json").write_text("[1, 2")
    assert "model_index.json" in _run(tmp_path, capsys, folder)
