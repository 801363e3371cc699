"""Fixtures only; shared helpers live in helpers.py (tests import that, never this file)."""

import os

import numpy as np
import pytest
import torch

# Without a GPU the Triton kernels run through Triton's interpreter; it must be on before they are defined.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from helpers import HAS_CUDA, SEEDS, generator, numpy_rng, seed_id  # noqa: E402


@pytest.fixture
def triton_device() -> str:
    """Where Triton-backend tests run: the GPU if there is one, else the CPU under the interpreter."""
    return "cuda" if HAS_CUDA else "cpu"


@pytest.fixture(params=SEEDS, ids=seed_id)
def gen(request) -> torch.Generator:
    """A generator seeded from helpers.SEEDS (test ids say which: ``[seed0]``); ``gen.initial_seed()`` is the seed."""
    return generator(request.param)


@pytest.fixture(params=SEEDS, ids=seed_id)
def rng(request) -> np.random.Generator:
    """A numpy generator seeded from helpers.SEEDS (test ids say which: ``[seed0]``)."""
    return numpy_rng(request.param)
