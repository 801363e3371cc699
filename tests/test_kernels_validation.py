"""Bad input gets an error that names the problem."""

import pytest
import torch

from helpers import generator, make_qkv
from xattn_video.kernels import (
    BlockSelection,
    XAttentionInputError,
    block_sparse_attention,
    resolve_backend,
    select_blocks,
    xattention,
)


def _qkv(S: int = 64):
    """Inputs for validation tests (values do not matter, shapes do)."""
    return make_qkv(generator(0), 1, S, 2, 64)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda q, k, v: (q[0], k, v), "q must be 4-D"),
        (lambda q, k, v: (q, k[:, :, :1], v), "head count differs"),
        (lambda q, k, v: (q, torch.cat([k, k]), v), "batch size differs"),
        (lambda q, k, v: (q, k, v[:, :10]), "same sequence length"),
        (lambda q, k, v: (q[..., :32], k[..., :32], v[..., :32]), "head_dim must be one of"),
        (lambda q, k, v: (q, k, v.half()), "dtype"),
        (lambda q, k, v: (q.int(), k.int(), v.int()), "supported dtypes"),
        (lambda q, k, v: (q, k[..., :32], v), "head_dim differs"),
    ],
)
def test_shape_and_dtype_errors(make, match):
    q, k, v = make(*_qkv())
    with pytest.raises(XAttentionInputError, match=match):
        xattention(q, k, v, block_size=32)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(threshold=0.0), "threshold must be > 0"),
        (dict(threshold=-0.5), "threshold must be > 0"),
        (dict(threshold=float("nan")), "NaN"),
        (dict(threshold=[0.9, 0.9, 0.9]), r"shape \[H\] = \[2\]"),
        (dict(stride=6), "multiple of stride"),
        (dict(stride=0), "stride must be a positive int"),
        (dict(kv_len=0), r"kv_len out of range"),
        (dict(kv_len=65), r"kv_len out of range"),
        (dict(kv_len=[64, 64]), "one per batch"),
        (dict(kv_len=torch.tensor([1.5])), "integer tensor"),
        (dict(text_start=65), "text_start must be in"),
        (dict(max_density=0.0), "max_density must be in"),
        (dict(layout="bsdh"), "layout must be one of"),
        (dict(backend="cuda"), "backend must be one of"),
    ],
)
def test_argument_errors(kwargs, match):
    q, k, v = _qkv()
    kwargs = {"block_size": 32, **kwargs}
    with pytest.raises(XAttentionInputError, match=match):
        xattention(q, k, v, **kwargs)


def test_triton_on_cpu_without_interpreter_is_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q, k, v = _qkv()
    with pytest.raises(XAttentionInputError, match="needs CUDA tensors"):
        xattention(q, k, v, block_size=32, backend="triton")


def test_env_var_forces_backend(monkeypatch):
    q, k, v = _qkv()
    monkeypatch.setenv("XATTN_BACKEND", "nonsense")
    with pytest.raises(XAttentionInputError, match="XATTN_BACKEND"):
        xattention(q, k, v, block_size=32)
    # "torch" wins over the device: auto on a CUDA device would otherwise pick triton (no tensor needed to ask).
    monkeypatch.setenv("XATTN_BACKEND", "torch")
    assert resolve_backend("auto", torch.device("cuda")) == "torch"
    assert torch.equal(xattention(q, k, v, block_size=32), xattention(q, k, v, block_size=32, backend="torch"))
    # "triton" reaches xattention: CPU tensors without the interpreter are refused with the Triton message.
    monkeypatch.setenv("XATTN_BACKEND", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert resolve_backend("auto", torch.device("cuda")) == "triton"
    with pytest.raises(XAttentionInputError, match="needs CUDA tensors"):
        xattention(q, k, v, block_size=32, threshold=0.5)
    assert xattention(q, k, v, block_size=32, backend="torch").shape == q.shape  # an explicit backend ignores it


def test_triton_rejects_unsupported_block_size(triton_device):
    q, k, v = (x.to(triton_device) for x in _qkv(S=96))
    with pytest.raises(XAttentionInputError, match="powers of two"):
        xattention(q, k, v, block_size=48, stride=8, backend="triton", threshold=0.5)


def test_selection_mismatch_errors():
    q, k, v = _qkv(S=64)
    sel = BlockSelection.from_mask(torch.ones(1, 2, 3, 3, dtype=torch.bool), block_size=32, q_len=96,
                                   kv_len=torch.tensor([96]))
    with pytest.raises(XAttentionInputError, match="block grid"):
        block_sparse_attention(q, k, v, sel)
    with pytest.raises(XAttentionInputError, match="query blocks"):
        select_blocks(torch.rand(1, 2, 3, 3), 0.9, block_size=32, q_len=64)


@pytest.mark.parametrize("threshold", [0.5, 1.0])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_backward_says_inference_only(backend, threshold, triton_device):
    device = "cpu" if backend == "torch" else triton_device
    q, k, v = (torch.randn(1, 40, 1, 64, device=device, requires_grad=True) for _ in range(3))
    out = xattention(q, k, v, threshold=threshold, block_size=32, kv_len=35, backend=backend)
    with pytest.raises(RuntimeError, match="inference-only"):
        out.sum().backward()
    sel = select_blocks(torch.rand(1, 1, 2, 2, device=device), 0.5, block_size=32, q_len=40)
    with pytest.raises(RuntimeError, match="inference-only"):
        block_sparse_attention(q, k, v, sel, backend=backend).sum().backward()
    with torch.no_grad():  # without grad nothing changes
        assert not xattention(q, k, v, threshold=threshold, block_size=32, backend=backend).requires_grad
