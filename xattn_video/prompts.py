"""Prompts files: UTF-8 text, one prompt per line; blank lines and lines starting with ``#`` (after any
indentation) are skipped."""

from __future__ import annotations

from pathlib import Path

from .config import ConfigError


def parse_prompts(text: str) -> list[str]:
    """The prompts in ``text``: stripped non-empty lines that are not ``#`` comments (indented or not)."""
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def read_prompts(path: str | Path) -> list[str]:
    """Prompts of a prompts file; a missing, unreadable, binary or empty file is a ``ConfigError`` (one line)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"prompt file {path} is a directory; give a text file, one prompt per line")
    if not path.is_file():
        raise ConfigError(f"prompt file not found: {path}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read prompt file {path}: {exc.strerror or exc}") from None
    try:
        if b"\0" in data:
            raise UnicodeDecodeError("utf-8", data, data.index(b"\0"), data.index(b"\0") + 1, "NUL byte")
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"prompt file {path} is not UTF-8 text (byte {exc.start}); "
                          f"expected one prompt per line") from None
    prompts = parse_prompts(text)
    if not prompts:
        raise ConfigError(f"prompt file {path} has no prompts (one per line; # starts a comment)")
    return prompts
