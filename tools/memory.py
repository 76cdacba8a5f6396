"""A process's resident memory, for the upload fuzzer and the tests that bound the app's memory.

Linux reports it in /proc/PID/status: VmRSS now and VmHWM the peak, which can be reset
(reset_peak_rss) so that each piece of work gets its own high-water mark. Elsewhere only this
process's lifetime peak is known (getrusage).
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path


def _status_kb(field: str, pid: int | str) -> int | None:
    """A "kB" field of /proc/PID/status; None where there is no such file or field."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def current_rss(pid: int | str = "self") -> int:
    """Resident set size in bytes now (0 where /proc is missing)."""
    kb = _status_kb("VmRSS", pid)
    return 0 if kb is None else kb * 1024


def peak_rss(pid: int | str = "self") -> int:
    """Peak resident set size in bytes since the last reset_peak_rss (or the process's start)."""
    kb = _status_kb("VmHWM", pid)
    if kb is not None:
        return kb * 1024
    if pid != "self":
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # not Linux: the lifetime peak
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, kB elsewhere


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True
