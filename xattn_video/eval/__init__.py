"""Quality evaluation: ``xvid compare`` and what it measures.

``compare`` (orchestration and resume), ``report`` (JSON with infinities, markdown, plots), ``timing`` (warm-up
plan, spread of per-item times, busy-machine warning), ``extras`` (which install each metric needs), ``metrics``
(full-reference PSNR/SSIM/LPIPS), ``scorers`` (no-reference: registry, flicker, VBench), ``errors``
(``Unavailable``: a metric or scorer that cannot run here). Submodules load on import, not here, so that VBench's
environment can run ``scorers.vbench_driver`` without our dependencies.
"""
