"""What the ``xvid`` command shows of warnings: third-party warnings known to be harmless are dropped, and our
own ``XvidWarning`` is one ``xvid <command>: warning: ...`` line.

Installed by ``cli.main`` only: the library never touches warning filters or loggers (a Python user sees
everything). Nothing heavy is imported here; logger filters attach to logger names before the libraries load.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from .config import XvidWarning

# (logger name, message start): diffusers/transformers log these through their loggers on every run.
KNOWN_LOG_MESSAGES: tuple[tuple[str, str], ...] = (
    # transformers without torchvision falls back to the PIL image processor: same results (HunyuanVideo 1.5)
    ("transformers.utils.import_utils", "`SiglipImageProcessor` requires torchvision"),
    # diffusers' guiders (HunyuanVideo 1.5) and context parallelism call themselves experimental on each use
    ("diffusers.guiders.guider_utils", "Guiders are currently an experimental feature"),
    ("diffusers.models.modeling_utils", "`enable_parallelism` is an experimental feature"),
    # diffusers' context-parallel plan meets inputs it does not split (e.g. pooled text), as designed
    ("diffusers.hooks.context_parallel", "Expected input tensor to have"),
)
# (category, message regex) for the warnings module.
KNOWN_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    # diffusers 0.42's context-parallel gather uses a deprecated functional collective; nothing to act on
    (FutureWarning, r".*all_gather_tensor.* is deprecated"),
)


class _DropKnown(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


_state: dict[str, Any] = {"command": None}


def install(command: str = "") -> None:
    """Drop the known harmless warnings and print ``XvidWarning`` as ``xvid <command>: warning: <message>``.

    Calling it again (tests run ``cli.main`` many times) only changes the command named."""
    first = _state["command"] is None
    _state["command"] = command
    for category, message in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    warnings.simplefilter("default", XvidWarning)  # once per message and place, even under python -W ignore
    if not first and getattr(warnings.showwarning, "_xvid", False):
        return
    if first:
        for name, prefix in KNOWN_LOG_MESSAGES:
            logging.getLogger(name).addFilter(_DropKnown(prefix))
    shown = warnings.showwarning

    def show(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None,
             line: Any = None) -> None:
        if issubclass(category, XvidWarning):
            import sys

            prog = f"xvid {_state['command']}" if _state["command"] else "xvid"
            print(f"{prog}: warning: {message}", file=sys.stderr if file is None else file)
        else:
            shown(message, category, filename, lineno, file, line)

    show._xvid = True  # type: ignore[attr-defined]
    warnings.showwarning = show


__all__ = ["KNOWN_LOG_MESSAGES", "KNOWN_WARNINGS", "install"]
