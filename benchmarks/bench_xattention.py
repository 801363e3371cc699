"""Benchmark table of the operator on one GPU (same as `xvid bench`). See xattn_video/benchmark.py."""

from xattn_video.benchmark import main

if __name__ == "__main__":
    raise SystemExit(main())
