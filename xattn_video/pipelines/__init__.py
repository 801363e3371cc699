"""diffusers integration: XAttention on HunyuanVideo, pipeline loading, the built-in tiny model."""

from .hunyuan_video import XAttentionHandle, XAttnHunyuanVideoPipeline, apply_xattention
from .loading import ModelLoadError, load_pipeline

__all__ = ["ModelLoadError", "XAttentionHandle", "XAttnHunyuanVideoPipeline", "apply_xattention", "load_pipeline"]
