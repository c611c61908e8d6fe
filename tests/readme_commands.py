"""The shell commands the README shows, as a user would copy them: one per logical line
(backslash continuations joined), comments and blank lines dropped, from every ```bash block."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_BLOCK = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)


def blocks(path: Path = REPO / "README.md") -> list[list[str]]:
    """Each ```bash block of ``path`` as its list of commands."""
    found = []
    for body in _BLOCK.findall(path.read_text()):
        commands: list[str] = []
        pending = ""
        for raw in body.splitlines():
            line = raw.rstrip()
            if pending:
                line = pending + " " + line.lstrip()
                pending = ""
            if line.endswith("\\"):
                pending = line[:-1].rstrip()
                continue
            command = strip_comment(line).strip()
            if command:
                commands.append(command)
        found.append(commands)
    return found


def strip_comment(line: str) -> str:
    """``line`` without a trailing ``# comment`` (a ``#`` inside quotes is kept)."""
    quote = ""
    for i, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def commands() -> list[str]:
    return [c for block in blocks() for c in block]
