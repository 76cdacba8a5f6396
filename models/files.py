"""Reading a file a user named: its kind and size checked before it is opened, once for all.

A path from a command line, a config or a folder listing can name anything: a FIFO (reading it
blocks for ever), ``/dev/zero`` or ``/dev/urandom`` through a symlink (reading it never ends),
a folder, a socket, or a regular file of gigabytes. ``read_file(path, max_bytes)`` refuses all
of those before reading a byte: ``os.stat`` resolves symlinks, only a regular file is read, and
its size must be at most ``max_bytes``. The file is then opened non-blocking (a path swapped for a
FIFO between the check and the open cannot block) and checked again through its descriptor, and
at most ``max_bytes`` + 1 bytes are read, so a file that grows meanwhile is refused too.

``check_file(path, max_bytes)`` is the same check without the read (for a reader such as Pillow
or a pickle loader that opens the path itself). Both raise ``error(message)`` (FileInputError by
default, a ValueError): the caller passes its own error type (CheckpointError, ImageInputError,
DatasetError), so the message reaches the user as that layer's one line.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path


class FileInputError(ValueError):
    """A path that is not a readable regular file of an acceptable size."""


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _size(n: int) -> str:
    if n >= 10 * 2**20:
        return f"{n / 2**20:,.1f} MiB"
    return f"{n:,} bytes"


def _check(path: Path, st: os.stat_result, max_bytes: int, what: str, error) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = _kind(st.st_mode)
        via = " (through a symlink)" if path.is_symlink() else ""
        raise error(f"{what} {path} is {kind}{via}, not a regular file")
    if st.st_size > max_bytes:
        raise error(
            f"{what} {path} is {_size(st.st_size)}, too large: this reader accepts at most "
            f"{_size(max_bytes)}"
        )


def check_file(
    path: str | Path,
    max_bytes: int,
    *,
    what: str = "file",
    error: Callable[[str], Exception] = FileInputError,
) -> os.stat_result:
    """The stat of ``path`` (symlinks resolved) when it is a regular file of at most
    ``max_bytes``; otherwise ``error(message)`` naming the path and what is wrong."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(f"cannot read {what} {path}: it does not exist") from None
    except OSError as e:  # a symlink loop, a name too long, no permission on a folder
        raise error(f"cannot read {what} {path} ({e.strerror or e})") from None
    _check(path, st, max_bytes, what, error)
    return st


def read_file(
    path: str | Path,
    max_bytes: int,
    *,
    what: str = "file",
    error: Callable[[str], Exception] = FileInputError,
) -> bytes:
    """The bytes of ``path``, refused (``error(message)``) unless it is a regular file of at
    most ``max_bytes``: checked before it is opened and again through the open descriptor."""
    path = Path(path)
    check_file(path, max_bytes, what=what, error=error)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise error(f"cannot read {what} {path} ({e.strerror or e})") from None
    try:
        _check(path, os.fstat(fd), max_bytes, what, error)  # the file actually opened
        chunks, total = [], 0
        while total <= max_bytes:
            chunk = os.read(fd, min(2**20, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as e:
        raise error(f"cannot read {what} {path} ({e.strerror or e})") from None
    finally:
        os.close(fd)
    if total > max_bytes:
        raise error(f"{what} {path} grew past the {_size(max_bytes)} this reader accepts")
    return b"".join(chunks)
