"""Benchmark table of the operator on one GPU (same as `xvid bench`). See xattn_video/bench/operator.py."""

from xattn_video.bench.operator import main

if __name__ == "__main__":
    raise SystemExit(main())
