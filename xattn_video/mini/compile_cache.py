"""torch.compile's caches carried between the device calls of one training run.

A run split by ``--time-limit`` resumes in a new process, often on a fresh machine: there it compiled every shape
again (~45 s a shape on an H100; a cold resume cost 144 s against ~25 s on a machine that kept its Inductor cache).
torch's Mega-Cache (``torch.compiler.save_cache_artifacts`` / ``load_cache_artifacts``) serialises the FX-graph,
AOTAutograd, Triton and autotuning caches of this process into one blob; a process on a machine with the same GPU,
torch and Triton that loads it first gets cache hits instead of compiling (elsewhere the entries simply miss).
The file is zlib-compressed (generated source and kernel binaries shrink several-fold) so that it travels with the
checkpoint in a device call's carry.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import torch

from ..video_io import atomic_write


def save(path: Path) -> int:
    """Write this process's compile artifacts to ``path`` (temp name, then rename). Returns the bytes written; 0
    when nothing was compiled (no file is written then)."""
    artifacts = torch.compiler.save_cache_artifacts()
    if artifacts is None or not artifacts[0]:
        return 0
    blob = zlib.compress(artifacts[0], level=6)
    with atomic_write(path) as tmp:
        tmp.write_bytes(blob)
    return len(blob)


def load(path: Path) -> int | None:
    """Fill torch.compile's caches from a file written by :func:`save`, before anything is compiled. Returns how
    many artifacts it held, or None when ``path`` does not exist. A file that is not such a blob raises
    ``ValueError`` naming it."""
    if not path.is_file():
        return None
    try:
        info = torch.compiler.load_cache_artifacts(zlib.decompress(path.read_bytes()))
    except Exception as err:  # zlib.error, or torch's own error for a blob it cannot read
        raise ValueError(f"{path}: not a compile cache written by --compile-cache ({err})") from err
    return 0 if info is None else sum(len(keys) for keys in info.artifacts.values())
