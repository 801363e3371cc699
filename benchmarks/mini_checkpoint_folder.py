"""A pipeline folder from a `mini.train` checkpoint, for an interim reading of a run split into device calls.

The checkpoint's EMA transformer (float16, as `mini.train` saves it) and text encoder and its VAE (with the latent
statistics) go into a copy of a pipeline folder (default: the shipped one, for its tokenizer, sampler and
`training.json`), so `XVID_MINI_WEIGHTS=OUT python benchmarks/mini_prompt_match.py ...` scores the run so far.

    python benchmarks/mini_checkpoint_folder.py .mini-init/ckpt-seg /tmp/interim
    (a folder of ckpt.part-* as the device returns them, or one checkpoint file)
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
from pathlib import Path

import torch

import xattn_video.mini
from xattn_video.mini.model import build_components, build_pipeline
from xattn_video.mini.train import restore_weights

SHIPPED = Path(xattn_video.mini.__file__).parent / "weights"


def read_checkpoint(path: Path) -> dict:
    """A checkpoint file, or the concatenation of a folder's ``ckpt.part-*``."""
    if path.is_dir():
        parts = sorted(path.glob("ckpt.part-*"))
        if not parts:
            raise SystemExit(f"error: {path} holds no ckpt.part-* files")
        data = io.BytesIO(b"".join(part.read_bytes() for part in parts))
        return torch.load(data, map_location="cpu", weights_only=False)
    return torch.load(path, map_location="cpu", weights_only=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", type=Path, help="a mini.train checkpoint, or a folder of its ckpt.part-* files")
    p.add_argument("out", type=Path, help="the pipeline folder to write")
    p.add_argument("--base", type=Path, default=SHIPPED, help="the folder to copy the other parts from")
    args = p.parse_args(argv)
    saved = read_checkpoint(args.checkpoint)
    if "ema_transformer" not in saved:
        print(f"error: {args.checkpoint} is not a transformer-stage checkpoint (no EMA weights)", file=sys.stderr)
        return 2
    run = saved["args"]
    parts = build_components(run["seed"], run["flow_shift"], run.get("layers"), run.get("text_layers"))
    restore_weights(saved, parts)  # a transformer-stage checkpoint holds the EMA weights only
    parts["transformer"] = parts["transformer"].to(torch.float16)
    tmp = args.out.with_name(args.out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(args.base, tmp)
    written = tmp / "written"
    build_pipeline(parts).save_pretrained(written, safe_serialization=True)
    for sub in ("transformer", "text_encoder", "vae"):
        shutil.rmtree(tmp / sub)
        (written / sub).rename(tmp / sub)
    shutil.rmtree(written)
    shutil.rmtree(args.out, ignore_errors=True)
    tmp.rename(args.out)
    state = saved["state"]
    print(f"{args.out}: phase {state.get('phase', 0)}, step {state['step']}, global step {state.get('global_step')}, "
          f"{state.get('seconds', 0):.0f} s of training")
    return 0


if __name__ == "__main__":
    sys.exit(main())
