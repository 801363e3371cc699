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
    from xattn_video.launch import generate_on_ranks

    out_dir, overrides = Path(argv[1]), argv[2:]
    run = load_config(overrides=["model.device=cpu", *overrides])
    result = generate_on_ranks(run, None, 2)
    if result.meta:  # rank 0
        np.save(out_dir / "frames.npy", result.frames)
        (out_dir / "summary.json").write_text(json.dumps({"xattn": result.xattn,
                                                          "parallel": result.meta["parallel"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
