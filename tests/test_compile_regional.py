"""Regional compilation (xattn_video/compile.py): blocks calling our operator compile with fullgraph=True."""

import pytest
import torch
from diffusers import ModelMixin

from helpers import rel_err
from xattn_video.compile import compile_transformer
from xattn_video.kernels import xattention
from xattn_video.kernels.dense import dense_attention

H, D = 2, 64


class TinyBlock(torch.nn.Module):
    """Attention block whose mode (dense or XAttention at τ) is a host value set before the forward,
    as the attention dispatch does once per forward pass."""

    def __init__(self, tau: float | None, backend: str):
        super().__init__()
        self.qkv = torch.nn.Linear(H * D, 3 * H * D)
        self.tau, self.backend = tau, backend

    def forward(self, x: torch.Tensor, kv_lens: list[int], text_start: int) -> torch.Tensor:
        q, k, v = self.qkv(x).unflatten(-1, (3, H, D)).unbind(2)
        if self.tau is None:
            out = dense_attention(q, k, v, kv_lens)
        else:
            out = xattention(q, k, v, threshold=self.tau, block_size=32, kv_len=kv_lens[0], text_start=text_start,
                             backend=self.backend)
        return x + out.flatten(2)


class TinyTransformer(ModelMixin):
    _repeated_blocks = ["TinyBlock"]

    def __init__(self, taus, backend):
        super().__init__()
        self.blocks = torch.nn.ModuleList(TinyBlock(t, backend) for t in taus)

    def forward(self, x, kv_lens, text_start):
        for block in self.blocks:
            x = block(x, kv_lens, text_start)
        return x


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_blocks_with_xattention_compile_without_graph_breaks(gen, backend, triton_device):
    device = triton_device if backend == "triton" else "cpu"
    if backend == "torch" and tuple(int(x) for x in torch.__version__.split(".")[:2]) < (2, 13):
        # the torch reference slices by kv_len; older dynamo cannot trace that without a guard (seen on 2.11)
        pytest.skip("the torch reference compiles with fullgraph on torch >= 2.13")
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    torch.manual_seed(gen.initial_seed())
    # 10 blocks > dynamo's default recompile limit of 8; τ values repeat, one block is dense
    taus = [0.6, 0.6, 0.9, None, 0.6, 0.9, 0.6, 0.6, 0.9, 0.6]
    if backend == "triton":
        taus = [0.6, 0.6]  # the Triton interpreter is slow on the CPU
    model = TinyTransformer(taus, backend).eval().to(device)
    S, text_start, kv = 150, 140, 145
    x = torch.randn(1, S, H * D, generator=gen).to(device)
    with torch.no_grad():
        ref = model(x, [kv], text_start)
        assert compile_transformer(model, backend="aot_eager") == len(taus)
        out = model(x, [kv], text_start)  # fullgraph=True: any graph break raises
    assert rel_err(out, ref) < 1e-5, f"seed {gen.initial_seed()}"
    # blocks that share their host values share a graph: one per distinct τ (and dense), not one per block
    compiled = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert compiled == len(set(taus)), f"{compiled} graphs for {len(set(taus))} distinct modes"


def test_model_without_repeated_blocks_is_refused():
    class Plain(ModelMixin):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)

    with pytest.raises(ValueError, match="no repeated blocks"):
        compile_transformer(Plain())


def test_model_compile_key():
    from xattn_video.config import ConfigError, load_config
    from xattn_video.generate import check_inputs

    assert load_config(overrides=["model.compile=true", "dense=true"]).model.compile
    check_inputs(load_config(overrides=["model.compile=true"]))  # with XAttention too (the tiny HunyuanVideo)
    with pytest.raises(ConfigError, match="model.compile"):
        load_config(overrides=["model.compile=maybe"])


def test_stock_hunyuan_blocks_compile_fullgraph(gen):
    """What `model.compile: true` does to a dense run: diffusers' HunyuanVideo blocks, no graph break."""
    from diffusers import HunyuanVideoTransformer3DModel

    torch._dynamo.reset()
    torch.manual_seed(gen.initial_seed())
    model = HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=64, num_layers=1,
        num_single_layers=1, num_refiner_layers=1, mlp_ratio=2.0, text_embed_dim=32, pooled_projection_dim=16,
        rope_axes_dim=(8, 28, 28)).eval()
    mask = torch.zeros(1, 12, dtype=torch.bool)
    mask[:, :5] = True
    kw = dict(hidden_states=torch.randn(1, 4, 2, 16, 16, generator=gen), timestep=torch.tensor([500]),
              encoder_hidden_states=torch.randn(1, 12, 32, generator=gen), encoder_attention_mask=mask,
              pooled_projections=torch.randn(1, 16, generator=gen), guidance=torch.tensor([6000.0]), return_dict=False)
    with torch.no_grad():
        ref = model(**kw)[0]
        assert compile_transformer(model, backend="eager") >= 2
        assert compile_transformer(model, backend="eager") >= 2  # idempotent
        out = model(**kw)[0]
    assert rel_err(out, ref) < 1e-5, f"seed {gen.initial_seed()}"
