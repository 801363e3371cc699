"""Old import paths keep working (deprecated aliases of the eval/ and bench/ packages)."""

import importlib
import sys

import pytest


@pytest.mark.parametrize(
    "old,new",
    [
        ("xattn_video.compare", "xattn_video.eval.compare"),
        ("xattn_video.metrics", "xattn_video.eval.metrics"),
        ("xattn_video.benchmark", "xattn_video.bench.operator"),
        ("xattn_video.synthetic", "xattn_video.bench.synthetic"),
    ],
)
def test_moved_module_alias_is_the_new_module(old, new):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match="moved to"):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)


def test_hooks_aliases_reach_the_scorer_registry(monkeypatch):
    sys.modules.pop("xattn_video.hooks", None)
    with pytest.warns(DeprecationWarning):
        hooks = importlib.import_module("xattn_video.hooks")
    from xattn_video.eval import scorers
    from xattn_video.eval.errors import Unavailable
    from xattn_video.eval.metrics import MetricUnavailable

    monkeypatch.setattr(scorers.registry, "_REGISTRY", dict(scorers.registry._REGISTRY))

    class Fake:
        name = "fake"

        def __init__(self, args):
            self.args = args

        def score(self, videos, prompts):
            return {}

    hooks.register_hook("fake", Fake)
    assert "fake" in scorers.available_scorers() and "fake" in hooks.available_hooks()
    assert hooks.make_hooks("fake:a")[0].args == ["a"]
    assert hooks.HookUnavailable is Unavailable is MetricUnavailable
    assert hooks.VBenchHook is scorers.VBenchScorer and hooks.FlickerHook is scorers.FlickerScorer


def test_vbench_driver_imports_without_torch():
    """VBench's environment runs the driver with -m; the packages above it must not need our dependencies."""
    import subprocess

    code = ("import sys, runpy; import xattn_video.eval.scorers.vbench_driver; "
            "bad = {'torch', 'omegaconf', 'diffusers'} & set(sys.modules); assert not bad, bad")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
