"""Linux ``/proc`` readings of a process's memory for the stage-by-stage memory benchmarks: a ``status`` field and
the reset of the peak RSS (``VmHWM``) to the current RSS, for this process (``pid`` ``"self"``) or another."""

from __future__ import annotations

from typing import Union

Pid = Union[int, str]


def status_kib(field_name: str, pid: Pid = "self") -> int:
    """A ``/proc/<pid>/status`` field in KiB (``VmRSS``, ``VmHWM``)."""
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith(f"{field_name}:"))
    return int(line.split()[1])


def reset_peak(pid: Pid = "self") -> None:
    """Reset the process's peak RSS to its current RSS (``clear_refs`` 5)."""
    with open(f"/proc/{pid}/clear_refs", "w") as clear:
        clear.write("5")
