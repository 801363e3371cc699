"""Clause composition (``generation.clause_weight``, pipelines/clauses.py): the blend of the prompt's, the empty
prompt's and each clause's predictions, computed in one widened transformer call."""

import numpy as np
import pytest
import torch

from xattn_video.config import ConfigError, load_config
from xattn_video.generate import run_pipeline
from xattn_video.pipelines.clauses import CLAUSE_HOOK, ClauseCompositionHook, split_clauses
from xattn_video.pipelines.dispatch import add_hook, remove_hook
from xattn_video.pipelines.loading import load_pipeline


def test_split_clauses_at_the_word_and():
    assert split_clauses("a red ball moving left and a white square moving down") == [
        "a red ball moving left", "a white square moving down"]
    assert split_clauses("a red ball moving right") == ["a red ball moving right"]
    assert split_clauses("sand and candy, and a band.") == ["sand", "candy", "a band"]  # whole words only
    assert split_clauses("a and and b") == ["a", "b"]


class TextDependent(torch.nn.Module):
    """A stand-in transformer: its output depends on each row's latents, timestep and text, nonlinearly."""

    def __init__(self, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.nn.Parameter(torch.randn(6, 3, generator=g))

    def forward(self, hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_image=None,
                attention_kwargs=None, return_dict=True):
        text = torch.tanh(encoder_hidden_states.mean(1) @ self.w)  # [B, 3]
        out = hidden_states * text[:, :, None] + timestep[:, None, None] / 1000
        if encoder_hidden_states_image is not None:
            out = out + encoder_hidden_states_image.sum((1, 2))[:, None, None]
        return (out,) if not return_dict else type("Out", (), {"sample": out})()


@pytest.mark.parametrize("batch, weight", [(1, 0.75), (2, 1.0), (3, 0.5)])
def test_the_hook_blends_the_prompt_with_the_composition_of_its_clauses(gen, batch, weight):
    model = TextDependent(gen.initial_seed())
    x = torch.randn(batch, 3, 5, generator=gen)
    t = torch.rand(batch, generator=gen) * 1000
    prompt = torch.randn(1, 4, 6, generator=gen).expand(batch, 4, 6).contiguous()
    parts = torch.randn(3, 4, 6, generator=gen)  # empty prompt, clause 1, clause 2
    image = torch.randn(batch, 2, 6, generator=gen)
    other = torch.randn(batch, 4, 6, generator=gen)

    def alone(text):
        return model(hidden_states=x, timestep=t, encoder_hidden_states=text, encoder_hidden_states_image=image,
                     return_dict=False)[0]

    v_prompt, v_empty, v_1, v_2 = alone(prompt), *(alone(p.expand(batch, 4, 6)) for p in parts)
    expected = v_prompt + weight * (v_empty + (v_1 - v_empty) + (v_2 - v_empty) - v_prompt)
    v_other = alone(other)
    add_hook(model, ClauseCompositionHook(prompt, parts, weight), CLAUSE_HOOK)
    got = model(hidden_states=x, timestep=t, encoder_hidden_states=prompt, encoder_hidden_states_image=image,
                return_dict=False)[0]
    got_output = model(hidden_states=x, timestep=t, encoder_hidden_states=prompt,
                       encoder_hidden_states_image=image).sample
    unchanged = alone(other)  # another text (classifier-free guidance's negative prompt): runs as is
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_output, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(unchanged, v_other, rtol=0, atol=0)
    remove_hook(model, CLAUSE_HOOK)
    torch.testing.assert_close(alone(prompt), v_prompt, rtol=0, atol=0)


def test_the_hook_composes_only_in_its_window_of_steps(gen):
    from xattn_video.warmup.schedule import StepTracker

    model = TextDependent(gen.initial_seed())
    x, t = torch.randn(1, 3, 5, generator=gen), torch.rand(1, generator=gen) * 1000
    prompt, parts = torch.randn(1, 4, 6, generator=gen), torch.randn(2, 4, 6, generator=gen)

    def call():
        return model(hidden_states=x, timestep=t, encoder_hidden_states=prompt, return_dict=False)[0]

    plain = call()
    tracker = StepTracker(None)
    add_hook(model, ClauseCompositionHook(prompt, parts, 1.0, steps=3, tracker=tracker), CLAUSE_HOOK)
    for step, composed in ((0, True), (2, True), (3, False), (7, False), (None, True)):  # None: step unknown
        tracker.manual_step = step
        assert torch.equal(call(), plain) is not composed, f"step {step}"
    remove_hook(model, CLAUSE_HOOK)
    add_hook(model, ClauseCompositionHook(prompt, parts, 1.0, steps=4, tracker=tracker, start=2), CLAUSE_HOOK)
    for step, composed in ((0, False), (1, False), (2, True), (3, True), (4, False), (None, True)):
        tracker.manual_step = step
        assert torch.equal(call(), plain) is not composed, f"start 2, step {step}"
    remove_hook(model, CLAUSE_HOOK)


TINY_WAN = ["model.path=tiny-wan", "model.device=cpu", "generation.frames=5", "generation.steps=3",
            "generation.height=64", "generation.width=64", "generation.guidance_scale=1"]


@pytest.fixture(scope="module")
def tiny_wan():
    return load_pipeline(load_config(None, TINY_WAN).model)


def _frames(pipe, *extra: str) -> np.ndarray:
    run = load_config(None, TINY_WAN + list(extra))
    run.dense = True
    return run_pipeline(pipe, run, show_progress=False).frames


def test_a_two_clause_prompt_is_composed_and_a_one_clause_prompt_is_not(tiny_wan):
    two = "generation.prompt=a red ball moving left and a white square moving down"
    plain = _frames(tiny_wan, two)
    composed = _frames(tiny_wan, two, "generation.clause_weight=1")
    assert np.abs(plain - composed).max() > 1e-3
    first_step = _frames(tiny_wan, two, "generation.clause_weight=1", "generation.clause_steps=1")
    assert np.abs(first_step - composed).max() > 1e-3 and np.abs(first_step - plain).max() > 1e-3
    later_steps = _frames(tiny_wan, two, "generation.clause_weight=1", "generation.clause_start=1")
    assert np.abs(later_steps - composed).max() > 1e-3 and np.abs(later_steps - plain).max() > 1e-3
    assert np.abs(later_steps - first_step).max() > 1e-3
    np.testing.assert_array_equal(_frames(tiny_wan, two, "generation.clause_weight=0"), plain)
    one = "generation.prompt=a red ball moving right"
    np.testing.assert_array_equal(_frames(tiny_wan, one, "generation.clause_weight=1"), _frames(tiny_wan, one))
    registry = getattr(tiny_wan.transformer, "_diffusers_hook", None)
    assert registry is None or CLAUSE_HOOK not in registry.hooks  # removed after the run


def test_the_clause_suffix_is_appended_to_each_clause_only(tiny_wan, monkeypatch):
    """``generation.clause_suffix`` (weights trained with partial captions mark "this object, whatever else is
    there" so): each clause's text gets it, the whole prompt and the empty prompt do not."""
    two = "a red ball moving left and a white square moving down"
    texts: list[list[str]] = []
    encode = tiny_wan.encode_prompt

    def recording(*args, **kwargs):
        if isinstance(kwargs.get("prompt"), list):  # the composition's call (the pipeline's own passes embeds)
            texts.append(kwargs["prompt"])
        return encode(*args, **kwargs)

    monkeypatch.setattr(tiny_wan, "encode_prompt", recording)
    plain = _frames(tiny_wan, f"generation.prompt={two}", "generation.clause_weight=1")
    marked = _frames(tiny_wan, f"generation.prompt={two}", "generation.clause_weight=1",
                     "generation.clause_suffix=', among others'")  # quoted: a bare leading comma is YAML syntax
    assert texts[-1] == [two, "", "a red ball moving left, among others", "a white square moving down, among others"]
    assert texts[0][2:] == ["a red ball moving left", "a white square moving down"]
    assert np.abs(plain - marked).max() > 1e-4


def test_the_refereed_composition_drops_clause_differences_that_oppose_the_prompt(gen):
    """``refereed_composition``: per latent cell, a clause's difference from the empty prompt counts only where its
    dot product over channels with the prompt's difference is >= 0 (a clause alone erases the object it does not
    name, benchmarks/mini_clause_erasure.py; the whole prompt draws it)."""
    from xattn_video.pipelines.clauses import refereed_composition

    prompt, empty, a, b = (torch.randn(2, 4, 3, 5, 6, generator=gen) for _ in range(4))
    expected = empty.clone()
    for clause in (a, b):
        d = clause - empty
        agree = torch.einsum("bcfhw,bcfhw->bfhw", d, prompt - empty) >= 0
        expected += torch.where(agree.unsqueeze(1), d, torch.zeros_like(d))
    torch.testing.assert_close(refereed_composition(prompt, empty, [a, b]), expected)
    # an object at one cell: the prompt and clause a draw it, clause b erases it -> kept as clause a draws it
    empty = torch.zeros(1, 4, 1, 2, 2)
    bump = torch.zeros_like(empty)
    bump[..., 0, 0] = 1.0
    out = refereed_composition(empty + bump, empty, [empty + 1.2 * bump, empty - 0.8 * bump])
    torch.testing.assert_close(out, empty + 1.2 * bump)
    plain = empty + (1.2 * bump) + (-0.8 * bump)  # the plain composition keeps 0.4 of it
    assert out[..., 0, 0].mean() > 2 * plain[..., 0, 0].mean()


def test_the_hook_with_a_referee_blends_the_refereed_composition(gen):
    from xattn_video.pipelines.clauses import refereed_composition

    model = TextDependent(gen.initial_seed())
    x, t = torch.randn(2, 3, 5, generator=gen), torch.rand(2, generator=gen) * 1000
    prompt = torch.randn(1, 4, 6, generator=gen).expand(2, 4, 6).contiguous()
    parts = torch.randn(3, 4, 6, generator=gen)  # empty prompt, clause 1, clause 2

    def alone(text):
        return model(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]

    v_prompt, v_empty, v_1, v_2 = alone(prompt), *(alone(p.expand(2, 4, 6)) for p in parts)
    expected = v_prompt + 0.75 * (refereed_composition(v_prompt, v_empty, [v_1, v_2]) - v_prompt)
    plain = v_prompt + 0.75 * (v_empty + (v_1 - v_empty) + (v_2 - v_empty) - v_prompt)
    assert (expected - plain).abs().max() > 1e-3, f"seed {gen.initial_seed()}: every difference agrees"
    add_hook(model, ClauseCompositionHook(prompt, parts, 0.75, referee=True), CLAUSE_HOOK)
    got = model(hidden_states=x, timestep=t, encoder_hidden_states=prompt, return_dict=False)[0]
    remove_hook(model, CLAUSE_HOOK)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_the_referee_key_reaches_the_hook(tiny_wan, monkeypatch):
    from xattn_video.pipelines import clauses

    seen = []

    class Recording(clauses.ClauseCompositionHook):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.append(self.referee)

    monkeypatch.setattr(clauses, "ClauseCompositionHook", Recording)
    two = "generation.prompt=a red ball moving left and a white square moving down"
    _frames(tiny_wan, two, "generation.clause_weight=1", "generation.clause_referee=true")
    _frames(tiny_wan, two, "generation.clause_weight=1")
    assert seen == [True, False]


def test_composition_with_guidance_and_xattention_runs(tiny_wan):
    run = load_config(None, TINY_WAN + ["generation.prompt=a red ball and a blue square", "generation.clause_weight=0.5",
                                        "generation.guidance_scale=3", "xattn.warmup_steps=1"])
    result = run_pipeline(tiny_wan, run, show_progress=False)
    assert np.isfinite(result.frames).all() and result.xattn["mean_density_sparse_calls"] is not None


@pytest.mark.parametrize("key, value", [("clause_weight", "-0.5"), ("clause_weight", "yes"), ("clause_weight", "true"),
                                        ("clause_steps", "0"), ("clause_steps", "2.5"), ("clause_steps", "true"),
                                        ("clause_start", "-1"), ("clause_start", "1.5"), ("clause_start", "true"),
                                        ("clause_referee", "yes please")])
def test_clause_keys_refuse_bad_values(key, value):
    with pytest.raises(ConfigError, match=f"generation.{key}"):
        load_config(None, ["model.path=tiny", f"generation.{key}={value}"])


def test_clause_start_must_leave_a_composed_step():
    with pytest.raises(ConfigError, match="generation.clause_start.*below.*generation.clause_steps"):
        load_config(None, ["model.path=tiny", "generation.clause_start=3", "generation.clause_steps=3"])
    assert load_config(None, ["model.path=tiny", "generation.clause_start=2",
                              "generation.clause_steps=3"]).generation.clause_start == 2


def test_composition_is_refused_outside_the_wan_family():
    base = ["model.path=tiny", "model.device=cpu", "generation.frames=5", "generation.steps=2",
            "generation.height=64", "generation.width=64", "generation.prompt=a cat and a dog",
            "generation.clause_weight=1"]
    run = load_config(None, base)
    run.dense = True
    with pytest.raises(ConfigError, match="generation.clause_weight.*Wan-family.*HunyuanVideoPipeline"):
        run_pipeline(load_pipeline(run.model), run, show_progress=False)


def test_the_cli_refuses_composition_outside_the_wan_family_in_one_line(tmp_path, capsys):
    from xattn_video.cli import main

    out = tmp_path / "v.mp4"
    rc = main(["generate", "--model", "tiny", "--frames", "5", "--steps", "2", "--prompt", "a cat and a dog",
               "--clause-weight", "1", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "generation.clause_weight" in err, err
    assert list(tmp_path.iterdir()) == []


def test_the_mini_presets_compose_by_default_and_other_models_do_not():
    """The mini presets' default schedule (weight 1 in the first 4 of 20 steps: best of eleven schedules on the
    tuning pairs at both presets, README); an explicit value still wins, and other built-in models leave it off."""
    for name in ("mini", "mini-large"):
        g = load_config(None, [f"model.path={name}"]).generation
        assert (g.clause_weight, g.clause_steps, g.clause_start) == (1.0, 4, 0)
        assert load_config(None, [f"model.path={name}", "generation.clause_weight=0"]).generation.clause_weight == 0
        assert load_config(None, [f"model.path={name}", "generation.clause_steps=null"]).generation.clause_steps is None
    for name in ("tiny", "tiny-wan"):
        assert load_config(None, [f"model.path={name}"]).generation.clause_weight == 0


def test_the_referee_is_on_by_default_at_mini_only():
    """The refereed composition gained objects at ``mini`` and lost some at ``mini-large`` (README), so only ``mini``
    turns it on; an explicit value still wins."""
    assert load_config(None, ["model.path=mini"]).generation.clause_referee is True
    assert load_config(None, ["model.path=mini", "generation.clause_referee=false"]).generation.clause_referee is False
    for name in ("mini-large", "tiny-wan"):
        assert load_config(None, [f"model.path={name}"]).generation.clause_referee is False
