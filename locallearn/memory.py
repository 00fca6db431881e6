"""How much memory there is to allocate, checked before a big allocation rather than after it.

Data files and dataset arguments say how large their arrays are (an .npz member's header, an idx
header, `shape=` and `train=`); that size is compared with the memory this process can still get,
so that a file or an argument that asks for more is refused in one line instead of ending in an
allocator's traceback or the kernel's OOM killer. The memory available is the kernel's
MemAvailable (/proc/meminfo), or less where a cgroup (a container, a SLURM job) limits the process;
on systems without /proc the check is skipped.
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import UserError


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except (OSError, ValueError):
        return None
    return int(text) if text.isdigit() else None


def _stat_value(path: str, key: str) -> int:
    try:
        for line in Path(path).read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key and value.strip().isdigit():
                return int(value)
    except OSError:
        pass
    return 0


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_available() -> int | None:
    """The limit of this process's memory cgroup less what it uses (reclaimable file cache not counted)."""
    v2 = "/sys/fs/cgroup"
    limit = _read_int(f"{v2}/memory.max")
    if limit is not None:
        used = _read_int(f"{v2}/memory.current") or 0
        return max(0, limit - used + _stat_value(f"{v2}/memory.stat", "inactive_file"))
    v1 = "/sys/fs/cgroup/memory"
    limit = _read_int(f"{v1}/memory.limit_in_bytes")
    if limit is not None and limit < 2 ** 60:  # unlimited is a huge number
        used = _read_int(f"{v1}/memory.usage_in_bytes") or 0
        return max(0, limit - used + _stat_value(f"{v1}/memory.stat", "total_inactive_file"))
    return None


def available_memory() -> int | None:
    """Bytes this process can still allocate, or None where that cannot be told."""
    found = [value for value in (_meminfo_available(), _cgroup_available()) if value is not None]
    if not found and hasattr(os, "sysconf"):
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError):
            pass
    return min(found) if found else None


def format_bytes(n: float) -> str:
    for unit, size in (("TiB", 2 ** 40), ("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


def check_memory(nbytes: float, what: str) -> None:
    """Refuse, in one line, to allocate `nbytes` for `what` when they exceed the memory available."""
    available = available_memory()
    if available is not None and nbytes > available:
        raise UserError(f"{what} needs {format_bytes(nbytes)} in memory, more than the {format_bytes(available)} "
                        "available")
