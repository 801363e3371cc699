"""Every refusal that needs no model is one line, exit code 2, and comes before torch or diffusers are imported
(so it takes well under a second; checked through ``sys.modules``, not a clock)."""

import json
import subprocess
import sys

import pytest

# Runs the CLI as `python -m xattn_video.cli` and prints, last, which heavy modules the run imported.
RUNNER = """
import runpy, sys
sys.argv = ["xvid"] + sys.argv[1:]
code = 0
try:
    runpy.run_module("xattn_video.cli", run_name="__main__")
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in ("torch", "diffusers", "transformers") if m in sys.modules)
print("RESULT:" + __import__("json").dumps({"heavy": heavy, "code": code}))
"""


def run_cli(args, tmp_path, env=None):
    import os

    done = subprocess.run([sys.executable, "-c", RUNNER, *args], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env={**os.environ, **(env or {})})
    result = json.loads(done.stdout.strip().splitlines()[-1].removeprefix("RESULT:"))
    return result, done.stderr


@pytest.fixture
def files(tmp_path):
    (tmp_path / "prompts.txt").write_text("a red ball moving right\n")
    (tmp_path / "bad.yaml").write_text("xattn:\n  threshold: 0.9\n stride: 8\n")
    (tmp_path / "folder").mkdir()
    return tmp_path


REFUSALS = [
    (["generate", "--model", "tiny", "--height", "7"], {}, "multiple of 16"),
    (["generate", "--model", "tiny", "--set", "xattn.stride=0"], {}, "xattn.stride"),
    (["generate", "--model", "tyni"], {}, "did you mean 'tiny'"),
    (["generate", "--model", "tiny", "--out", ""], {}, "--out is empty"),
    (["generate", "--model", "tiny", "--out", "folder"], {}, "is a directory"),
    (["generate", "--model", "tiny", "--out", "video.avi"], {}, ".mp4"),
    (["generate", "--config", "bad.yaml"], {}, "line 3, column 2"),
    (["generate", "--config", "folder"], {}, "is a directory"),
    (["generate", "--model", "tiny", "--gpus", "0"], {}, "--gpus must be >= 1"),
    (["generate", "--model", "tiny"], {"XATTN_BACKEND": "bogus"}, "XATTN_BACKEND must be torch or triton"),
    (["generate", "--model", "tiny"], {"XVID_DIST_TIMEOUT": "soon"}, "XVID_DIST_TIMEOUT"),
    (["generate", "--model", "tiny", "--cache", "firstblok"], {}, "did you mean firstblock"),
    (["generate", "--model", "tiny", "--cache", "pab", "--set", "cache.taylorseer.interval=2"], {},
     "'cache.taylorseer.interval' is not a taylorseer parameter"),
    (["generate", "--model", "tiny", "--set", "cache.pab.spatial_attention_timestep_skip_range=[800,100]"], {},
     "low < high"),
    (["compare", "--model", "tiny", "--prompt", "x", "--out-dir", "o", "--cache", "teacache"], {}, "unknown cache"),
    (["compare", "--model", "tiny", "--height", "7", "--prompt", "x", "--out-dir", "o"], {}, "multiple of 16"),
    (["compare", "--model", "tiny", "--prompts", "folder", "--out-dir", "o"], {}, "is a directory"),
    (["compare", "--model", "tiny", "--prompt", "x", "--out-dir", ""], {}, "--out-dir is empty"),
    (["compare", "--model", "tiny", "--prompt", "x", "--out-dir", "o", "--metrics", "psnrr"], {}, "unknown metric"),
    (["compare", "--model", "tiny", "--prompt", "x", "--out-dir", "o"], {"XATTN_BACKEND": "trition"}, "XATTN_BACKEND"),
    (["calibrate", "--model", "tiny", "--height", "7", "--prompts", "prompts.txt", "--out", "c.yaml",
      "--density", "0.3"], {}, "multiple of 16"),
    (["calibrate", "--model", "tiny", "--prompts", "folder", "--out", "c.yaml", "--density", "0.3"], {},
     "is a directory"),
    (["calibrate", "--model", "tiny", "--prompts", "prompts.txt", "--out", "", "--density", "0.3"], {},
     "--out is empty"),
    (["calibrate", "--model", "tiny", "--prompts", "prompts.txt", "--out", "c.yaml", "--density", "0.3",
      "--set", "xattn.warmup_steps=9", "--steps", "1"], {}, "nothing to profile"),
]


@pytest.mark.parametrize("args,env,message", REFUSALS, ids=[" ".join(a[:1] + [m]) for a, _, m in REFUSALS])
def test_refusal_is_one_line_exit_2_before_heavy_imports(files, args, env, message):
    result, stderr = run_cli(args, files, env)
    lines = stderr.strip().splitlines()
    assert result["code"] == 2, stderr
    assert len(lines) == 1 and message in lines[0], stderr
    assert lines[0].startswith(f"xvid {args[0]}: error: ")
    assert result["heavy"] == [], f"imported {result['heavy']} before refusing"
