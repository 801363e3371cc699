"""Import paths: the removed top-level aliases stay removed; light modules import nothing heavy."""

import importlib
import importlib.machinery
import sys

import pytest


@pytest.mark.parametrize("old", ["xattn_video.hooks", "xattn_video.compare", "xattn_video.metrics",
                                 "xattn_video.benchmark", "xattn_video.synthetic"])
def test_deprecated_top_level_aliases_are_gone(old):
    """Removed at 0.1 (issue 19): their homes are eval/ and bench/; one import path per module."""
    import xattn_video

    # Look in this package's own folder: an editable install of another checkout could still supply the name.
    assert importlib.machinery.PathFinder.find_spec(old.rsplit(".", 1)[1], xattn_video.__path__) is None


def test_vbench_driver_imports_without_torch():
    """VBench's environment runs the driver with -m; the packages above it must not need our dependencies."""
    import subprocess

    code = ("import sys, runpy; import xattn_video.eval.scorers.vbench_driver; "
            "bad = {'torch', 'omegaconf', 'diffusers'} & set(sys.modules); assert not bad, bad")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
