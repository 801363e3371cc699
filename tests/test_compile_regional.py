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
        assert compile_transformer(model, backend="aot_eager", fullgraph=True) == len(taus)
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


# ------------------------------------------------- XAttention installed on a real (tiny Wan) transformer, and fullgraph


def _tiny_wan_forward(pipe):
    x = torch.randn(1, 16, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    text = torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return pipe.transformer(x, timestep=torch.tensor([500]), encoder_hidden_states=text, return_dict=False)[0]


@pytest.mark.parametrize("order", ["compile-first", "install-first"])
def test_default_compile_runs_with_xattention(order):
    from xattn_video.pipelines.family import apply_xattention
    from xattn_video.pipelines.loading import build_tiny

    torch._dynamo.reset()
    pipe = build_tiny("tiny-wan")
    config = {"warmup_steps": 0, "block_size": 32}
    with apply_xattention(pipe, config):
        ref = _tiny_wan_forward(pipe)
    if order == "compile-first":
        compile_transformer(pipe.transformer, backend="eager")
    with apply_xattention(pipe, config):
        if order == "install-first":
            compile_transformer(pipe.transformer, backend="eager")  # default fullgraph=False
        out = _tiny_wan_forward(pipe)
    assert rel_err(out, ref) < 1e-5


@pytest.mark.parametrize("how", ["compile_transformer", "compile_repeated_blocks"])
@pytest.mark.parametrize("order", ["compile-first", "install-first"])
def test_fullgraph_with_xattention_is_one_line_naming_the_fix(how, order):
    """Both fail in dynamo at the first forward without the check ("Skip inlining torch.compiler.disable()d
    function"); now the compile, the install or the first forward raises FullgraphError naming the fix."""
    from xattn_video.compile import FullgraphError
    from xattn_video.pipelines.family import apply_xattention
    from xattn_video.pipelines.loading import build_tiny

    torch._dynamo.reset()
    pipe = build_tiny("tiny-wan")

    def compile_fullgraph():
        if how == "compile_transformer":
            compile_transformer(pipe.transformer, backend="eager", fullgraph=True)
        else:
            pipe.transformer.compile_repeated_blocks(fullgraph=True, backend="eager")

    with pytest.raises(FullgraphError) as info:
        if order == "compile-first":
            compile_fullgraph()
        with apply_xattention(pipe, {"warmup_steps": 0, "block_size": 32}):
            if order == "install-first":
                compile_fullgraph()
            _tiny_wan_forward(pipe)
    message = str(info.value)
    assert "\n" not in message and "fullgraph=False" in message
    if order == "compile-first":  # nothing was installed: the pipeline still runs (compiled, without XAttention)
        assert not any(getattr(m, "_diffusers_hook", None) and m._diffusers_hook.hooks
                       for m in pipe.transformer.modules())
