"""Stopping a run: SIGTERM/SIGINT end with one line, exit 128 + the signal, and no temporary file left behind."""

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_PROGRESS = re.compile(r"\d+%\|.*\| \d+/\d+ \[")  # a tqdm bar: " 50%|█████     | 1/2 [00:03<00:03, ...]"

# `xvid generate` on the tiny model with the mp4 writer slowed down, so the signal lands while the hidden
# temporary file (.v.tmp-<pid>.mp4) exists.
SLOW_WRITE = textwrap.dedent("""
    import sys, time
    import xattn_video.video_io as vio
    from xattn_video.cli import main
    to_uint8 = vio.to_uint8
    def slow(frame):
        time.sleep(0.5)
        return to_uint8(frame)
    vio.to_uint8 = slow
    raise SystemExit(main(sys.argv[1:]))
""")


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def _wait_for(pattern: str, folder: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not list(folder.glob(pattern)):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, f"no {pattern} in {folder} after {timeout} s"
        time.sleep(0.05)


# Each subprocess test sends one of the two signals (a process start costs 10-25 s of CI on 2 cores): Ctrl-C to a
# single-process run, SIGTERM (a job scheduler's) to the launcher; every signal the launcher can report reaches the
# CLI in the in-process test at the end of this file.
@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted")])
def test_signal_during_mp4_write_leaves_no_temp_file(tmp_path, sig, code, word):
    out = tmp_path / "v.mp4"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITE, "generate", "--model", "tiny", "--steps", "2",
                             "--frames", "5", "--height", "64", "--width", "64", "--out", str(out)],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(".v.tmp-*.mp4", tmp_path, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert err.strip().splitlines()[-1] == f"xvid generate: {word}" and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []


def test_sigterm_raises_restores_the_handler():
    from xattn_video.signals import Terminated, sigterm_raises

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated) as info:
        with sigterm_raises():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler runs between bytecodes: this is never reached in full
    assert info.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) == before


@pytest.mark.parametrize("value", ["abc", "0", "-5", "nan", "inf"])
def test_bad_dist_timeout_is_one_line_before_any_rank(tmp_path, capsys, monkeypatch, value):
    from xattn_video.cli import main

    monkeypatch.setenv("XVID_DIST_TIMEOUT", value)
    monkeypatch.setattr("xattn_video.launch.launch", lambda *a, **k: pytest.fail("ranks started"))
    rc = main(["generate", "--model", "tiny", "--gpus", "2", "--device", "cpu", "--out", str(tmp_path / "g.mp4")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "XVID_DIST_TIMEOUT" in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("sig, code, word", [(signal.SIGTERM, 143, "terminated")])
def test_signal_to_the_launcher_is_one_line(tmp_path, sig, code, word):
    """``--gpus 2 --device cpu``: the parent gets the signal while the ranks denoise (torch-elastic raised its
    SignalException traceback here, exit 1). The signal is sent once rank 0's progress bar is on stderr, so it
    lands inside the (long) denoising loop on any machine speed."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "w") as err_file:
        proc = subprocess.Popen([sys.executable, "-m", "xattn_video.cli", "generate", "--model", "tiny",
                                 "--steps", "400", "--frames", "5", "--height", "64", "--width", "64", "--gpus", "2",
                                 "--device", "cpu", "--out", str(out_dir / "g.mp4")],
                                env=_env(), stdout=subprocess.DEVNULL, stderr=err_file, text=True)
        try:
            end = time.monotonic() + 120
            while not _PROGRESS.search(err_path.read_text()):
                assert proc.poll() is None, err_path.read_text()
                assert time.monotonic() < end, f"no progress bar after 120 s: {err_path.read_text()}"
                time.sleep(0.05)
            proc.send_signal(sig)
            proc.wait(timeout=60)
        finally:
            proc.kill()
    err = err_path.read_text()
    assert proc.returncode == code, err
    # Rank 0's progress bar is on stderr before the launcher's one line (which may follow the bar's last "\r").
    message = f"xvid generate: {word}\n"
    assert err.endswith(message), err
    before = err[: -len(message)].replace("\r", "\n").splitlines()
    assert all(_PROGRESS.search(line) for line in before if line.strip()), err
    assert list(out_dir.iterdir()) == []


@pytest.mark.parametrize("sig, code, word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted"),
                                             (signal.SIGHUP, 129, "terminated")])
def test_the_launchers_signal_becomes_one_line_and_its_exit_code(tmp_path, capsys, monkeypatch, sig, code, word):
    """Each signal the elastic agent reports (after stopping the ranks) reaches the CLI as one line and 128 + the
    signal, in process (the subprocess test above sends one real signal)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException

    from xattn_video.cli import main

    def agent(config, entrypoint):
        def run(*args):
            raise SignalException(f"Process {os.getpid()} got signal: {sig}", sigval=sig)
        return run

    monkeypatch.setattr("torch.distributed.launcher.api.elastic_launch", agent)
    rc = main(["generate", "--model", "tiny", "--gpus", "2", "--device", "cpu", "--out", str(tmp_path / "g.mp4")])
    err = capsys.readouterr().err
    assert rc == code and err.strip().splitlines()[-1] == f"xvid generate: {word}", err
    assert list(tmp_path.iterdir()) == []
