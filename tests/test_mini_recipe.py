"""Training recipes (xattn_video.mini.recipe): phases run in order in one process, each with its own shape, shift
and loss weight; a run split by --time-limit/--resume ends where the whole run ends; bad recipes get one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import TIED_VAE, TINY_RECIPE, tiny_args

from xattn_video.mini import recipe as mini_recipe
from xattn_video.mini import train

# the record of the ten segments' last one (l), kept with its logs
SEGMENT_L_RECORD = Path(__file__).parents[1] / "benchmarks/results/mini-stage-kl-nvidia-h100/l-training.json"


def test_phases_run_in_order_with_their_own_shape_shift_and_weight(tmp_path, monkeypatch):
    drawn = []  # (phase's step, clip shape, σ shift, shape weight) per training step
    render, flow_sigmas = train.render, train.flow_sigmas

    def spy_render(objects, frames, height, width, rng, device, *rest):
        drawn.append([(frames, height, width)])
        return render(objects, frames, height, width, rng, device, *rest)

    def spy_sigmas(n, generator, device, sampling, shift):
        drawn[-1].append(shift)
        return flow_sigmas(n, generator, device, sampling, shift)

    monkeypatch.setattr(train, "render", spy_render)
    monkeypatch.setattr(train, "flow_sigmas", spy_sigmas)
    assert train.main(tiny_args(tmp_path)) == 0
    # the text probes render once per phase at its mini shape; the steps render then draw σ
    steps = [d for d in drawn if len(d) == 2]
    assert steps == [[(5, 32, 32), 3.0]] * 3 + [[(5, 48, 48), 6.0], [(5, 64, 64), 9.0]] * 2
    record = json.loads((tmp_path / "mini" / "training.json").read_text())
    assert record["steps"]["transformer"] == 7
    assert [(p["name"], p["steps"]) for p in record["phases"]] == [("first", 3), ("second", 4)]
    assert [step for step, _ in record["loss_curve"]] == list(range(1, 8))  # steps counted over the whole run
    assert record["flow_shift"] == {"mini": 6.0, "mini-large": 9.0}  # the last phase's: what the presets sample at
    scheduler = json.loads((tmp_path / "mini" / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["flow_shift"] == 6.0
    assert record["recipe"][1]["shape_weight"] == 10.0 and record["args"]["shape_weight"] == 10.0


def test_a_run_split_by_the_time_limit_ends_as_the_whole_run(tmp_path):
    """--time-limit 0 stops after every step (inside a phase and between phases); each resume goes on from the
    checkpoint until the folder is written, with every phase's steps run once."""
    checkpoint = tmp_path / "run.ckpt"
    args = tiny_args(tmp_path, "--time-limit", "0", "--checkpoint", str(checkpoint))
    codes = [train.main(args)]
    saved = train.torch.load(checkpoint, weights_only=False)
    # small enough to carry to the next device call: the EMA stands in for the raw weights, no Adam moments
    assert "ema_transformer" in saved and not {"transformer", "text_encoder", "optimizer"} & set(saved)
    while codes[-1] == 3 and len(codes) < 12:
        codes.append(train.main([*args, "--resume", str(checkpoint)]))
    assert codes == [3] * 6 + [0]
    record = json.loads((tmp_path / "mini" / "training.json").read_text())
    assert [(p["name"], p["steps"]) for p in record["phases"]] == [("first", 3), ("second", 4)]
    assert record["steps"]["transformer"] == 7 and len(record["commands"]) == len(record["devices"]) == 7
    assert "--resume" not in record["command"] and "--resume" in record["commands"][-1]


def test_resumed_transformer_warms_its_learning_rate_up_again(tmp_path, monkeypatch):
    """A transformer checkpoint holds no Adam moments: the resumed run ramps the learning rate over RESUME_WARMUP."""
    checkpoint = tmp_path / "run.ckpt"
    args = tiny_args(tmp_path, "--time-limit", "0", "--checkpoint", str(checkpoint))
    assert train.main(args) == 3
    rates = []
    step = train.torch.optim.AdamW.step

    def spy_step(self, *a, **k):
        rates.append(self.param_groups[0]["lr"])
        return step(self, *a, **k)

    monkeypatch.setattr(train.torch.optim.AdamW, "step", spy_step)
    assert train.main([*args, "--resume", str(checkpoint)]) == 3
    base = 8e-4 * train.lr_at(1, 3, 1)  # the phase's schedule at its step 1
    assert rates == [pytest.approx(base / train.RESUME_WARMUP)]


def test_bad_recipes_are_refused_with_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"phases": [{"name": "x", "steps": 2, "shift": 3}]}))
    with pytest.raises(ValueError, match=r"unknown keys \['shift'\]"):
        mini_recipe.load_recipe(str(bad))
    bad.write_text(json.dumps({"phases": [{"name": "x", "steps": 2, "seconds": 9}]}))
    with pytest.raises(ValueError, match="exactly one of seconds and steps"):
        mini_recipe.load_recipe(str(bad))
    with pytest.raises(SystemExit) as stop:
        train.parse_args(["--out", "x", "--recipe", "nonesuch"])
    assert stop.value.code == 2 and "not a recipe name (grow, segments) nor a JSON file" in capsys.readouterr().err


def test_grow_recipe_fits_the_issue_budget_and_ends_at_the_presets_shifts():
    """The shipped recipe: under 25 minutes on one H200 with ≥ 3 minutes left for start-up and the compilation
    after each of two resumes; every warm-up outlasts the steps that time a phase (its step count is decided
    inside the warm-up); it ends at the shifts the mini presets sample at."""
    grow = mini_recipe.RECIPES["grow"]
    assert grow.vae_seconds + sum(p.seconds for p in grow.phases) <= 22 * 60
    assert all(p.warmup > train.TIMED_STEPS[1] for p in grow.phases)
    last = grow.phases[-1]
    assert (last.mini_shape, last.flow_shift, last.large_flow_shift) == (mini_recipe.MINI_SHAPE, 6.0, 12.0)
    args = train.parse_args(["--out", "x", "--recipe", "grow"])
    assert (args.vae_seconds, [p.name for p in args.phases]) == (grow.vae_seconds, [p.name for p in grow.phases])
    assert train.parse_args(["--out", "x", "--recipe", "grow", "--init-vae", str(TIED_VAE)]).vae_steps == 0


def test_phase_switches_eager_and_restart_from_the_ema(tmp_path, monkeypatch):
    """``compile`` False: under --compile the phase calls the transformer itself, the next phase the compiled one.
    ``restart``: the phase's first step starts from the EMA weights, with a new AdamW and the EMA's warm-up begun
    again (as each of the shipped weights' segments began from the previous folder)."""
    calls, pairs, ema_steps, optimizers = [], [], [], []
    ema_update, ema_decay, make = train.ema_update, train.ema_decay, train.transformer_optimizer

    def fake_compiled(transformer):
        def forward(*a, **k):
            calls.append(a[0].shape[-1])  # the latents [B, C, F, H, W]
            return transformer(*a, **k)
        return forward

    def spy_update(ema, model, decay):
        pairs.append((ema, model))
        return ema_update(ema, model, decay)

    def spy_decay(step, decay):
        ema_steps.append(step)
        return ema_decay(step, decay)

    def spy_optimizer(params, lr):  # True: every trained module holds its EMA's weights (vacuous before any EMA)
        optimizers.append(all(train.torch.equal(a, b) for ema, model in pairs[-2:]
                              for a, b in zip(ema.parameters(), model.parameters())))
        return make(params, lr)

    for name, spy in (("compiled_forward", fake_compiled), ("ema_update", spy_update), ("ema_decay", spy_decay),
                      ("transformer_optimizer", spy_optimizer)):
        monkeypatch.setattr(train, name, spy)
    first, second = TINY_RECIPE["phases"]
    switches = {"phases": [{**first, "compile": False}, {**second, "restart": True}]}
    assert train.main(tiny_args(tmp_path, "--compile", recipe=switches)) == 0
    assert calls == [12, 16] * 2  # the second phase's steps only (48 and 64 pixels: 12 and 16 latent columns)
    assert optimizers == [True, True] and len(pairs) == 14  # the stage's optimizer, then the restart's
    assert ema_steps[::2] == [0, 1, 2, 0, 1, 2, 3]  # per step (transformer, then text encoder): warm-up begun again


def test_segments_recipe_is_the_shipped_weights_schedule():
    """``segments`` repeats, phase by phase, the ten segments recorded in segment l's training.json (its ``init``
    chain; l was the shipped folder before ``segments`` ran): step counts, clip shapes, batches, shifts, learning
    rates, warm-ups, shape weights."""
    record = json.loads(SEGMENT_L_RECORD.read_text())
    chain = []
    while record:
        chain.append(record)
        record = record.get("init")
    chain.reverse()  # a first
    phases = mini_recipe.RECIPES["segments"].phases
    assert len(chain) == len(phases) == 10
    for phase, segment in zip(phases, chain):
        a = segment["args"]
        recorded = (segment["steps"]["transformer"], tuple(a["mini_shape"]), a["batch"], a["large_every"],
                    a["flow_shift"], a["large_flow_shift"], a["lr"], a["warmup"], a.get("shape_weight", 0.0))
        large_shift = phase.flow_shift if phase.large_flow_shift is None else phase.large_flow_shift
        assert (phase.steps, phase.mini_shape, phase.batch, phase.large_every, phase.flow_shift, large_shift,
                phase.lr, phase.warmup, phase.shape_weight) == recorded, phase.name
    assert [p.restart for p in phases] == [False] + [True] * 9
    assert sum(p.steps for p in phases) == 12_050


def test_layers_sets_the_transformer_depth_of_the_written_folder(tmp_path, capsys):
    from diffusers import WanTransformer3DModel

    recipe = {"phases": [TINY_RECIPE["phases"][0]]}
    assert train.main(tiny_args(tmp_path, "--layers", "3", recipe=recipe)) == 0
    transformer = WanTransformer3DModel.from_pretrained(tmp_path / "mini" / "transformer")
    assert transformer.config.num_layers == 3 and len(transformer.blocks) == 3
    record = json.loads((tmp_path / "mini" / "training.json").read_text())
    assert record["args"]["layers"] == 3
    with pytest.raises(SystemExit) as stop:
        train.main(tiny_args(tmp_path, "--layers", "0", recipe=recipe))
    assert stop.value.code == 2 and "--layers must be >= 1" in capsys.readouterr().err


def test_a_phase_may_set_the_share_of_two_object_clips(tmp_path, monkeypatch):
    shares = []  # the two-object share of every clip the training steps draw, in order (the probes give none)
    sample_objects = train.sample_objects

    def spy(rng, two_prob=None):
        if two_prob is None:
            return sample_objects(rng)
        shares.append(two_prob)
        return sample_objects(rng, two_prob)

    monkeypatch.setattr(train, "sample_objects", spy)
    first, second = TINY_RECIPE["phases"]
    recipe = {"phases": [{**first, "two_prob": 1.0}, {**second, "large_every": 0}]}
    assert train.main(tiny_args(tmp_path, "--two-prob", "0.25", "--latent-reuse", "1", recipe=recipe)) == 0
    assert set(shares[:2 * 3]) == {1.0} and set(shares[2 * 3:]) == {0.25}, shares
    record = json.loads((tmp_path / "mini" / "training.json").read_text())
    assert [phase["two_prob"] for phase in record["recipe"]] == [1.0, None]
    with pytest.raises(ValueError, match="two_prob must be in"):
        mini_recipe.Phase("x", steps=1, two_prob=1.5)
