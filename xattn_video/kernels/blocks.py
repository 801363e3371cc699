"""The block grid: ``num_blocks`` (the one ceil-division helper) and ``BlockSelection`` (spec §2's output).

Depends on torch only, so the torch reference (``naive.py``), the Triton kernels and ``api.py`` all import it
without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def num_blocks(length: int | torch.Tensor, block_size: int) -> int | torch.Tensor:
    """Blocks of ``block_size`` needed to cover ``length`` items: ceil(length / block_size).

    ``length`` is a Python int (returns an int) or an integer tensor such as kv_len [B] (returns int64, on
    the same device, with no host synchronization).
    """
    if isinstance(length, torch.Tensor):
        return (length.to(torch.int64) + block_size - 1) // block_size
    return -(-length // block_size)


@dataclass
class BlockSelection:
    """Kept 128×128 (``block_size``) blocks of the attention matrix.

    counts:  int32 [B, H, nq]      kept key blocks per query block.
    indices: int32 [B, H, nq, nk]  kept key-block indices first (ascending), then the others (ascending).
    mask:    bool  [B, H, nq, nk]  True where a block is kept.
    kv_len:  int32 [B]             valid key count per batch (keys at positions ≥ kv_len are padding).
    """

    counts: torch.Tensor
    indices: torch.Tensor
    mask: torch.Tensor
    block_size: int
    q_len: int
    kv_len: torch.Tensor

    @property
    def num_q_blocks(self) -> int:
        return self.mask.shape[2]

    @property
    def num_kv_blocks(self) -> int:
        return self.mask.shape[3]

    def valid_kv_blocks(self) -> torch.Tensor:
        """int64 [B]: key blocks holding at least one valid key."""
        return num_blocks(self.kv_len, self.block_size)

    def density_per_head(self) -> torch.Tensor:
        """float32 [H]: kept blocks / (query blocks × valid key blocks), summed over the batch."""
        kept = self.counts.to(torch.float32).sum(dim=(0, 2))
        possible = (self.valid_kv_blocks().to(torch.float32) * self.num_q_blocks).sum()
        return kept / possible.clamp_min(1.0)

    def density(self) -> torch.Tensor:
        """0-d float32 tensor: overall fraction of kept blocks (no host sync; call ``.item()`` to read)."""
        kept = self.counts.to(torch.float32).sum()
        possible = (self.valid_kv_blocks().to(torch.float32) * self.num_q_blocks).sum() * self.mask.shape[1]
        return kept / possible.clamp_min(1.0)

    @staticmethod
    def from_mask(mask: torch.Tensor, *, block_size: int, q_len: int, kv_len: torch.Tensor) -> "BlockSelection":
        """Build counts and index lists from a block mask [B, H, nq, nk] (kept = True).

        Blocks lying wholly at or past kv_len [B] hold only padding and are dropped from the selection.
        """
        kv_len = kv_len.to(device=mask.device, dtype=torch.int32)
        valid = torch.arange(mask.shape[-1], device=mask.device)[None, :] < num_blocks(kv_len, block_size)[:, None]
        mask = mask & valid[:, None, None, :]
        counts = mask.sum(dim=-1, dtype=torch.int32)
        # Stable sort of the 0/1 "dropped" key: kept blocks first, each group in ascending block order.
        indices = torch.argsort((~mask).to(torch.int8), dim=-1, stable=True).to(torch.int32)
        return BlockSelection(
            counts=counts, indices=indices, mask=mask, block_size=block_size, q_len=q_len, kv_len=kv_len
        )
