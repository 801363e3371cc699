import os

import pytest
import torch

# Without a GPU the Triton kernels run through Triton's interpreter; it must be on before they are defined.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

HAS_CUDA = torch.cuda.is_available()


@pytest.fixture
def triton_device() -> str:
    """Where Triton-backend tests run: the GPU if there is one, else the CPU under the interpreter."""
    return "cuda" if HAS_CUDA else "cpu"


@pytest.fixture
def gen() -> torch.Generator:
    """A freshly seeded generator per test: new random inputs every run of the suite."""
    g = torch.Generator()
    g.manual_seed(int.from_bytes(os.urandom(4), "little"))
    return g


requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
