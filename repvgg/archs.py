"""The RepVGG architecture table (paper Tables 2-3, official release), as data.

A model is its depths per stage, its width multipliers a (stages 1-4) and b (stage 5, the last),
the groups of its interleaved groupwise layers, and whether it uses SE. Everything else (widths,
which layers are grouped, strides) is derived by the rules in this file, in one place.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass

# Layers counted as in the official release: the first layer after the stem is 1. Groupwise conv
# goes on the even ones (paper: the 3rd, 5th, ... layer counting the stem as the 1st).
GROUPWISE_LAYERS = frozenset(range(2, 27, 2))


@dataclass(frozen=True)
class RepVGGArch:
    depths: tuple[int, int, int, int]  # blocks in stages 1..4 after the single-block stem
    a: float  # width multiplier of the 64/128/256 stages
    b: float  # width multiplier of the last (512) stage
    groups: int = 1  # groups of the interleaved groupwise layers (1 = none)
    se: bool = False
    top1: float | None = None  # the paper's / official ImageNet top-1, for reference tables
    channels: tuple[int, ...] | None = None  # explicit (stem, stage 1..4) widths, e.g. after pruning

    @property
    def stem_width(self) -> int:
        return self.channels[0] if self.channels else min(64, int(64 * self.a))

    @property
    def widths(self) -> tuple[int, int, int, int]:
        if self.channels:
            return tuple(self.channels[1:])
        return int(64 * self.a), int(128 * self.a), int(256 * self.a), int(512 * self.b)

    def layer_groups(self, layer_idx: int) -> int:
        return self.groups if layer_idx in GROUPWISE_LAYERS else 1


_A, _B, _D = (2, 4, 14, 1), (4, 6, 16, 1), (8, 14, 24, 1)

ARCHS: dict[str, RepVGGArch] = {
    "repvgg_a0": RepVGGArch(_A, 0.75, 2.5, top1=72.41),
    "repvgg_a1": RepVGGArch(_A, 1.0, 2.5, top1=74.46),
    "repvgg_a2": RepVGGArch(_A, 1.5, 2.75, top1=76.48),
    "repvgg_b0": RepVGGArch(_B, 1.0, 2.5, top1=75.14),
    "repvgg_b1": RepVGGArch(_B, 2.0, 4.0, top1=78.37),
    "repvgg_b1g2": RepVGGArch(_B, 2.0, 4.0, groups=2, top1=77.78),
    "repvgg_b1g4": RepVGGArch(_B, 2.0, 4.0, groups=4, top1=77.58),
    "repvgg_b2": RepVGGArch(_B, 2.5, 5.0, top1=78.78),
    "repvgg_b2g2": RepVGGArch(_B, 2.5, 5.0, groups=2),
    "repvgg_b2g4": RepVGGArch(_B, 2.5, 5.0, groups=4, top1=78.50),
    "repvgg_b3": RepVGGArch(_B, 3.0, 5.0, top1=80.52),
    "repvgg_b3g2": RepVGGArch(_B, 3.0, 5.0, groups=2),
    "repvgg_b3g4": RepVGGArch(_B, 3.0, 5.0, groups=4, top1=80.21),
    "repvgg_d2se": RepVGGArch(_D, 2.5, 5.0, se=True, top1=81.81),
}


def resize_arch(arch: RepVGGArch, width: float = 1.0, channels: Sequence[int] | None = None,
                depths: Sequence[int] | None = None) -> RepVGGArch:
    """``arch`` with a and b scaled by ``width``, or with explicit (stem, 4 stages) ``channels``,
    and with other per-stage block counts ``depths``.

    Why: small data and CPU budgets want thinner (width=0.5 is 1/4 the compute) and shallower nets
    than the zoo, and a pruned plain model is the zoo model with fewer channels per stage. Any of
    them drops the paper's ImageNet top-1, which no longer describes the model.
    """
    if depths is not None:
        arch = dataclasses.replace(arch, depths=check_depths(depths, len(arch.depths)), top1=None)
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width <= 8:
        raise ValueError(f"width must be a multiplier in (0, 8], got {width!r}")
    if channels is not None:
        if width != 1:
            raise ValueError("give width or channels, not both")
        channels = tuple(channels)
        if len(channels) != 1 + len(arch.depths) or not all(
                isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in channels):
            raise ValueError(f"channels must be {1 + len(arch.depths)} positive ints "
                             f"(stem, stage 1..{len(arch.depths)}), got {channels!r}")
        groups = arch.groups
        bad = [c for c in channels[1:] if groups > 1 and c % groups]
        if bad:
            raise ValueError(f"channels {bad} are not divisible by the model's groups={groups}")
        return dataclasses.replace(arch, channels=channels, top1=None)
    if width == 1:
        return arch
    scaled = dataclasses.replace(arch, a=arch.a * width, b=arch.b * width, top1=None)
    too_thin = min(scaled.stem_width, *scaled.widths) < max(4, arch.groups)
    uneven = arch.groups > 1 and any(w % arch.groups for w in scaled.widths)
    if too_thin or uneven:
        raise ValueError(f"width {width} gives widths {(scaled.stem_width, *scaled.widths)}, "
                         f"too thin or not divisible by groups={arch.groups}; use another width")
    return scaled


def check_depths(depths: Sequence[int], stages: int = 4) -> tuple[int, ...]:
    """``depths`` as a tuple of ``stages`` block counts >= 1, or a ValueError saying what is wrong.

    Why: on 28 px images (stride-1 stem) the A-series' 14 blocks at 4x4 px are 69% of the
    multiply-adds of A0 x0.5; a CPU budget buys more epochs with fewer of them (recipes/small.yaml).
    """
    if isinstance(depths, (str, bytes)) or not isinstance(depths, Sequence):
        raise ValueError(f"depths must be {stages} block counts (stages 1..{stages}), got {depths!r}")
    depths = tuple(depths)
    if len(depths) != stages or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1
                                        for d in depths):
        raise ValueError(f"depths must be {stages} block counts >= 1 (stages 1..{stages}), got {list(depths)}")
    return depths


def canonical_name(name: str) -> str:
    """Accept paper spellings: "RepVGG-A0", "repvgg-b1g2", "RepVGG_D2se" -> canonical names."""
    key = re.sub(r"[-\s]", "_", name.strip()).lower()
    if key in ARCHS:
        return key
    close = difflib.get_close_matches(key, ARCHS, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"unknown model name {name!r}.{hint} Known models: {', '.join(ARCHS)}")


def get_arch(name: str) -> RepVGGArch:
    return ARCHS[canonical_name(name)]
