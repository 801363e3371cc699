"""`xvid --help` is instant (no torch/diffusers before argument parsing); Ctrl-C is exit code 130 and one line."""

import subprocess
import sys
import time

import pytest

from xattn_video import cli

# Runs the CLI as `python -m xattn_video.cli`, then reports which heavy modules the run imported.
RUNNER = """
import runpy, sys
sys.argv = ["xvid"] + sys.argv[1:]
try:
    runpy.run_module("xattn_video.cli", run_name="__main__")
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in ("torch", "diffusers", "transformers", "triton", "numpy") if m in sys.modules)
print("HEAVY:" + ",".join(heavy), "CODE:" + str(code))
"""


@pytest.mark.parametrize("args", [["--help"], ["generate", "--help"], ["compare", "--help"], ["generate", "--bogus"]])
def test_help_imports_no_torch(args):
    out = subprocess.run([sys.executable, "-c", RUNNER, *args], capture_output=True, text=True, timeout=120)
    assert "HEAVY: " in out.stdout, out.stdout + out.stderr  # nothing heavy was imported
    assert ("CODE:0" if "--help" in args else "CODE:2") in out.stdout


def test_help_is_fast():
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "xattn_video.cli", "--help"], capture_output=True, text=True,
                         timeout=120)
    elapsed = time.perf_counter() - start
    assert out.returncode == 0 and "generate" in out.stdout
    assert elapsed < 2.0, f"xvid --help took {elapsed:.1f} s"  # importing torch alone takes longer


@pytest.mark.parametrize("argv", [["generate", "--model", "tiny"], ["bench", "--help"]])
def test_ctrl_c_is_exit_130_and_one_line(monkeypatch, capsys, argv):
    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_generate", interrupted)
    monkeypatch.setattr(cli, "cmd_bench", interrupted)
    assert cli.main(argv) == 130
    captured = capsys.readouterr()
    assert captured.err == f"xvid {argv[0]}: interrupted\n"
    assert "Traceback" not in captured.out + captured.err
