"""How many CPU threads torch should use, chosen on purpose and said out loud.

torch starts one OpenMP thread per core whatever else runs. On a shared machine that is the
worst choice: on 2 cores with one other busy process, training ran at 57 img/s with torch's
default against 1,018 img/s with one thread (threads that wait for each other at every barrier
while the OS hands their core to someone else). Every command that computes (train, eval,
bench, demo, the bf16 probe) sets the count through :func:`set_threads` before timing anything.
"""
from __future__ import annotations

import os

import torch


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask; a container's CPU set), not the host's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def choose_threads(requested: int | None = None, processes: int = 1) -> tuple[int, str]:
    """``(threads, why)``: ``requested`` if given, else the cores left idle by other jobs.

    ``processes``: how many processes of this run share the machine (torchrun), each gets its
    share. The load average counts runnable processes over the last minute; each busy one is a
    core we should not put a thread on.
    """
    if requested is not None:
        if int(requested) < 1:
            raise ValueError(f"--threads must be >= 1, got {requested}")
        return int(requested), f"{requested} thread(s), as set (--threads or the recipe's threads)"
    cores = usable_cores()
    share = max(1, cores // max(1, processes))
    try:
        load = os.getloadavg()[0]
    except OSError:   # no load average on this platform: use our share of the cores
        return share, f"{share} thread(s): {cores} core(s), load unknown"
    idle = max(1, min(share, cores - int(load + 0.5)))
    if idle < share:
        return idle, (f"{idle} thread(s): load average {load:.1f} on {cores} core(s), other jobs are running "
                      "(threads fighting them run up to 10x slower; --threads N to override)")
    return share, f"{share} thread(s): one per core ({cores} core(s), load average {load:.1f})"


def set_threads(requested: int | None = None, processes: int = 1) -> str:
    """Apply :func:`choose_threads` to torch; return the sentence saying what and why, for the log."""
    n, why = choose_threads(requested, processes)
    torch.set_num_threads(n)
    return why
