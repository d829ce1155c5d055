"""An advisory file lock with a note of who holds it, so a second command can say what it waits for."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterator


@contextlib.contextmanager
def file_lock(path: Path, purpose: str, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path``; if it is taken, call ``on_wait`` once with who holds it, then block."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait(describe_holder(path))
            fcntl.flock(fd, fcntl.LOCK_EX)
        note = {"pid": os.getpid(), "purpose": purpose, "command": " ".join(sys.argv[:3]), "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(note).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def describe_holder(path: Path) -> str:
    try:
        note = json.loads(Path(path).read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        note = {}
    if not note:
        return f"another pisweep process holding {path}"
    age = time.time() - note.get("since", time.time())
    return f"pid {note.get('pid')} ({note.get('purpose')}: {note.get('command')}, for {age:.0f}s)"
