"""One rank of a multi-process test (launched by tests/test_parallel.py through ``xattn_video.launch.launch``).

``python -m tests.parallel_worker generate OUT_DIR MODE[,MODE...] KEY=VALUE...``: one generation across the
ranks per mode (see ``_generate``) with the given config overrides; rank 0 saves the float frames and the merged
XAttention summary and the parallel layout per mode — the mp4 is lossy, the comparison needs the floats.
``python -m tests.parallel_worker fail``: rank 1 raises while rank 0 waits in a collective.
``python -m tests.parallel_worker hv15 OUT_DIR``: a tiny HunyuanVideo 1.5 transformer, a dense and an XAttention
forward on one rank and then across both (our plan); rank 0 writes the largest differences and the densities to
hv15.json.
``python -m tests.parallel_worker jobs JSON``: several of the above (a JSON list of their argument lists) in one
process group, one after another: a launch costs two Python start-ups, most of such a test's time on 2 cores.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str]) -> int:
    import torch
    import torch.distributed as dist

    from xattn_video.launch import init_process_group

    rank, world = init_process_group(torch.device("cpu"))
    if argv[0] == "fail":
        if rank == 1:
            raise RuntimeError("injected failure on rank 1")
        dist.barrier()  # rank 0 would wait here for the collective timeout without the launcher
        return 0
    try:
        for job in (json.loads(argv[1]) if argv[0] == "jobs" else [argv]):
            if job[0] == "hv15":
                _hunyuan_video15(rank, world, Path(job[1]))
            else:
                _generate(rank, world, Path(job[1]), job[2].split(","), job[3:])
            dist.barrier()  # leave together: tearing gloo down under a peer can abort it
    finally:
        dist.destroy_process_group()
    return 0


def _generate(rank: int, world: int, out_dir: Path, modes: list[str], overrides: list[str]) -> None:
    """One 2-rank generation per mode in one process group (each costs a fresh tiny pipeline, not a launch).

    Modes: ``dense`` (stock attention), ``xattn`` (enable_context_parallel, then apply_xattention: what
    ``generate_on_ranks`` does) and ``xattn-first`` (apply_xattention first: the Python user's other order).
    Rank 0 writes ``frames-<mode>.npy`` and ``summary-<mode>.json`` (merged stats and the layout).
    """
    import dataclasses

    import torch.distributed as dist

    from xattn_video import apply_xattention
    from xattn_video.config import load_config
    from xattn_video.generate import run_pipeline
    from xattn_video.launch import merge_rank_summaries
    from xattn_video.pipelines.loading import load_pipeline
    from xattn_video.pipelines.parallel import enable_context_parallel

    for mode in modes:
        run = load_config(overrides=["model.device=cpu", *overrides])
        pipe = load_pipeline(run.model)
        handle = None
        if mode == "xattn-first":
            handle = apply_xattention(pipe, run.xattn)
        layout = enable_context_parallel(pipe, world)
        if mode == "xattn":
            handle = apply_xattention(pipe, run.xattn)
        result = run_pipeline(pipe, dataclasses.replace(run, dense=True), show_progress=False,
                              decode=rank == 0)
        summaries: list = [None] * world
        dist.all_gather_object(summaries, None if handle is None else handle.summary())
        if handle is not None:
            handle.remove()
        if rank == 0:
            np.save(out_dir / f"frames-{mode}.npy", result.frames)
            (out_dir / f"summary-{mode}.json").write_text(json.dumps(
                {"xattn": merge_rank_summaries(summaries), "parallel": layout.record()}))


def _hunyuan_video15(rank: int, world: int, out_dir: Path) -> None:
    import torch
    import torch.distributed as dist
    from diffusers import HunyuanVideo15Transformer3DModel

    from xattn_video import apply_xattention
    from xattn_video.pipelines.parallel import enable_context_parallel

    torch.manual_seed(0)
    model = HunyuanVideo15Transformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=64, num_layers=2,
        num_refiner_layers=1, text_embed_dim=32, text_embed_2_dim=32, image_embed_dim=32, rope_axes_dim=(16, 24, 24),
    ).eval()
    g = torch.Generator().manual_seed(1)
    mask, mask_2 = torch.zeros(1, 12, dtype=torch.int64), torch.zeros(1, 6, dtype=torch.int64)
    mask[:, :7], mask_2[:, :3] = 1, 1  # padded text in both encoders; 128 image + 22 text tokens
    inputs = dict(hidden_states=torch.randn(1, 4, 2, 8, 8, generator=g), timestep=torch.tensor([500.0]),
                  encoder_hidden_states=torch.randn(1, 12, 32, generator=g), encoder_attention_mask=mask,
                  encoder_hidden_states_2=torch.randn(1, 6, 32, generator=g), encoder_attention_mask_2=mask_2,
                  image_embeds=torch.zeros(1, 4, 32), return_dict=False)
    # apply_xattention finds the family by the pipeline's class name; no scheduler: every call is sparse
    pipe = type("HunyuanVideo15Pipeline", (), {})()
    pipe.transformer = model
    sparse_cfg = {"warmup_steps": 0, "threshold": 0.6, "block_size": 16}

    def forwards() -> tuple:
        with torch.no_grad():
            dense = model(**inputs)[0]
            with apply_xattention(pipe, sparse_cfg) as handle:
                sparse = model(**inputs)[0]
                summary = handle.summary()
        return dense, sparse, summary

    reference, reference_sparse, one = forwards()
    enable_context_parallel(pipe, world)
    out, out_sparse, mine = forwards()
    densities = [None] * world
    dist.all_gather_object(densities, mine["mean_density_sparse_calls"])
    if rank == 0:
        (out_dir / "hv15.json").write_text(json.dumps({
            "max_abs_diff": (out - reference).abs().max().item(),
            "max_abs_diff_sparse": (out_sparse - reference_sparse).abs().max().item(),
            "sparse_vs_dense": (reference_sparse - reference).abs().max().item(),
            "density_one_rank": one["mean_density_sparse_calls"], "density_per_rank": densities}))


if __name__ == "__main__":
    code = main(sys.argv[1:])
    # Leave without running interpreter teardown: with diffusers' functional collectives on gloo, destroying the
    # process group and the interpreter's finalizers could abort a rank at exit ("terminate called without an
    # active exception", signal 6) after its work was done and checked (about 1 launch in 7 on a 2-core CPU).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
