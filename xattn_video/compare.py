"""Deprecated: moved to ``xattn_video.eval.compare``. This alias keeps old imports working (same module object)."""

import importlib
import sys
import warnings

warnings.warn("xattn_video.compare moved to xattn_video.eval.compare; import it from there", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = importlib.import_module("xattn_video.eval.compare")
