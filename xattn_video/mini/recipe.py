"""Training recipes for the mini model: a VAE stage, then transformer phases run one after the other in one
process (``python -m xattn_video.mini.train --out DIR --recipe grow``).

A phase is one learning-rate schedule (warm-up, cosine to 10%) at one clip shape and σ shift; the phases grow the
clips from 48 to 2,304 tokens per attention call, each at the shift that matches its token count (≈ 3·sqrt(tokens /
48), as resolution-dependent shifts do), then add the ``mini-large`` shape, then a low shift with the
shape-weighted loss for the detail. One process keeps the optimizer, the EMA and the compiled graphs across phases
(ten separate processes spent ~9 of 38 minutes on start-up and compilation). ``--time-limit``/``--resume`` split it
into device calls. A recipe is a name in :data:`RECIPES` or a JSON file ``{"vae_seconds": S, "phases": [{...}]}``
whose phase keys are :class:`Phase`'s fields. The budgets assume the training flags the run uses
(``--compile --latent-reuse 4 --encode-every 8``: benchmarks/train_mini_recipe_gpu.sh); other flags apply to every
phase.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

MINI_SHAPE = (33, 128, 128)  # frames, height, width: 9 x 16 x 16 = 2,304 tokens per attention call
LARGE_SHAPE = (33, 352, 352)  # 9 x 44 x 44 = 17,424 tokens


@dataclass(frozen=True)
class Phase:
    """One transformer phase: ``seconds`` (time budget, compilation included: the step count that fills it is
    decided after the first steps and recorded) or ``steps``; the clip shape, batch and σ shifts; the learning
    rate's peak and warm-up steps (> 40, so the step count is decided inside the warm-up); the shape loss weight; the
    share of two-object clips.
    ``compile`` False runs the phase eager even under ``--compile`` (compiling a new shape costs ~45 s on an H100,
    more than a short phase at a small shape saves); ``restart`` starts the phase from the EMA weights with fresh
    AdamW moments and the EMA's warm-up begun again, as each of the shipped weights' ten segments began from the
    previous segment's folder."""

    name: str
    seconds: float | None = None
    steps: int | None = None
    mini_shape: tuple[int, int, int] = MINI_SHAPE
    batch: int = 32
    large_every: int = 0  # every N-th step at the mini-large shape (0: never)
    large_batch: int = 4
    flow_shift: float = 3.0
    large_flow_shift: float | None = None  # None: flow_shift
    lr: float = 8e-4
    warmup: int = 100
    shape_weight: float = 0.0
    two_prob: float | None = None  # share of two-object clips; None: the command's --two-prob
    compile: bool = True
    restart: bool = False

    def __post_init__(self) -> None:
        if (self.seconds is None) == (self.steps is None):
            raise ValueError(f"recipe phase {self.name!r}: give exactly one of seconds and steps")
        if self.two_prob is not None and not 0 <= self.two_prob <= 1:
            raise ValueError(f"recipe phase {self.name!r}: two_prob must be in [0, 1], got {self.two_prob}")
        if len(self.mini_shape) != 3:
            raise ValueError(f"recipe phase {self.name!r}: mini_shape is (frames, height, width), "
                             f"got {self.mini_shape}")


@dataclass(frozen=True)
class Recipe:
    """The VAE stage's budget (``vae_seconds`` or ``vae_steps``; both None: no VAE stage, e.g. after
    ``--init-vae``) and the transformer phases."""

    phases: tuple[Phase, ...]
    vae_seconds: float | None = None
    vae_steps: int | None = None


_LOW = dict(flow_shift=6.0, large_flow_shift=12.0, warmup=50, shape_weight=10.0, large_every=2)
# Budgets for one H200 (1,270 s; with start-up and the compilation after each resume under 25 minutes). Phase by
# phase the recipe of the weights shipped before (ten processes, 37.8 min on an H100: benchmarks/train_mini_grow_gpu.sh
# a-l), shorter, with e, f folded into g, h and l into k, and every 2nd step at mini-large from g on (k and l's
# change, which lifted prompt_match from 0.69 / 0.63 to 0.80 / 0.81).
GROW = Recipe(vae_seconds=120, phases=(
    Phase("a", seconds=90, mini_shape=(9, 32, 32), batch=256, flow_shift=3.0, warmup=300),
    Phase("b", seconds=70, mini_shape=(33, 64, 64), flow_shift=10.0),
    Phase("c", seconds=130, flow_shift=20.0),
    Phase("d", seconds=200, flow_shift=20.0, large_flow_shift=55.0, large_every=4),
    Phase("g", seconds=220, lr=4e-4, **_LOW),
    Phase("k", seconds=440, lr=3e-4, **_LOW),
))
# The shipped weights' ten segments (benchmarks/train_mini_grow_gpu.sh a-l, 12,050 transformer steps, 37.8 min as
# ten processes on an H100) as phases of one process: the same step counts, shapes, shifts, learning rates and
# shape weights, each phase restarting from the EMA as each segment started from the previous folder; a and b run
# eager (short, small shapes: compiling them cost more than it saved); the VAE trains on the GPU as in `grow`.
# Expected ~24 minutes on an H100 with the measured step times (benchmarks/NOTES.md, seventeenth session).
_SEG_LOW = dict(flow_shift=6.0, large_flow_shift=12.0, warmup=50, large_every=4, restart=True)
SEGMENTS = Recipe(vae_seconds=120, phases=(
    Phase("a", steps=700, mini_shape=(9, 32, 32), batch=256, flow_shift=3.0, warmup=300, compile=False),
    Phase("b", steps=250, mini_shape=(33, 64, 64), flow_shift=10.0, compile=False, restart=True),
    Phase("c", steps=850, flow_shift=20.0, restart=True),
    Phase("d", steps=1850, flow_shift=20.0, large_flow_shift=55.0, large_every=4, restart=True),
    Phase("e", steps=1050, lr=4e-4, **_SEG_LOW),
    Phase("f", steps=900, lr=3e-4, **_SEG_LOW),
    Phase("g", steps=800, lr=4e-4, shape_weight=10.0, **_SEG_LOW),
    Phase("h", steps=1150, lr=3e-4, shape_weight=10.0, **_SEG_LOW),
    Phase("k", steps=2000, lr=3e-4, shape_weight=10.0, **{**_SEG_LOW, "large_every": 2}),
    Phase("l", steps=2500, lr=3e-4, shape_weight=10.0, **{**_SEG_LOW, "large_every": 2}),
))
RECIPES = {"grow": GROW, "segments": SEGMENTS}


def load_recipe(spec: str) -> Recipe:
    """A recipe by name (:data:`RECIPES`) or from a JSON file; one clear error for anything else."""
    if spec in RECIPES:
        return RECIPES[spec]
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"--recipe {spec!r}: not a recipe name ({', '.join(RECIPES)}) nor a JSON file")
    try:
        data = json.loads(path.read_text())
        fields = {f.name for f in dataclasses.fields(Phase)}
        phases = []
        for i, phase in enumerate(data["phases"]):
            unknown = set(phase) - fields
            if unknown:
                raise ValueError(f"phase {i}: unknown keys {sorted(unknown)} (known: {sorted(fields)})")
            if "mini_shape" in phase:
                phase = {**phase, "mini_shape": tuple(phase["mini_shape"])}
            phases.append(Phase(**phase))
        unknown = set(data) - {"phases", "vae_seconds", "vae_steps"}
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)} (known: phases, vae_seconds, vae_steps)")
        if not phases:
            raise ValueError("no phases")
        return Recipe(phases=tuple(phases), vae_seconds=data.get("vae_seconds"), vae_steps=data.get("vae_steps"))
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as error:
        raise ValueError(f"--recipe {path}: {error}") from None


__all__ = ["GROW", "LARGE_SHAPE", "MINI_SHAPE", "Phase", "RECIPES", "Recipe", "SEGMENTS", "load_recipe"]
