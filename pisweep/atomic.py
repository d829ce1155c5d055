"""Atomic files: write to a temp file in the same folder, fsync, rename. Readers never see a partial file."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from pisweep.errors import DiskFullError

TEMP_SUFFIX = ".tmp"  # temp files are ".<final name>.<random>.tmp" beside their final name

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_open(path: Path) -> Iterator[BinaryIO]:
    """Yield a binary file that becomes ``path`` only if the block finishes without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are meant to be shared like any file
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.errno == errno.ENOSPC:
            raise disk_full(path) from e
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def disk_full(path: Path) -> DiskFullError:
    return DiskFullError(f"no space left on {Path(path).parent} (writing {Path(path).name}); nothing was written "
                         f"under that name")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_open(path) as f:
        f.write(data)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def remove_stale_temps(folder: Path) -> list[Path]:
    """Remove the temp files that interrupted writes left under ``folder`` (call only when no process writes there).

    A write killed between mkstemp and rename (kill -9, a power cut) leaves its temp file; no reader ever opens one."""
    removed = []
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            if name.startswith(".") and name.endswith(TEMP_SUFFIX):
                path = Path(dirpath) / name
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed
