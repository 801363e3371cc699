"""triton is optional: a CPU install without it imports, runs the torch backend and the CLI."""

import os
import subprocess
import sys
import tomllib
from pathlib import Path

# Makes `import triton` fail as on a machine without it, then exercises what a CPU user runs.
RUNNER = """
import importlib.abc, sys

class NoTriton(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "triton" or name.startswith("triton."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoTriton())
import torch
import xattn_video
from xattn_video import xattention
from xattn_video.kernels import XAttentionInputError, resolve_backend

assert resolve_backend("auto", torch.device("cpu")) == "torch"
g = torch.Generator().manual_seed(0)
q, k, v = (torch.randn(1, 70, 2, 64, generator=g) for _ in range(3))
assert torch.equal(xattention(q, k, v, threshold=0.5, block_size=32),
                   xattention(q, k, v, threshold=0.5, block_size=32, backend="torch"))
try:
    xattention(q, k, v, threshold=0.5, block_size=32, backend="triton")
except XAttentionInputError as exc:
    assert "not installed" in str(exc)
else:
    raise AssertionError("backend='triton' without triton must be refused")
import xattn_video.cli, xattn_video.generate, xattn_video.pipelines  # the whole CPU path imports
assert "triton" not in sys.modules
print("OK")
"""


def test_package_works_without_triton():
    env = {k: v for k, v in os.environ.items() if k != "XATTN_BACKEND"}
    env["PYTHONPATH"] = str(Path(__file__).parents[1])
    out = subprocess.run([sys.executable, "-c", RUNNER], capture_output=True, text=True, timeout=300, env=env)
    assert out.stdout.strip().endswith("OK"), out.stdout + out.stderr


def test_triton_is_not_a_base_dependency():
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert not any(d.replace(" ", "").startswith("triton") for d in project["dependencies"])
    assert any(d.replace(" ", "").startswith("triton>=3.7") for d in project["optional-dependencies"]["test"])
