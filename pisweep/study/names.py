"""What a string from a study file or site profile may hold, and what may become a file or job name.

Strings of a study reach file paths, job names and batch scripts: a newline in one would end an ``#SBATCH`` line
and run the rest as a shell command on a compute node. Control characters are refused in every string at load;
names that become file names (study, scale and model names, task keys) are names, never paths.
"""
from __future__ import annotations

import re
from typing import Any

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def control_character(text: str) -> str | None:
    """The first control character (C0 or DEL) in ``text``, spelled for a message, or None."""
    m = _CONTROL.search(text)
    return None if m is None else f"{m.group()!r} (U+{ord(m.group()):04X}) at position {m.start()}"


def check_text(value: Any) -> Any:
    """``value`` unchanged if no string in it (nested lists and dicts included) holds a control character."""
    if isinstance(value, str):
        bad = control_character(value)
        if bad:
            raise ValueError(f"control character {bad} is not allowed (strings reach file paths, job names and "
                             f"batch scripts)")
    elif isinstance(value, dict):
        for k, v in value.items():
            check_text(k)
            check_text(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            check_text(v)
    return value


def is_name(text: str) -> bool:
    """Letters, digits, '_', '.', '-', starting with a letter or digit: safe as one path component."""
    return bool(NAME_RE.match(text)) and text not in (".", "..")
