"""End-to-end speed of full-size video transformers, stock vs ours (same as `xvid bench --e2e`).

See xattn_video/bench/e2e.py; `--help` lists the subsets (models, shapes, settings).
"""

from xattn_video.bench.e2e import main

if __name__ == "__main__":
    raise SystemExit(main())
