"""The durability primitives every stage uses: write to a temporary name, fsync, rename, fsync dir.

A file that exists under its final name is complete and on stable storage; a crash can only leave
``.part`` files behind, which start-up recovery deletes.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable
from pathlib import Path

PART_SUFFIX = ".part"


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_durably(path: Path, data: bytes, *, mode: int = 0o600, sync: bool = True) -> None:
    """Write ``data`` to ``path`` atomically: ``path.part``, fsync, rename, fsync the folder."""
    tmp = path.with_name(path.name + PART_SUFFIX)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # exactly ``mode``: neither the process umask nor a leftover .part widens or narrows it
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if sync:
        fsync_dir(path.parent)


def _sync_file_range() -> Callable[[int, int, int], None] | None:
    """Linux ``sync_file_range(fd, offset, nbytes, SYNC_FILE_RANGE_WRITE)``, or None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        func = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    func.restype = ctypes.c_int

    def start(fd: int, offset: int, length: int) -> None:
        func(fd, offset, length, 2)  # SYNC_FILE_RANGE_WRITE: queue the writeback, do not wait

    return start


_START_WRITEBACK = _sync_file_range()


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a just-written range to disk, without waiting for it.

    A receiver calls this after each chunk, so the disk works while the rest of the object is still
    arriving and the fsync before the acknowledgement waits only for the tail (PostgreSQL does the
    same for its checkpoints). ``length`` 0 means to the end of the file. Purely a hint:
    durability still comes from fsync. No-op off Linux.
    """
    if _START_WRITEBACK is not None:
        _START_WRITEBACK(fd, offset, length)
