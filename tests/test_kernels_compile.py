"""The operator under torch.compile (fullgraph: no graph break in the kernel path) and CUDA graphs."""

import pytest
import torch

from helpers import assert_rel_err, capture_and_replay, make_qkv, rel_err, requires_cuda
from xattn_video.kernels import xattention



@pytest.mark.parametrize("per_head", [False, True])
def test_fullgraph_compile_matches_eager(gen, triton_device, per_head):
    torch._dynamo.reset()
    dtype = torch.float32 if triton_device == "cpu" else torch.bfloat16
    q, k, v = make_qkv(gen, 1, 160, 2, device=triton_device, dtype=dtype)
    tau = [0.5, 0.9] if per_head else 0.8

    def attn(q, k, v):
        return xattention(q, k, v, threshold=tau, block_size=32, text_start=150, kv_len=155, backend="triton")

    compiled = torch.compile(attn, fullgraph=True, backend="aot_eager" if triton_device == "cpu" else "inductor")
    out = compiled(q, k, v)
    assert_rel_err(out, attn(q, k, v), 1e-5, seed=gen)


@requires_cuda
def test_cuda_graph_capture_proves_no_host_sync(gen):
    q, k, v = make_qkv(gen, 1, 3000, 4, device="cuda", dtype=torch.bfloat16)
    kw = dict(threshold=[0.7, 0.8, 0.9, 0.95], stride=8, text_start=2900, kv_len=2950)
    eager, captured = capture_and_replay(lambda *x: xattention(*x, **kw), (q, k, v), gen)
    assert_rel_err(captured, xattention(q, k, v, **kw), 1e-2, seed=gen)
    assert rel_err(captured, eager) > 0.1  # the replay really ran on the new inputs
