"""Which optional install each evaluation feature needs, and the one-line hint that names the smallest one.

The extras in ``pyproject.toml`` (kept equal to :data:`EXTRA_PACKAGES`; ``tests/test_extras.py`` checks it):

* ``metrics`` - torchmetrics: PSNR and SSIM (no torchvision, so a CPU build of torch stays as it is);
* ``lpips``   - torchmetrics and torchvision: LPIPS (torchmetrics' LPIPS runs torchvision's AlexNet);
* ``plots``   - matplotlib: ``compare``'s PNG plots;
* ``eval``    - all of the above.

torchvision pins one torch version, and PyPI's wheels are CUDA builds: next to a CPU-only torch, ``pip install
torchvision`` either replaces torch with the CUDA build (several GB) or gives a torchvision that fails to import.
The hint for LPIPS therefore says how to keep torch on the CPU (torchvision from PyTorch's CPU index first).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterable

DIST = "xattn-video"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"

# extra -> the distributions it installs (names as in pyproject.toml, without version bounds)
EXTRA_PACKAGES: dict[str, tuple[str, ...]] = {
    "metrics": ("torchmetrics",),
    "lpips": ("torchmetrics", "torchvision"),
    "plots": ("matplotlib",),
    "eval": ("torchmetrics", "torchvision", "matplotlib"),
}
# feature (a pairwise metric or "plots") -> the smallest extra that makes it run
FEATURE_EXTRA: dict[str, str] = {"psnr": "metrics", "ssim": "metrics", "lpips": "lpips", "plots": "plots"}
# distribution -> the module it is imported as
_MODULE = {"torchmetrics": "torchmetrics", "torchvision": "torchvision", "matplotlib": "matplotlib"}


def needed_packages(features: Iterable[str]) -> list[str]:
    """The distributions ``features`` need, in first-needed order; unknown features raise ValueError."""
    out: list[str] = []
    for feature in features:
        if feature not in FEATURE_EXTRA:
            raise ValueError(f"unknown feature {feature!r}; known: {', '.join(FEATURE_EXTRA)}")
        out += [p for p in EXTRA_PACKAGES[FEATURE_EXTRA[feature]] if p not in out]
    return out


def importable(package: str) -> bool:
    """Whether the distribution ``package`` can be imported here (found on the path; not imported)."""
    return importlib.util.find_spec(_MODULE.get(package, package)) is not None


def missing_packages(features: Iterable[str]) -> list[str]:
    """The distributions ``features`` need that are not importable here."""
    return [p for p in needed_packages(features) if not importable(p)]


def smallest_extras(features: Iterable[str]) -> list[str]:
    """The fewest extras that together install what ``features`` need (an extra inside another one is dropped)."""
    chosen = list(dict.fromkeys(FEATURE_EXTRA[f] for f in features if f in FEATURE_EXTRA))
    return [e for e in chosen
            if not any(o != e and set(EXTRA_PACKAGES[e]) < set(EXTRA_PACKAGES[o]) for o in chosen)]


def pip_command(extras: Iterable[str]) -> str:
    """``pip install 'xattn-video[a,b]'``."""
    return f"pip install '{DIST}[{','.join(extras)}]'"


def torch_is_cpu_build() -> bool:
    """True for a CPU-only torch on Linux/Windows (where PyPI's torchvision wheels are CUDA builds)."""
    try:
        import torch
    except ImportError:
        return False
    if sys.platform == "darwin":
        return False
    return "+cpu" in torch.__version__ or (torch.version.cuda is None and getattr(torch.version, "hip", None) is None)


def torchvision_for_torch(torch_version: str) -> str:
    """The torchvision requirement built for ``torch_version`` (torch 2.N pairs with torchvision 0.(N+15))."""
    parts = torch_version.split("+")[0].split(".")
    if len(parts) >= 2 and parts[0] == "2" and parts[1].isdigit():
        return f"torchvision==0.{int(parts[1]) + 15}.*"
    return "torchvision"


def _cpu_torchvision_step() -> str:
    """The command that installs a CPU torchvision matching the installed torch (keeps torch as it is)."""
    import torch

    return f"pip install '{torchvision_for_torch(torch.__version__)}' --index-url {CPU_INDEX}"


def _install(features: list[str]) -> str:
    """One pip command for ``features`` and, in parentheses, exactly the distributions it brings."""
    return f"{pip_command(smallest_extras(features))} ({', '.join(needed_packages(features))})"


def install_hint(features: Iterable[str]) -> str:
    """The smallest install for ``features``, naming exactly what each command brings. Features that need no
    torchvision get their own, light command first; the torchvision one says how to keep a CPU torch on the CPU.

    >>> install_hint(["psnr", "ssim"])
    "pip install 'xattn-video[metrics]' (torchmetrics)"
    """
    features = list(dict.fromkeys(features))
    needed_packages(features)  # unknown features: ValueError
    heavy = [f for f in features if "torchvision" in EXTRA_PACKAGES[FEATURE_EXTRA[f]]]
    light = [f for f in features if f not in heavy]
    parts = [_install(light)] if light else []
    if heavy:
        command = _install(features)
        if torch_is_cpu_build():
            command = (f"{_cpu_torchvision_step()} && {command} - torchvision from PyTorch's CPU index first, "
                       "or pip replaces this CPU torch with the CUDA build")
        else:
            command += " - torchvision must match your torch build"
        parts.append(f"with {', '.join(heavy)}: {command}" if light else command)
        if light:
            parts[0] = f"for {', '.join(light)}: {parts[0]}"
    return "; ".join(parts)


def missing_message(features: Iterable[str], what: str = "metrics") -> str | None:
    """``"metrics psnr, ssim need torchmetrics: pip install 'xattn-video[metrics]' (torchmetrics)"``, or None when
    everything ``features`` need imports."""
    features = list(dict.fromkeys(features))
    missing = missing_packages(features)
    if not missing:
        return None
    noun = what if len(features) > 1 else what.rstrip("s")
    verb = "need" if len(features) > 1 else "needs"
    return f"{noun} {', '.join(features)} {verb} {' and '.join(missing)}: {install_hint(features)}"
