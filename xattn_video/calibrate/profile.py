"""Per-head profile of one attention call: density, recall and output error for each candidate τ.

For every candidate τ the block selection is made by the operator itself (``estimate_block_scores`` +
``select_blocks``), so density counts exactly what a run with that τ keeps (forced diagonal and text blocks
included). Recall and error are exact, on a random sample of query blocks: the true softmax attention of the
sampled rows is computed over the valid keys in chunks with a running log-sum-exp, one head at a time, so
memory stays bounded at 119k tokens (no S×S matrix; the largest buffer is candidates × rows × key chunk).

- density:  kept blocks / (query blocks × valid key blocks), over ALL query blocks (as the run stats count it);
- recall:   mean over sampled rows of the exact attention mass inside the kept blocks;
- error:    ‖O_τ − O‖ / ‖O‖ over the sampled rows, O dense attention, O_τ attention over the kept blocks.

Profiles of many calls add up in ``CalibrationProfile``, keyed by layer with [H, T] sums, so steps and
prompts are averaged (density and recall weighted by blocks and rows, error as a ratio of summed squares).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Sequence

import torch

from ..stats import Label, layer_order, parse_label

from ..kernels import estimate_block_scores, select_blocks
from ..kernels.inputs import XAttentionInputError, normalize_kv_len

# τ candidates; τ = 1 (dense) is always feasible, so every recall/error target can be met.
from .defaults import DEFAULT_SAMPLES, DEFAULT_TAUS

# Largest float32 buffer of one key chunk (candidates × rows × keys), per device type.
CHUNK_BYTES = {"cpu": 64 * 1024 * 1024, "cuda": 512 * 1024 * 1024}


def check_taus(taus: Sequence[float]) -> tuple[float, ...]:
    """Sorted unique candidates; each must be a number > 0 (τ ≥ 1 is dense)."""
    try:
        values = sorted({float(t) for t in taus})
    except (TypeError, ValueError):
        raise XAttentionInputError(f"candidate thresholds must be numbers, got {list(taus)!r}") from None
    if not values or any(math.isnan(t) or t <= 0 for t in values):
        raise XAttentionInputError(f"candidate thresholds must be a non-empty list of numbers > 0, got {list(taus)}")
    return tuple(values)


@dataclass
class HeadSums:
    """Per-head sums; H heads × T candidates, float64 on the CPU (shared by ``CallProfile`` and ``LayerProfile``).

    kept [H, T] and possible [H]: blocks kept / possible (density = kept / possible);
    recall_sum [H, T] over ``rows`` [H] sampled query rows; err_num [H, T] = Σ‖O_τ − O‖², err_den [H] = Σ‖O‖².
    """

    kept: torch.Tensor
    possible: torch.Tensor
    recall_sum: torch.Tensor
    rows: torch.Tensor
    err_num: torch.Tensor
    err_den: torch.Tensor

    def density(self) -> torch.Tensor:
        return self.kept / self.possible.clamp_min(1.0)[:, None]

    def recall(self) -> torch.Tensor:
        return self.recall_sum / self.rows.clamp_min(1.0)[:, None]

    def error(self) -> torch.Tensor:
        return (self.err_num / self.err_den.clamp_min(1e-30)[:, None]).sqrt()


# The tensor fields of HeadSums, in order: what a layer sums and what the profile JSON holds per layer.
SUM_FIELDS = tuple(f.name for f in fields(HeadSums))


@dataclass
class CallProfile(HeadSums):
    """Sums for one attention call (see ``HeadSums``)."""

    query_blocks: list[int] = field(default_factory=list)  # the sampled query blocks


def sample_query_blocks(num_q_blocks: int, samples: int, generator: torch.Generator | None) -> list[int]:
    """``samples`` distinct query blocks (all of them if fewer), ascending."""
    if samples >= num_q_blocks:
        return list(range(num_q_blocks))
    return sorted(torch.randperm(num_q_blocks, generator=generator)[:samples].tolist())


@torch.no_grad()
def profile_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    taus: Sequence[float] = DEFAULT_TAUS,
    samples: int = DEFAULT_SAMPLES,
    generator: torch.Generator | None = None,
    kv_len: int | torch.Tensor | None = None,
    text_start: int | None = None,
    stride: int = 8,
    block_size: int = 128,
    keep_diagonal: bool = True,
    max_density: float | None = None,
    backend: str = "auto",
    query_blocks: Sequence[int] | None = None,
) -> CallProfile:
    """Density, recall and output error of each candidate τ for one call; q/k/v [B, S, H, D].

    ``samples`` query blocks are drawn with ``generator`` (or given as ``query_blocks``). Query rows at
    positions ≥ kv_len in self-attention (padded text queries) are not scored.
    """
    taus = check_taus(taus)
    B, Sq, H, D = q.shape
    Sk = k.shape[1]
    kv = normalize_kv_len(kv_len, B, Sk, q.device)
    scores = estimate_block_scores(q, k, stride=stride, block_size=block_size, kv_len=kv, backend=backend)
    nq = scores.shape[2]
    blocks = list(query_blocks) if query_blocks is not None else sample_query_blocks(nq, samples, generator)
    if not blocks or min(blocks) < 0 or max(blocks) >= nq:
        raise XAttentionInputError(f"query_blocks must be a non-empty list of block indices in [0, {nq})")
    T = len(taus)
    kept = torch.zeros(H, T, dtype=torch.float64)
    sampled = []  # [T, B, H, n_s, nk] kept masks of the sampled query blocks
    possible = None
    for t, tau in enumerate(taus):
        sel = select_blocks(scores, tau, block_size=block_size, q_len=Sq, kv_len=kv, keep_diagonal=keep_diagonal,
                            text_start=text_start, max_density=max_density, backend=backend)
        kept[:, t] = sel.counts.sum(dim=(0, 2)).to(torch.float64).cpu()
        if possible is None:
            possible = (sel.valid_kv_blocks().to(torch.float64).sum() * nq).cpu().expand(H).clone()
        sampled.append(sel.mask[:, :, blocks])
        del sel
    del scores
    masks = torch.stack(sampled)  # [T, B, H, n_s, nk]
    del sampled

    recall_sum = torch.zeros(H, T, dtype=torch.float64)
    err_num = torch.zeros(H, T, dtype=torch.float64)
    rows = torch.zeros(H, dtype=torch.float64)
    err_den = torch.zeros(H, dtype=torch.float64)
    kv_host = kv.tolist()
    block_ids = torch.tensor(blocks, device=q.device)
    for b in range(B):
        row_limit = min(Sq, kv_host[b]) if Sq == Sk else Sq
        row_pos = (block_ids[:, None] * block_size + torch.arange(block_size, device=q.device)).reshape(-1)
        row_of = torch.arange(len(blocks), device=q.device).repeat_interleave(block_size)
        keep_rows = row_pos < row_limit
        row_pos, row_of = row_pos[keep_rows], row_of[keep_rows]
        if row_pos.numel() == 0:
            continue
        for h in range(H):
            r, e, n, d = _head_stats(q[b, row_pos, h], k[b, :, h], v[b, :, h], masks[:, b, h][:, row_of],
                                     kv_host[b], block_size)
            recall_sum[h] += r
            err_num[h] += e
            rows[h] += n
            err_den[h] += d
    return CallProfile(kept=kept, possible=possible, recall_sum=recall_sum, rows=rows, err_num=err_num,
                       err_den=err_den, query_blocks=blocks)


def _head_stats(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor, kv_len: int,
                block_size: int) -> tuple[torch.Tensor, torch.Tensor, int, float]:
    """One (batch, head): q [R, D] sampled rows, k/v [Sk, D], keep [T, R, nk] kept key blocks per row.

    One pass over the valid keys in chunks of whole blocks with a running max (online softmax). Per chunk the
    unnormalized mass and output of every (row, key block) are formed once (the cost of dense attention
    on these rows); each candidate then sums the blocks it keeps: Z[t] mass, U[t] output; the last slot
    (all blocks) is dense attention. Returns (Σ recall [T], Σ‖O_τ − O‖² [T], rows, Σ‖O‖²).
    """
    T, R, _ = keep.shape
    D = q.shape[-1]
    bs = block_size
    qf = q.to(torch.float32) * (1.0 / math.sqrt(D))
    keep = torch.cat([keep, keep.new_ones(1, R, keep.shape[-1])]).permute(1, 0, 2).to(torch.float32)  # [R, T+1, nk]
    budget = CHUNK_BYTES.get(q.device.type, CHUNK_BYTES["cpu"])
    chunk = max(bs, (budget // (4 * R * (3 + D // bs))) // bs * bs)
    m = torch.full((R,), float("-inf"), device=q.device)
    Z = torch.zeros(R, T + 1, device=q.device)
    U = torch.zeros(R, T + 1, D, device=q.device)
    for y0 in range(0, kv_len, chunk):  # chunks start on block boundaries; keys ≥ kv_len never enter
        y1 = min(kv_len, y0 + chunk)
        nb = -(-(y1 - y0) // bs)
        logits = qf @ k[y0:y1].to(torch.float32).T  # [R, C]
        m_new = torch.maximum(m, logits.amax(dim=-1))
        alpha = torch.exp(m - m_new)  # 0 on the first chunk (m = −inf, m_new finite)
        p = torch.nn.functional.pad(torch.exp(logits - m_new[:, None]), (0, nb * bs - (y1 - y0)))
        vc = torch.nn.functional.pad(v[y0:y1].to(torch.float32), (0, 0, 0, nb * bs - (y1 - y0)))
        p_blocks = p.view(R, nb, bs)
        mass = p_blocks.sum(dim=-1)  # [R, nb]
        out = torch.matmul(p_blocks.transpose(0, 1), vc.view(nb, bs, D)).transpose(0, 1)  # [R, nb, D]
        kb = keep[:, :, y0 // bs:y0 // bs + nb]  # [R, T+1, nb]
        Z = Z * alpha[:, None] + torch.matmul(kb, mass[:, :, None]).squeeze(-1)
        U = U * alpha[:, None, None] + torch.matmul(kb, out)
        m = m_new
    dense = U[:, T] / Z[:, T, None]
    recall = Z[:, :T] / Z[:, T, None]
    sparse = torch.where(Z[:, :T, None] > 0, U[:, :T] / Z[:, :T, None].clamp_min(1e-30), torch.zeros_like(U[:, :T]))
    err = (sparse - dense[:, None]).square().sum(dim=(0, 2))
    return (recall.sum(dim=0).double().cpu(), err.double().cpu(), R, float(dense.square().sum()))


@dataclass
class LayerProfile(HeadSums):
    """Sums over all profiled calls of one layer (see ``HeadSums``)."""

    calls: int = 0

    def add(self, call: CallProfile) -> None:
        for name in SUM_FIELDS:
            getattr(self, name).add_(getattr(call, name))
        self.calls += 1

    def head_stats(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(density, recall, error), each float64 [H, T]."""
        return self.density(), self.recall(), self.error()

    def layer_stats(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(density, recall, error) of the whole layer with one τ on every head, each float64 [T]."""
        density = self.kept.sum(0) / self.possible.sum().clamp_min(1.0)
        recall = self.recall_sum.sum(0) / self.rows.sum().clamp_min(1.0)
        error = (self.err_num.sum(0) / self.err_den.sum().clamp_min(1e-30)).sqrt()
        return density, recall, error


class CalibrationProfile:
    """Profiles of many calls, summed per layer ([H, T] per layer: small at 60 layers × 24 heads)."""

    FIELDS = SUM_FIELDS

    def __init__(self, taus: Sequence[float] = DEFAULT_TAUS):
        self.taus = check_taus(taus)
        self.layers: dict[Label, LayerProfile] = {}  # 5, or "t2.5" for Wan 2.2's transformer_2

    def add(self, layer: Label, call: CallProfile) -> None:
        if call.kept.shape[1] != len(self.taus):
            raise ValueError(f"call profile has {call.kept.shape[1]} candidates, the profile {len(self.taus)}")
        if layer not in self.layers:
            self.layers[layer] = LayerProfile(**{n: torch.zeros_like(getattr(call, n)) for n in self.FIELDS})
        self.layers[layer].add(call)

    @property
    def num_calls(self) -> int:
        return sum(p.calls for p in self.layers.values())

    def to_dict(self) -> dict:
        return {"taus": list(self.taus),
                "layers": {str(layer): {"calls": p.calls, **{n: getattr(p, n).tolist() for n in self.FIELDS}}
                           for layer, p in sorted(self.layers.items(), key=lambda kv: layer_order(kv[0]))}}

    @classmethod
    def from_dict(cls, data: dict) -> "CalibrationProfile":
        prof = cls(data["taus"])
        for layer, d in data["layers"].items():
            prof.layers[parse_label(layer)] = LayerProfile(
                **{n: torch.tensor(d[n], dtype=torch.float64) for n in cls.FIELDS}, calls=int(d["calls"]))
        return prof
