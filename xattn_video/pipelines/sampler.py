"""The sampler's flow-matching shift for one generation (``generation.flow_shift``).

A flow-matching sampler spends its steps on σ = shift·u / (1 + (shift-1)·u) for u evenly spaced from 1 to 0:
the larger the shift, the more steps near σ 1, where a video's layout and motion are decided. The more tokens a
video has, the nearer to σ 1 its content shows through the noise, so larger videos want a larger shift (Wan uses 3
below 720p and 5 at 720p; the mini model records the shift it was trained with per preset).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from ..config import ConfigError

# scheduler config keys that hold the shift: UniPC / DPM-Solver with use_flow_sigmas (Wan), FlowMatchEuler (Hunyuan)
SHIFT_KEYS = ("flow_shift", "shift")


def shift_key(scheduler: Any) -> str:
    """The config key of ``scheduler``'s fixed flow-matching shift; ``ConfigError`` when it has none."""
    config = scheduler.config
    name = type(scheduler).__name__
    if config.get("use_dynamic_shifting"):
        raise ConfigError(f"config key 'generation.flow_shift': the scheduler {name} of this model shifts by the "
                          "video's size itself (use_dynamic_shifting)")
    if "flow_shift" in config and not config.get("use_flow_sigmas", True):
        raise ConfigError(f"config key 'generation.flow_shift': the scheduler {name} of this model does not use "
                          "flow-matching sigmas (use_flow_sigmas is false)")
    for key in SHIFT_KEYS:
        if key in config:
            return key
    raise ConfigError(f"config key 'generation.flow_shift': the scheduler {name} of this model has no shift")


@contextlib.contextmanager
def sampler_shift(pipe: Any, shift: float | None) -> Iterator[None]:
    """Run the block with ``pipe.scheduler`` shifted by ``shift`` (None: the checkpoint's own), then restore it."""
    if shift is None:
        yield
        return
    original = pipe.scheduler
    pipe.scheduler = type(original).from_config(original.config, **{shift_key(original): float(shift)})
    try:
        yield
    finally:
        pipe.scheduler = original
