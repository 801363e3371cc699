"""``xvid calibrate``'s input checks, run before torch or diffusers load (a refusal costs a second): the target,
the profiled steps against the schedule, the sample count, ``--out``."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

from ..config import ConfigError, RunConfig, XvidWarning


def check_target(target_recall: float | None = None, target_error: float | None = None,
                 density: float | None = None) -> tuple[str, float]:
    """(objective, value) after checking that exactly one target is given and in range."""
    given = {k: v for k, v in (("recall", target_recall), ("error", target_error), ("density", density))
             if v is not None}
    if len(given) != 1:
        raise ConfigError("give exactly one of target_recall (--target-recall), target_error (--target-error) "
                          "or density (--density)")
    (name, value), = given.items()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(f"{name} target must be a number, got {value!r}")
    value = float(value)
    if name == "recall" and not 0.0 < value <= 1.0:
        raise ConfigError(f"target recall must be in (0, 1], got {value}")
    if name == "error" and value < 0.0:
        raise ConfigError(f"target error must be >= 0 (a relative error), got {value}")
    if name == "density" and not 0.0 < value <= 1.0:
        raise ConfigError(f"density budget must be in (0, 1], got {value}")
    return name, value


def profiled_steps(run: RunConfig, steps: int) -> int:
    """Sparse-eligible steps a run can profile: ``steps``, capped by the schedule after the warmup (an
    ``XvidWarning`` says so when it is: asking for 10 and profiling 3 is not what was asked)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"--steps (profiled denoising steps) must be a positive int, got {steps!r}")
    available = run.generation.steps - run.xattn.warmup_steps
    if available < 1:
        raise ConfigError(f"nothing to profile: xattn.warmup_steps ({run.xattn.warmup_steps}) leaves no sparse "
                          f"step of generation.steps ({run.generation.steps})")
    if steps > available:
        warnings.warn(f"--steps {steps}: only {available} sparse-eligible steps follow the "
                      f"{run.xattn.warmup_steps} warmup steps of generation.steps ({run.generation.steps}); "
                      f"profiling {available}", XvidWarning)
    return min(steps, available)


def check_samples(samples: int) -> int:
    """Query blocks sampled per attention call: a positive int."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ConfigError(f"samples (query blocks per call) must be a positive int, got {samples!r}")
    return samples


YAML_SUFFIXES = (".yaml", ".yml")


def check_yaml_out(out: Path) -> None:
    """``--out`` names a YAML file that can be written: ``xvid generate --config`` reads it back, and the report,
    plot and profile take its name with their own suffixes (``c.mp4`` would give a YAML called ``c.mp4``)."""
    from ..video_io import OutputPathError, check_output_path

    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give the YAML file to write, e.g. {out / 'calib.yaml'}")
    if out.suffix.lower() not in YAML_SUFFIXES:
        got = f"'{out.suffix}'" if out.suffix else "no extension"
        raise ConfigError(f"--out {out}: calibrate writes a config YAML, so the name must end in .yaml or .yml, "
                          f"got {got} (e.g. {out.with_suffix('.yaml')})")
    try:
        check_output_path(out, YAML_SUFFIXES)
    except OutputPathError as exc:
        raise ConfigError(f"--out: {exc}") from None


__all__ = ["YAML_SUFFIXES", "check_samples", "check_target", "check_yaml_out", "profiled_steps"]
