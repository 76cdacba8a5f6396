"""Crashes at every write point of models.checkpoint.write_atomic, for the tests of atomic
checkpoints (tests/test_checkpoint_atomic.py). The library has no hook for it: this module
replaces the ``open`` and ``os`` that models/checkpoint.py calls with twins that count three
points in every write (the temporary file half written, then written, then renamed) and crash
at the n-th, as a power cut would.

As a script, it runs ``python -m tools.train`` with a SIGKILL at write n (the real thing):

    python tests/faults.py N --preset ... --out DIR
"""

from __future__ import annotations

import builtins
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import models.checkpoint as checkpoint


class Faults:
    """Counts write points and calls ``action(label)`` at the ``at``-th."""

    def __init__(self, at: int, action: Callable[[str], None]) -> None:
        self.at, self.action, self.count = at, action, 0

    def point(self, label: str) -> None:
        self.count += 1
        if self.count == self.at:
            self.action(label)


class _HalfWriter:
    """A file written in two halves, the point "<tmp> half written" between them."""

    def __init__(self, file, faults: Faults, label: str) -> None:
        self._file, self._faults, self._label = file, faults, label

    def write(self, data: bytes) -> int:
        half = len(data) // 2
        self._file.write(data[:half])
        self._file.flush()
        self._faults.point(self._label)
        return half + self._file.write(data[half:])

    def __getattr__(self, name: str):
        return getattr(self._file, name)

    def __enter__(self) -> _HalfWriter:
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()


class _Os:
    """models.checkpoint's ``os``, with the points "<tmp> written" and "<path> renamed" around
    its rename."""

    def __init__(self, faults: Faults) -> None:
        self._faults = faults

    def __getattr__(self, name: str):
        return getattr(os, name)

    def replace(self, src, dst) -> None:
        self._faults.point(f"{src} written")
        os.replace(src, dst)
        self._faults.point(f"{dst} renamed")


def install(at: int, action: Callable[[str], None], monkeypatch=None) -> Faults:
    """Crash (``action(label)``) at write point ``at`` of this process; through a pytest
    ``monkeypatch`` when given, so that the test undoes it."""
    faults = Faults(at, action)

    def opener(path, mode="r", *args, **kwargs):
        file = builtins.open(path, mode, *args, **kwargs)
        return _HalfWriter(file, faults, f"{path} half written") if "w" in mode else file

    if monkeypatch is None:
        checkpoint.open, checkpoint.os = opener, _Os(faults)
    else:
        monkeypatch.setattr(checkpoint, "open", opener, raising=False)
        monkeypatch.setattr(checkpoint, "os", _Os(faults))
    return faults


def _kill(label: str) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import tools.train

    install(int(sys.argv[1]), _kill)
    sys.exit(tools.train.main(sys.argv[2:]))
