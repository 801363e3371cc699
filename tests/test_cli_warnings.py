"""The CLI drops the third-party warnings it knows to be harmless and shows ours as one line; the environment
variables are checked before anything heavy loads."""

import logging
import warnings

import pytest

from xattn_video import cli_warnings
from xattn_video.config import ConfigError, XvidWarning
from xattn_video.env import BACKEND_ENV_VAR, check_environment


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_known_log_messages_are_dropped_and_others_kept():
    # a handler on each emitting logger, not caplog's on the root: once diffusers is imported (by another test
    # module) its loggers stop propagating, and the records would never reach the root
    cli_warnings.install("generate")
    records = _Records()
    names = [name for name, _ in cli_warnings.KNOWN_LOG_MESSAGES] + ["diffusers.guiders.guider_utils"]
    for name in set(names):
        logging.getLogger(name).addHandler(records)
    try:
        for name, prefix in cli_warnings.KNOWN_LOG_MESSAGES:
            logging.getLogger(name).warning(prefix + " and the rest of the message")
        logging.getLogger("diffusers.guiders.guider_utils").warning("something new")
    finally:
        for name in set(names):
            logging.getLogger(name).removeHandler(records)
    assert records.messages == ["something new"]


def test_xvid_warning_is_one_line_naming_the_command(capsys):
    with warnings.catch_warnings():
        cli_warnings.install("compare")
        warnings.warn("seed listed more than once (1); each runs once", XvidWarning)
    assert capsys.readouterr().err == "xvid compare: warning: seed listed more than once (1); each runs once\n"


def test_the_library_alone_leaves_warning_filters_alone():
    import subprocess
    import sys

    code = ("import warnings, xattn_video.generate, xattn_video.eval.compare, xattn_video.launch; "
            "print(any('all_gather' in str(f[1]) or 'XvidWarning' in str(f[2]) for f in warnings.filters))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "False", out.stderr[-2000:]


@pytest.mark.parametrize("env,message", [({BACKEND_ENV_VAR: "bogus"}, "XATTN_BACKEND"),
                                         ({"XVID_DIST_TIMEOUT": "-1"}, "XVID_DIST_TIMEOUT"),
                                         ({"XVID_MINI_WEIGHTS": "/nonexistent"}, "XVID_MINI_WEIGHTS")])
def test_bad_environment_is_refused(env, message):
    with pytest.raises(ConfigError, match=message):
        check_environment(env)


def test_good_environment_passes_and_names_match_the_readers():
    from xattn_video.kernels.backend import BACKEND_ENV_VAR as KERNELS_VAR
    from xattn_video.launch import TIMEOUT_ENV

    check_environment({BACKEND_ENV_VAR: "Torch", "XVID_DIST_TIMEOUT": "60", "XVID_MINI_WEIGHTS": ""})
    check_environment({})
    assert BACKEND_ENV_VAR == KERNELS_VAR and TIMEOUT_ENV == "XVID_DIST_TIMEOUT"
