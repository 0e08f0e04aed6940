"""fmnist-scenes: a segmentation set composed from real Fashion-MNIST images, built offline.

Each scene is a textured, coloured background with several items pasted at random scales and
places, overlapping; a pixel's label is the class of the item on top (+1), 0 for background.
Train scenes use only the train split's images, test scenes only the test split's. The
background is low- and high-frequency noise in the items' range of brightness, so a threshold
cannot find the items: their shapes and textures must be learned. Deterministic from a seed,
cached as an .npz (written atomically) so later runs load it in a second.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.fashion_mnist import CLASSES, find_fashion_mnist, load_split
from ..fileio import atomic_write

SCENES_VERSION = 3
CLASS_NAMES = ["background"] + CLASSES
DEFAULTS = {"size": 96, "num_train": 6000, "num_test": 1000, "items": (3, 5), "scale": (1.0, 2.2)}


def cache_dir() -> Path:
    return Path(os.environ.get("REPVGG_CACHE", Path.home() / ".cache" / "repvgg"))


def _background(g: torch.Generator, size: int) -> torch.Tensor:
    """Colour noise at two scales: blotches of ~size/8 px plus fine grain, brightness 0..255."""
    coarse = F.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=(size, size), mode="bicubic",
                           align_corners=False)[0]
    fine = torch.rand(3, size, size, generator=g)
    base = torch.rand(3, 1, 1, generator=g)
    mix = 0.35 * base + 0.45 * coarse + 0.2 * fine * torch.rand((), generator=g)
    return (mix.clamp(0, 1) * 255)


def compose_scene(items: torch.Tensor, labels: torch.Tensor, g: torch.Generator, size: int,
                  n_items: tuple[int, int], scale: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """One scene: (uint8 image [3,S,S], uint8 mask [S,S]) from a pool of uint8 items [N,1,28,28]."""
    img = _background(g, size)
    mask = torch.zeros(size, size, dtype=torch.uint8)
    k = int(torch.randint(n_items[0], n_items[1] + 1, (), generator=g))
    for _ in range(k):
        i = int(torch.randint(len(items), (), generator=g))
        s = int(round(28 * (scale[0] + (scale[1] - scale[0]) * float(torch.rand((), generator=g)))))
        s = min(s, size)
        shape = F.interpolate(items[i:i + 1].float() / 255, size=(s, s), mode="bilinear", align_corners=False)[0, 0]
        alpha = (shape * 4).clamp(max=1)           # opaque cloth, soft only at the outline
        y0, x0 = (int(torch.randint(size - s + 1, (), generator=g)) for _ in range(2))
        colour = 255 * (0.05 + 0.9 * torch.rand(3, 1, 1, generator=g))     # darker or brighter than the ground
        cloth = colour * (0.35 + 0.65 * shape)     # the item's own shading and texture kept
        region = img[:, y0:y0 + s, x0:x0 + s]
        img[:, y0:y0 + s, x0:x0 + s] = region * (1 - alpha) + cloth * alpha
        mask[y0:y0 + s, x0:x0 + s][alpha > 0.5] = int(labels[i]) + 1
    return img.round().clamp(0, 255).to(torch.uint8), mask


def make_scenes(items, labels, n: int, seed: int, size: int, n_items=(3, 5), scale=(1.0, 2.2)):
    g = torch.Generator().manual_seed(seed)
    out = [compose_scene(items, labels, g, size, n_items, scale) for _ in range(n)]
    return torch.stack([o[0] for o in out]), torch.stack([o[1] for o in out])


def load_scenes(data_dir: str | None = None, seed: int = 0, **overrides) -> tuple[dict, str]:
    """{'train': (images, masks), 'test': (images, masks)} and the Fashion-MNIST origin, cached."""
    p = {**DEFAULTS, **overrides}
    folder, origin = find_fashion_mnist(data_dir)
    key = f"v{SCENES_VERSION}-{origin}-{folder}-{sorted(p.items())}-{seed}"
    path = cache_dir() / f"fmnist-scenes-{hashlib.sha1(key.encode()).hexdigest()[:12]}.npz"
    if path.is_file():
        try:
            with np.load(path) as z:
                return {s: (torch.from_numpy(z[f"{s}_x"]), torch.from_numpy(z[f"{s}_y"])) for s in ("train", "test")}, origin
        except (OSError, ValueError, KeyError):
            pass                                  # a damaged cache is rebuilt
    splits = {}
    for split, n, s in (("train", p["num_train"], seed), ("test", p["num_test"], seed + 1)):
        items, labels = load_split(folder, split)
        splits[split] = make_scenes(items, labels, n, s, p["size"], tuple(p["items"]), tuple(p["scale"]))
    arrays = {f"{s}_{k}": t.numpy() for s, (x, y) in splits.items() for k, t in (("x", x), ("y", y))}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, write)
    except OSError:
        pass                                      # a read-only home still trains, it only rebuilds next time
    return splits, origin
