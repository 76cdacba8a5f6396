"""What every command line shares: argument types with bounds, output checks, one error line.

The README promises that every CLI reports bad input as one ``error: ...`` line on stderr and
exit status 2, never a traceback. The pieces that keep that promise live here, once:

- ``Parser``: an ArgumentParser whose own errors (a missing argument, a bad choice, a value its
  type refused) raise UsageError instead of printing the usage and exiting;
- argument types that refuse out-of-range values when the command line is parsed, before any
  work: ``positive_int``, ``int_range(lo, hi)``, ``finite_float(lo, hi)``;
- ``check_output_file(path, suffixes)`` and ``check_output_dir(path)``: the place an output goes
  must be writable (a file is created there and removed again, which is the only test that holds
  for root, read-only mounts and /proc) and a file must have a suffix the writer knows, so that
  minutes of sampling or analysis are never lost to a typo in ``--out``;
- ``read_input(path, max_bytes, flag)``: a file the command line names, read only when it is a
  regular file (symlinks resolved) of at most ``max_bytes``, checked before it is opened, so a
  FIFO or /dev/zero is refused, never waited on or read for ever (models/files.py, the one
  check every reader of a path uses: configs, weights, images, data files);
- ``write_atomic(path, data)``: a file written whole or not at all (a temporary file in the same
  folder, fsync, rename; removed on failure), its mode following the umask as open() does, an
  error naming the file asked for;
- ``run_main(main, argv)``: the one entry of every CLI. It turns the errors bad input can cause
  (UsageError and every other ValueError such as CheckpointError, DatasetError, ImageInputError;
  OSError with the path it names; OverflowError, MemoryError) into one ``error:`` line, exit 2;
  Ctrl-C into one ``interrupted`` line, exit 130 (every file is written atomically, so none is
  left half written; training keeps its last checkpoint); and a closed stdout (``... | head -1``)
  into silence: what is printed after the reader left is dropped, and the command goes on to
  write its files.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NoReturn

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C


class UsageError(ValueError):
    """A bad command line: reported as one ``error:`` line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse's own errors raise UsageError: run_main prints them as one line."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def int_range(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number in [lo, hi] (no upper bound when hi is None)."""

    def parse(text: str) -> int:
        value = _int(text)
        if value < lo or (hi is not None and value > hi):
            want = f">= {lo:,}" if hi is None else f"between {lo:,} and {hi:,}"
            raise argparse.ArgumentTypeError(f"must be {want}, got {text}")
        return value

    parse.__name__ = "int"  # argparse names the type in its messages
    return parse


# 2**31 steps, images or threads is more than any run here will see, and keeps every count far
# from the overflow of the int64 tensors it ends up in
positive_int = int_range(1, 2**31 - 1)
non_negative_int = int_range(0, 2**31 - 1)


def finite_float(
    lo: float = -math.inf, hi: float = math.inf, *, lo_open: bool = False
) -> Callable[[str], float]:
    """An argparse type: a finite number in [lo, hi] (or (lo, hi] with ``lo_open``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        low_ok = value > lo if lo_open else value >= lo
        if not low_ok or value > hi:
            left = "(" if lo_open else "["
            raise argparse.ArgumentTypeError(f"must be in {left}{lo:g}, {hi:g}], got {text}")
        return value

    parse.__name__ = "float"
    return parse


def _existing_ancestor(path: Path) -> Path:
    """The deepest folder above ``path`` (or ``path`` itself) that exists."""
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe_writable(folder: Path, what: str) -> None:
    """Create a file in ``folder`` and remove it; UsageError naming ``what`` when that fails."""
    try:
        fd, name = tempfile.mkstemp(prefix=".write-check-", dir=folder)
    except OSError as e:
        raise UsageError(f"{what}: cannot write in {folder} ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(name)


def check_output_file(path: Path, suffixes: Iterable[str], *, flag: str = "--out") -> None:
    """``path`` can be written as a file of one of ``suffixes``: checked before any work."""
    suffixes = tuple(suffixes)
    what = f"{flag} {path}"
    if path.suffix.lower() not in suffixes:
        raise UsageError(f"{what}: the name must end in {', '.join(suffixes)}")
    if path.is_dir():
        raise UsageError(f"{what} is a directory, not a file")
    if path.exists() and not path.is_file():
        raise UsageError(f"{what} exists and is not a regular file")
    folder = _existing_ancestor(path.parent)
    if not folder.is_dir():
        raise UsageError(f"{what}: {folder} is a file, not a folder")
    _probe_writable(folder, what)


def check_output_dir(path: Path, *, flag: str = "--out") -> None:
    """``path`` is (or can be created as) a writable folder: checked before any work."""
    what = f"{flag} {path}"
    if path.exists() and not path.is_dir():
        raise UsageError(f"{what} exists and is not a folder")
    folder = _existing_ancestor(path)
    if not folder.is_dir():
        raise UsageError(f"{what}: {folder} is a file, not a folder")
    _probe_writable(folder, what)


def _umask() -> int:
    """The process's umask, read without changing it where Linux allows (/proc), else set and
    restored at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``path`` whole or not at all: a temporary file beside it (same folder, so the rename
    cannot cross file systems), fsync, then a rename; on any failure the temporary file is
    removed and the error names ``path``. The mode is what open() would give a new file (0666
    less the umask), not mkstemp's 0600."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(e.errno, f"cannot create its folder ({e.strerror or e})", str(path)) from None
    raw = data.encode() if isinstance(data, str) else data
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise OSError(e.errno, f"cannot write it ({e.strerror or e})", str(path)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # named by the path asked for, not the temporary file
        Path(tmp).unlink(missing_ok=True)
        raise OSError(e.errno, f"cannot write it ({e.strerror or e})", str(path)) from None
    except BaseException:  # Ctrl-C included: nothing half written is left behind
        Path(tmp).unlink(missing_ok=True)
        raise
    from models.checkpoint import fsync_dir  # the one copy (models/ writes checkpoints with it)

    fsync_dir(path.parent)


def read_input(path: Path, max_bytes: int, *, flag: str) -> bytes:
    """The bytes of a file the command line names (``flag``, e.g. "--types"): UsageError unless
    it is a regular file (symlinks resolved) of at most ``max_bytes``, checked before it is
    opened (models/files.py)."""
    from models.files import read_file

    return read_file(path, max_bytes, what=flag, error=UsageError)


class _QuietStdout:
    """sys.stdout that survives its reader leaving (``| head -1``): the first BrokenPipeError
    points file descriptor 1 at /dev/null, and from then on what is printed is dropped, so the
    command finishes its work and writes its files instead of dying mid-way."""

    def __init__(self, stream) -> None:
        self._stream = stream
        self.broken = False

    def _drop(self) -> None:
        self.broken = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass

    def write(self, text: str) -> int:
        if self.broken:
            return len(text)
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._drop()
            return len(text)

    def flush(self) -> None:
        if self.broken:
            return
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._drop()

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _message(e: BaseException) -> str:
    if isinstance(e, OSError):
        where = f"{e.filename}: " if e.filename else ""
        return f"{where}{e.strerror or e}"
    if isinstance(e, MemoryError):
        return f"out of memory ({e})" if str(e) else "out of memory"
    return str(e) or type(e).__name__


def run_main(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run a CLI's ``main``: bad input becomes one ``error: ...`` line and exit status 2, Ctrl-C
    one ``interrupted`` line and exit status 130, a closed stdout nothing at all."""
    stdout = sys.stdout
    quiet = stdout if isinstance(stdout, _QuietStdout) else _QuietStdout(stdout)
    sys.stdout = quiet
    try:
        return main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, OSError, OverflowError, MemoryError) as e:
        # the first line only: the promise is one line, whatever a library's message holds
        line = " ".join(_message(e).split())
        print(f"error: {line}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        quiet.flush()
        sys.stdout = stdout
