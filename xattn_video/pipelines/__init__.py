"""diffusers integration: XAttention on HunyuanVideo, HunyuanVideo 1.5 and Wan, pipeline loading, tiny models."""

from .family import XAttentionHandle, apply_xattention, detect_family, supported_pipelines
from .hunyuan_video import XAttnHunyuanVideoPipeline
from .loading import ModelLoadError, load_pipeline

__all__ = ["ModelLoadError", "XAttentionHandle", "XAttnHunyuanVideoPipeline", "apply_xattention", "detect_family",
           "load_pipeline", "supported_pipelines"]
