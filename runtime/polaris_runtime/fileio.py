"""Atomic file writes: a crash mid-write leaves the previous file intact.

The data goes to a temporary file in the destination's folder, is flushed and fsynced, renamed
over the destination with ``os.replace``, and the folder is fsynced. Used for checkpoints, and by
the compiler for modules and its cache.
"""

from __future__ import annotations

import os
import pathlib
import tempfile
from collections.abc import Callable
from typing import BinaryIO


def atomic_write(path: str | os.PathLike, data: bytes | Callable[[BinaryIO], None]) -> pathlib.Path:
    """Writes ``data`` (bytes, or a function writing to the open file) to ``path`` atomically."""
    p = pathlib.Path(path)
    d = p.parent if str(p.parent) else pathlib.Path(".")
    fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(d)
    return p


def _fsync_dir(d: pathlib.Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
