"""Where each clause of a two-clause prompt may act during clause composition: a layout planned from the clauses'
directions of motion, so that the clauses' objects start apart and do not meet on crossing paths.

Composing "a yellow ball moving right and a green ball moving left" lets each clause put its object where the noise
suggests, often one place for both, or on paths that cross; a model trained on clips whose objects never overlap
then settles the collision by fading one object (README, "Composition schedule"). Masking each clause's
difference to a region of the frame keeps the objects apart, in the way regional prompting lays out a picture:

- two objects moving along one axis (both left/right, or both up/down): one band each across that axis (top and
  bottom halves for horizontal motion, left and right halves for vertical motion);
- one horizontal and one vertical mover: the horizontal one gets the half-band its partner does not start in, the
  vertical one the half-column the horizontal one starts in, so that the two pass the shared quadrant at
  different times.

Outside its region a clause's difference keeps ``floor`` of its weight (0: none).
"""

from __future__ import annotations

import re

import torch

_DIRECTION = re.compile(r"\bmoving\s+(left|right|up|down)\b", re.IGNORECASE)
REGION_LAYOUTS = ("none", "directions")


def clause_direction(clause: str) -> str | None:
    """The direction word after "moving" in ``clause`` (lower case), or None."""
    match = _DIRECTION.search(clause)
    return match.group(1).lower() if match else None


def direction_regions(clauses: list[str], frames: int, height: int, width: int, floor: float = 0.0,
                      device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
    """Masks [n, 1, frames, height, width] in [floor, 1] (one per clause, the same in every frame, to multiply a
    latent [B, C, frames, height, width]), or None when the prompt is not two clauses that each name a direction."""
    directions = [clause_direction(c) for c in clauses]
    if len(clauses) != 2 or None in directions:
        return None
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
    top = (ys < 0.5).float().view(height, 1).expand(height, width)
    left = (xs < 0.5).float().view(1, width).expand(height, width)
    horizontal = [d in ("left", "right") for d in directions]
    if all(horizontal):
        masks = [top, 1 - top]
    elif not any(horizontal):
        masks = [left, 1 - left]
    else:
        h, v = (0, 1) if horizontal[0] else (1, 0)
        masks = [top, top]
        masks[h] = top if directions[v] == "up" else 1 - top  # the half the vertical mover does not start in
        masks[v] = left if directions[h] == "right" else 1 - left  # the half the horizontal mover starts in
    stacked = floor + (1 - floor) * torch.stack(masks)
    return stacked.view(2, 1, 1, height, width).expand(2, 1, frames, height, width).to(dtype)


__all__ = ["REGION_LAYOUTS", "clause_direction", "direction_regions"]
