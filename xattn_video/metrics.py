"""Deprecated: moved to ``xattn_video.eval.metrics``. This alias keeps old imports working (same module object)."""

import importlib
import sys
import warnings

warnings.warn("xattn_video.metrics moved to xattn_video.eval.metrics; import it from there", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = importlib.import_module("xattn_video.eval.metrics")
