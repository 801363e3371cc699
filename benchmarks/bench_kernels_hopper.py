"""Hopper kernel benchmark (issue 21): bf16 variants and FP8 against dense cuDNN, in one run; needs torch and triton
only (no diffusers/omegaconf). See xattn_video/bench/kernels_hopper.py. Also ``xvid bench --kernels``."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout, no install

from xattn_video.bench.kernels_hopper import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
