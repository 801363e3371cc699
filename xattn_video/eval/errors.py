"""The one "cannot score here" error of the eval package."""

from __future__ import annotations


class Unavailable(RuntimeError):
    """A metric or scorer cannot run here (missing package, weights, files, or a failed run).

    The message says why and what to do; ``compare`` reports it as the reason the metric was skipped.
    """
