"""Literal, loop-based transcriptions of the spec in float64, independent of the package's code.

Slow by design: only for small test inputs. Inputs are [B, S, H, D].
"""

from __future__ import annotations

import math

import torch


def spec_scores(q, k, kv_len, stride, block_size):
    """Spec §1 with a fully materialized strided score matrix. Returns float64 [B, H, nq, nk]."""
    B, Sq, H, D = q.shape
    Sk = k.shape[1]
    s, bs = stride, block_size
    nq, nk = math.ceil(Sq / bs), math.ceil(Sk / bs)
    R, C = nq * bs // s, nk * bs // s
    out = torch.zeros(B, H, nq, nk, dtype=torch.float64)
    t = torch.arange(s)
    q_rows = torch.arange(R)[:, None] * s + (s - 1 - t)[None, :]  # [R, s]: Q̃[i] = q[i·s + s−1−t]
    k_rows = torch.arange(C)[:, None] * s + t[None, :]  # [C, s]: K̃[j] = k[j·s + t]
    for b in range(B):
        kv = int(kv_len[b])
        qp = torch.zeros(nq * bs, H, D, dtype=torch.float64)
        qp[:Sq] = q[b].double()
        kp = torch.zeros(nk * bs, H, D, dtype=torch.float64)
        kp[:kv] = k[b, :kv].double()  # padding keys are never seen
        for h in range(H):
            qg, kg = qp[q_rows, h], kp[k_rows, h]  # [R, s, D], [C, s, D]
            logits = torch.einsum("rtd,ctd->rc", qg, kg) / (s * math.sqrt(D))
            logits[:, torch.arange(C) * s >= kv] = float("-inf")
            probs = torch.softmax(logits, dim=-1) if kv > 0 else torch.zeros_like(logits)
            probs[torch.arange(R) * s >= Sq] = 0.0
            A = probs.view(nq, bs // s, nk, bs // s).sum(dim=(1, 3))
            total = A.sum(dim=-1, keepdim=True)
            out[b, h] = torch.where(total > 0, A / total, torch.zeros_like(A))
    return out


def spec_select(scores, tau, block_size, q_len, kv_len, keep_diagonal=True, text_start=None, max_density=None):
    """Spec §2 with Python loops. tau: list per head. Returns bool mask [B, H, nq, nk]."""
    B, H, nq, nk = scores.shape
    mask = torch.zeros(B, H, nq, nk, dtype=torch.bool)
    for b in range(B):
        kv = int(kv_len[b])
        valid = [j for j in range(nk) if j * block_size < kv]
        cap = math.ceil(max_density * len(valid)) if max_density is not None else len(valid)
        for h in range(H):
            for i in range(nq):
                row = scores[b, h, i]
                order = sorted(valid, key=lambda j: (-float(row[j]), j))
                acc = 0.0
                for rank, j in enumerate(order):
                    if tau[h] >= 1.0 or (acc < tau[h] and rank < cap):
                        mask[b, h, i, j] = True
                    acc += float(row[j])
                if keep_diagonal and i in valid:
                    mask[b, h, i, i] = True
                if text_start is not None:
                    for j in valid:
                        if j * block_size < kv and (j + 1) * block_size > text_start and text_start < kv:
                            mask[b, h, i, j] = True
                    if (i + 1) * block_size > text_start and text_start < q_len:
                        for j in valid:
                            mask[b, h, i, j] = True
    return mask


def spec_attention(q, k, v, mask, block_size, kv_len):
    """Spec §3: dense float64 softmax restricted to kept blocks and valid keys. Returns float64 [B, Sq, H, D]."""
    B, Sq, H, D = q.shape
    Sk = k.shape[1]
    out = torch.zeros(B, Sq, H, D, dtype=torch.float64)
    rows_block = torch.arange(Sq) // block_size
    cols_block = torch.arange(Sk) // block_size
    for b in range(B):
        for h in range(H):
            logits = q[b, :, h].double() @ k[b, :, h].double().T / math.sqrt(D)
            allowed = mask[b, h][rows_block][:, cols_block] & (torch.arange(Sk) < int(kv_len[b]))[None, :]
            logits[~allowed] = float("-inf")
            probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)
            out[b, :, h] = probs @ v[b, :, h].double()
    return out
