"""xattn-video: XAttention block-sparse attention for diffusers video transformers.

Packages: ``kernels`` (the operator), ``warmup`` (dense/sparse plan), ``pipelines`` (diffusers integration),
``eval`` (quality: compare, metrics, scorers), ``bench`` (speed: operator benchmark, synthetic inputs).
Names below load lazily, so that importing a light submodule (e.g. VBench's driver) pulls in nothing heavy.
"""

import importlib

__version__ = "0.1.0"

_LAZY = {
    "BlockSelection": "kernels",
    "block_sparse_attention": "kernels",
    "estimate_block_scores": "kernels",
    "select_blocks": "kernels",
    "xattention": "kernels",
    # the diffusers integration: importing the kernels never imports diffusers
    "apply_xattention": "pipelines",
    "XAttnHunyuanVideoPipeline": "pipelines",
    "supported_pipelines": "pipelines",
    # the built-in models (mini, tiny, ...), folders and hub ids as a ready pipeline
    "load_pipeline": "pipelines.loading",
    "builtin_models": "config",
    "XvidWarning": "config",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'xattn_video' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
