"""The composed prompt's noise choice (``generation.clause_candidates``, pipelines/clause_noise.py): K seeded noises,
each sampled to the last composed step, the one whose clauses overlap least kept."""

import numpy as np
import pytest
import torch

from xattn_video.config import ConfigError, load_config
from xattn_video.generate import run_pipeline
from xattn_video.pipelines import clauses
from xattn_video.pipelines.clause_noise import candidate_noises, scored_step
from xattn_video.pipelines.clauses import clause_overlap
from xattn_video.pipelines.loading import load_pipeline

TINY_WAN = ["model.path=tiny-wan", "model.device=cpu", "generation.frames=5", "generation.steps=4",
            "generation.height=64", "generation.width=64", "generation.guidance_scale=1",
            "generation.clause_weight=1", "generation.clause_steps=2"]
TWO = "generation.prompt=a red ball moving left and a white square moving down"


@pytest.fixture(scope="module")
def tiny_wan():
    return load_pipeline(load_config(None, TINY_WAN).model)


def _run(pipe, *extra: str, latents=None, dense=True):
    run = load_config(None, TINY_WAN + list(extra))
    run.dense = dense
    return run_pipeline(pipe, run, latents=latents, show_progress=False)


def test_clause_overlap_is_the_shared_mass_of_the_clauses_object_maps():
    gen = torch.Generator().manual_seed(0)
    empty = torch.randn(2, 3, 2, 4, 4, generator=gen)
    apart_a, apart_b = empty.clone(), empty.clone()
    apart_a[..., 0, 0] += 5  # clause a draws in one cell, clause b in another: nothing shared
    apart_b[..., 3, 3] += 5
    assert torch.allclose(clause_overlap(empty, [apart_a, apart_b]), torch.zeros(2))
    assert torch.allclose(clause_overlap(empty, [apart_a, apart_a.clone()]), torch.ones(2))
    a, b = (empty + torch.randn(2, 3, 2, 4, 4, generator=gen) for _ in range(2))
    maps = [(x - empty).norm(dim=1) for x in (a, b)]  # [B, F, H, W]
    maps = [m / m.sum(dim=(-2, -1), keepdim=True) for m in maps]
    expected = torch.minimum(*maps).sum(dim=(-2, -1)).mean(-1)  # per row, mean over frames
    torch.testing.assert_close(clause_overlap(empty, [a, b]), expected)


def test_scored_step_is_the_windows_last_composed_step():
    assert scored_step(20, 4) == 3
    assert scored_step(20, None) == 3 and scored_step(20, None, clause_start=2) == 5
    assert scored_step(3, 4) == 2 and scored_step(1, None) == 0


def test_the_chosen_noise_is_the_least_overlapping_candidate_and_the_video_is_its_own(tiny_wan, monkeypatch):
    """K = 3: the choice is the argmin of each candidate's overlap at the last composed step, recorded here by a
    wrapped blend; the video equals the plain composed run from that candidate's noise; candidate 0 is the noise
    the pipeline draws itself from the seed (K = 1)."""
    seed = 7
    noises = candidate_noises(tiny_wan, 3, 5, 64, 64, seed, "cpu")
    assert not torch.equal(noises[0], noises[1])
    seen: list[tuple[int | None, float]] = []

    class Recording(clauses.ClauseCompositionHook):
        def blend(self, prompt, empty, parts, weight):
            seen.append((self.tracker.current(), clause_overlap(empty, parts).item()))
            return super().blend(prompt, empty, parts, weight)

    monkeypatch.setattr(clauses, "ClauseCompositionHook", Recording)
    expected = []
    for k in range(3):
        seen.clear()
        _run(tiny_wan, TWO, f"generation.seed={seed}", latents=noises[k:k + 1].clone())
        expected.append([value for step, value in seen if step == 1][-1])
    monkeypatch.undo()
    best = int(np.argmin(expected))
    assert len(set(np.round(expected, 6))) == 3, f"seed {seed}: candidates overlap alike: {expected}"
    chosen = _run(tiny_wan, TWO, f"generation.seed={seed}", "generation.clause_candidates=3")
    assert chosen.clause_noise == best, f"seed {seed}: overlaps {expected}"
    own = _run(tiny_wan, TWO, f"generation.seed={seed}", latents=noises[best:best + 1].clone())
    np.testing.assert_array_equal(chosen.frames, own.frames)
    plain = _run(tiny_wan, TWO, f"generation.seed={seed}")
    first = _run(tiny_wan, TWO, f"generation.seed={seed}", latents=noises[:1].clone())
    np.testing.assert_array_equal(plain.frames, first.frames)  # candidate 0 is the seed's own noise
    assert plain.clause_noise is None


def test_dense_and_xattention_runs_choose_the_same_noise_and_one_clause_prompts_choose_none(tiny_wan):
    dense = _run(tiny_wan, TWO, "generation.seed=3", "generation.clause_candidates=4")
    sparse = _run(tiny_wan, TWO, "generation.seed=3", "generation.clause_candidates=4", "xattn.warmup_steps=1",
                  "xattn.threshold=0.5", dense=False)
    assert dense.clause_noise == sparse.clause_noise is not None
    assert sparse.xattn["mean_density_sparse_calls"] is not None
    one = _run(tiny_wan, "generation.prompt=a red ball moving right", "generation.clause_candidates=4")
    assert one.clause_noise is None
    registry = getattr(tiny_wan.transformer, "_diffusers_hook", None)
    assert registry is None or clauses.CLAUSE_HOOK not in registry.hooks  # removed after the choice and the run


@pytest.mark.parametrize("value", ["0", "-1", "1.5", "true"])
def test_clause_candidates_refuses_bad_values(value):
    with pytest.raises(ConfigError, match="generation.clause_candidates"):
        load_config(None, ["model.path=tiny", f"generation.clause_candidates={value}"])


def test_generate_records_and_prints_the_chosen_noise_and_a_step_cache_sees_only_the_generation(tmp_path, capsys):
    """The choice runs before the step cache is installed: the cache's ledger covers the generation's 6 steps only
    (the candidates' steps would have been computed in it too), and the record and summary line name the noise."""
    import json

    from xattn_video.cli import main

    out = tmp_path / "two.mp4"
    assert main(["generate", "--model", "tiny-wan", "--device", "cpu", "--height", "64", "--width", "64",
                 "--frames", "5", "--steps", "6", "--cache", "taylorseer", "--prompt",
                 "a red ball moving left and a white square moving down", "--set", "generation.clause_weight=1",
                 "--set", "generation.clause_steps=2", "--set", "generation.clause_candidates=3",
                 "--out", str(out)]) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["clause_noise"] in (0, 1, 2)
    assert [s["status"] for s in record["cache"]["steps"]][:4] == ["computed"] * 4
    assert len(record["cache"]["steps"]) == 6
    assert f"noise {record['clause_noise']} of 3 chosen" in capsys.readouterr().out
