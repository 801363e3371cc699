"""The tiny pipeline on a GPU: bf16 transformer, Triton kernels through the attention dispatch."""

import numpy as np
import torch

from helpers import requires_cuda
from xattn_video.pipelines.hunyuan_video import apply_xattention
from xattn_video.pipelines.tiny import TINY_PROMPT_TEMPLATE, build_tiny_pipeline

pytestmark = requires_cuda

CALL = dict(prompt="a cat walks on the grass", height=256, width=256, num_frames=9, num_inference_steps=4,
            output_type="np", prompt_template=TINY_PROMPT_TEMPLATE, max_sequence_length=32)


def test_tiny_pipeline_bf16_on_gpu_with_triton_backend():
    pipe = build_tiny_pipeline().to("cuda")
    pipe.transformer.to(torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)

    def run():
        return pipe(generator=torch.Generator().manual_seed(0), **CALL).frames[0]

    stock = run()
    with apply_xattention(pipe, {"threshold": 1.0, "block_size": 32, "warmup_steps": 0, "dense_backend": "stock"}):
        np.testing.assert_array_equal(run(), stock)
    with apply_xattention(pipe, {"threshold": 0.5, "block_size": 32, "warmup_steps": 1, "backend": "triton"}) as h:
        sparse = run()
        summary = h.summary()
    with apply_xattention(pipe, {"threshold": 0.5, "block_size": 32, "warmup_steps": 1, "backend": "torch"}) as h:
        reference = run()
    assert np.isfinite(sparse).all()
    assert 0 < summary["mean_density_sparse_calls"] < 1
    assert np.abs(sparse - stock).max() > 0
    assert np.abs(sparse - reference).mean() < 0.02  # bf16 Triton vs the fp32-accumulating torch reference
