"""MagCache's calibration run: keep the magnitude ratios diffusers measures (it prints them and then clears them).

With ``calibrate=True`` MagCache computes every step and appends one ratio per step to its state's
``calibration_ratios`` list; at the last step it prints the list and replaces it by a new empty one. Holding a
reference to the list object (taken after every call, so the last step's append still lands in it) keeps the
whole series. One series per CFG context; the ratios written are their mean per step (MagCache takes one list).
"""

from __future__ import annotations

from typing import Any

import torch


class Calibration:
    """Captures the ratio lists of the MagCache head hook on ``transformer`` (see the module docstring)."""

    def __init__(self, transformer: torch.nn.Module):
        from diffusers.hooks.mag_cache import _MAG_CACHE_LEADER_BLOCK_HOOK

        from .ledger import _hooks

        self._hooks = _hooks(transformer, _MAG_CACHE_LEADER_BLOCK_HOOK)
        self._lists: dict[str, list] = {}

    def capture(self) -> None:
        for hook in self._hooks:
            for name, state in hook.state_manager._state_cache.items():
                if state.calibration_ratios:  # after the last step it is a new empty list: keep the old one
                    self._lists[name] = state.calibration_ratios

    def ratios(self) -> list[float] | None:
        series = [list(v) for v in self._lists.values() if v]
        if not series:
            return None
        n = min(len(s) for s in series)
        return [round(sum(s[i] for s in series) / len(series), 5) for i in range(n)]


def calibrated_config(run_config: Any, ratios: list[float]) -> Any:
    """``run_config`` with MagCache on and these ratios, calibration off: what the YAML next to the video holds."""
    import dataclasses

    cache = run_config.cache
    magcache = {**dict(cache.magcache or {}), "mag_ratios": list(ratios), "calibrate": False}
    return dataclasses.replace(run_config, cache=dataclasses.replace(cache, name="magcache", magcache=magcache))


__all__ = ["Calibration", "calibrated_config"]
