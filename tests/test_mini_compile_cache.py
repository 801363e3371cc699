"""torch.compile's caches carried between the device calls of a split training run
(xattn_video/mini/compile_cache.py, ``train --compile-cache``)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import tiny_args

from xattn_video.mini import compile_cache, train

# One process compiles and saves; a second, with an empty Inductor cache of its own (a fresh machine), loads the
# file and compiles the same function: its FX-graph cache hits can only come from the file.
CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    import torch
    from torch._dynamo.utils import counters
    from xattn_video.mini import compile_cache
    path, mode = Path(sys.argv[1]), sys.argv[2]
    if mode == "load":
        print("held", compile_cache.load(path))
    f = torch.compile(lambda x: x @ x.t(), dynamic=False)  # an extern matmul: no C++ kernel to build on a CPU
    f(torch.randn(4, 8))
    if mode == "save":
        print("bytes", compile_cache.save(path))
    print("hits", counters["inductor"]["fxgraph_cache_hit"])
""")


def run_child(tmp_path, path, mode: str, cache_dir: str) -> dict[str, int]:
    env = os.environ | {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / cache_dir), "TRITON_INTERPRET": "0"}
    done = subprocess.run([sys.executable, "-c", CHILD, str(path), mode], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return {line.split()[0]: int(line.split()[1]) for line in done.stdout.splitlines() if line.split()[0] in
            ("held", "bytes", "hits")}


def test_saved_cache_gives_a_fresh_process_cache_hits(tmp_path):
    path = tmp_path / "run.compile-cache"
    saved = run_child(tmp_path, path, "save", "inductor-a")
    assert saved["bytes"] > 0 and path.stat().st_size == saved["bytes"] and saved["hits"] == 0
    loaded = run_child(tmp_path, path, "load", "inductor-b")
    assert loaded["held"] >= 1 and loaded["hits"] >= 1


def test_missing_file_is_none_and_a_foreign_file_is_one_error(tmp_path):
    assert compile_cache.load(tmp_path / "absent") is None
    foreign = tmp_path / "ckpt.part-aa"
    foreign.write_bytes(b"not a cache")
    with pytest.raises(ValueError, match="ckpt.part-aa: not a compile cache"):
        compile_cache.load(foreign)
    code = train.main(tiny_args(tmp_path, "--compile", "--compile-cache", str(foreign)))
    assert code == 2 and not (tmp_path / "mini").exists()


def test_a_split_compiled_run_saves_the_cache_at_each_stop_and_loads_it_on_resume(tmp_path, monkeypatch, capsys):
    """The wiring, without compiling (the eager backend, the cache functions recorded): each stop at the time limit
    writes the cache beside the checkpoint, each resume loads it first; without --compile neither happens."""
    events = []

    def save(path):
        events.append("save")
        path.write_bytes(b"cache")
        return 2**20

    def load(path):
        events.append("load")
        return 7 if path.exists() else None

    monkeypatch.setattr(compile_cache, "save", save)
    monkeypatch.setattr(compile_cache, "load", load)
    plain_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: plain_compile(model, backend="eager", **kw))
    cache, checkpoint = tmp_path / "run.compile-cache", tmp_path / "run.ckpt"
    args = tiny_args(tmp_path, "--compile", "--compile-cache", str(cache), "--time-limit", "0",
                     "--checkpoint", str(checkpoint))
    assert train.main(args) == 3 and events == ["load", "save"] and cache.exists()
    assert train.main([*args, "--resume", str(checkpoint)]) == 3 and events[2:] == ["load", "save"]
    out = capsys.readouterr().out
    assert f"compile cache: 7 artifacts from {cache}" in out and f"compile cache: 1.0 MB to {cache}" in out

    def broken_save(path):
        raise RuntimeError("no artifacts\nsecond line")

    monkeypatch.setattr(compile_cache, "save", broken_save)  # the checkpoint still goes back for the next call
    assert train.main([*args, "--resume", str(checkpoint)]) == 3
    assert "compile cache not written (RuntimeError: no artifacts)" in capsys.readouterr().out
    monkeypatch.setattr(compile_cache, "save", lambda path: (_ for _ in ()).throw(OSError()))  # no message at all
    assert train.main([*args, "--resume", str(checkpoint)]) == 3
    assert "compile cache not written (OSError: )" in capsys.readouterr().out
    events.clear()
    plain = [a for a in args if a != "--compile"]
    assert train.main([*plain, "--resume", str(checkpoint)]) == 3 and events == []
