"""The timing protocol: warm up, then time N batches with synchronisation, repeated, interleaved.

Within one repeat every runner is timed once, in a rotated order, so machine noise (other jobs on
a shared CPU, GPU clocks) falls on all of them alike; ratios between runners of the same run are
what we report. Throughput is images/s; we keep every repeat and summarise with the median.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

# The paper warms up with 50 batches on a 1080Ti; a CPU batch takes seconds, so fewer there.
DEFAULT_WARMUP = {"cuda": 50, "cpu": 3}
DEFAULT_ITERS = {"cuda": 50, "cpu": 3}


@dataclass(frozen=True)
class Protocol:
    warmup: int
    iters: int
    repeats: int = 5

    def __post_init__(self):
        if self.warmup < 0 or self.iters < 1 or self.repeats < 1:
            raise ValueError(f"need warmup >= 0, iters >= 1, repeats >= 1; got {self}")

    @classmethod
    def default(cls, device: str, repeats: int = 5) -> "Protocol":
        kind = "cuda" if str(device).startswith("cuda") else "cpu"
        return cls(DEFAULT_WARMUP[kind], DEFAULT_ITERS[kind], repeats)


@dataclass
class Timing:
    """Images/s of each repeat of one runner."""

    per_repeat: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.per_repeat)

    @property
    def spread(self) -> tuple[float, float]:
        return min(self.per_repeat), max(self.per_repeat)

    def to_dict(self) -> dict:
        lo, hi = self.spread
        return dict(median=self.median, min=lo, max=hi, per_repeat=self.per_repeat)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    runners: dict[str, Callable[[], object]],
    batch_size: int,
    protocol: Protocol,
    device: torch.device,
    timers: dict[str, Callable[[], float]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Timing]:
    """Time each ``runner()`` (one batch) with the protocol, interleaving runners within a repeat.

    ``timers`` replaces the wall-clock timing of a runner by its own: a callable returning the
    seconds one batch took (the ceiling times conv layers one by one and sums them).
    """
    timers = timers or {}
    names = list(runners) + [n for n in timers if n not in runners]
    with torch.inference_mode():
        for name in names:
            for _ in range(protocol.warmup):
                timers[name]() if name in timers else runners[name]()
            synchronize(device)
        out = {name: Timing() for name in names}
        for r in range(protocol.repeats):
            order = names[r % len(names):] + names[: r % len(names)]
            for name in order:
                if name in timers:
                    seconds = sum(timers[name]() for _ in range(protocol.iters))
                else:
                    synchronize(device)
                    start = time.perf_counter()
                    for _ in range(protocol.iters):
                        runners[name]()
                    synchronize(device)
                    seconds = time.perf_counter() - start
                out[name].per_repeat.append(batch_size * protocol.iters / seconds)
            if progress:
                progress(f"repeat {r + 1}/{protocol.repeats} done")
    return out


def paired_ratio(a: Timing, b: Timing) -> float:
    """Median over repeats of a/b measured in the same repeat (robust to slow drifts in load)."""
    return statistics.median(x / y for x, y in zip(a.per_repeat, b.per_repeat))
