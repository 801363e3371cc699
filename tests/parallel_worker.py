"""One rank of a multi-process test (launched by tests/test_parallel.py through ``xattn_video.launch.launch``).

``python -m tests.parallel_worker generate OUT_DIR KEY=VALUE...``: one generation across the ranks with the
given config overrides; rank 0 saves the float frames (frames.npy) and the merged XAttention summary and the
parallel layout (summary.json) — the mp4 is lossy, the comparison needs the floats.
``python -m tests.parallel_worker fail``: rank 1 raises while rank 0 waits in a collective.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str]) -> int:
    if argv[0] == "fail":
        import torch
        import torch.distributed as dist

        from xattn_video.launch import init_process_group

        rank, _ = init_process_group(torch.device("cpu"))
        if rank == 1:
            raise RuntimeError("injected failure on rank 1")
        dist.barrier()  # rank 0 would wait here for the collective timeout without the launcher
        return 0

    from xattn_video.config import load_config

    out_dir, overrides = Path(argv[1]), argv[2:]
    xattn_first = "--xattn-first" in overrides
    run = load_config(overrides=["model.device=cpu", *[o for o in overrides if o != "--xattn-first"]])
    if xattn_first:
        frames, xattn, parallel = _xattention_then_parallelism(run)
    else:
        from xattn_video.launch import generate_on_ranks

        result = generate_on_ranks(run, None, 2)
        frames, xattn, parallel = result.frames, result.xattn, result.meta.get("parallel")
    if parallel is not None:  # rank 0
        np.save(out_dir / "frames.npy", frames)
        (out_dir / "summary.json").write_text(json.dumps({"xattn": xattn, "parallel": parallel}))
    return 0


def _xattention_then_parallelism(run):
    """The other order a Python user may take: ``apply_xattention`` first, then ``enable_context_parallel``."""
    import dataclasses

    import torch
    import torch.distributed as dist

    from xattn_video import apply_xattention
    from xattn_video.generate import run_pipeline
    from xattn_video.launch import init_process_group, merge_rank_summaries
    from xattn_video.pipelines.loading import load_pipeline
    from xattn_video.pipelines.parallel import enable_context_parallel

    rank, world = init_process_group(torch.device("cpu"))
    try:
        pipe = load_pipeline(run.model)
        handle = apply_xattention(pipe, run.xattn)
        layout = enable_context_parallel(pipe, world)
        result = run_pipeline(pipe, dataclasses.replace(run, dense=True), show_progress=False, decode=rank == 0)
        summaries = [None] * world
        dist.all_gather_object(summaries, handle.summary())
        handle.remove()
        return result.frames, merge_rank_summaries(summaries), layout.record() if rank == 0 else None
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
