"""Deprecated: moved to ``xattn_video.bench.synthetic``. This alias keeps old imports working (same module object)."""

import importlib
import sys
import warnings

warnings.warn("xattn_video.synthetic moved to xattn_video.bench.synthetic; import it from there", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = importlib.import_module("xattn_video.bench.synthetic")
