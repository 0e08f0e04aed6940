"""Fashion-MNIST items pasted on textured backgrounds: the drawing shared by fmnist-scenes
(segmentation, several items per scene) and fmnist-items (classification, one item per canvas).

The background is low- and high-frequency colour noise in the items' range of brightness, so a
threshold cannot find the items: their shapes and textures must be learned. An item is drawn in a
random colour with its own shading kept, at a random scale and place. Everything is deterministic
from a torch.Generator; built sets are cached as an .npz (written atomically) so later runs load
them in a second.
"""
from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..fileio import atomic_write


def data_cache_dir() -> Path:
    """Where built data (scenes, items) is cached: REPVGG_CACHE, else ~/.cache/repvgg. Weights use the same
    variable but default to torch hub's checkpoints folder, as timm's and torchvision's do (repvgg.hub)."""
    return Path(os.environ.get("REPVGG_CACHE", Path.home() / ".cache" / "repvgg"))


def background(g: torch.Generator, size: int) -> torch.Tensor:
    """Colour noise at two scales: blotches of ~size/8 px plus fine grain, brightness 0..255 (float [3,S,S])."""
    coarse = F.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=(size, size), mode="bicubic",
                           align_corners=False)[0]
    fine = torch.rand(3, size, size, generator=g)
    base = torch.rand(3, 1, 1, generator=g)
    mix = 0.35 * base + 0.45 * coarse + 0.2 * fine * torch.rand((), generator=g)
    return (mix.clamp(0, 1) * 255)


def paste_item(img: torch.Tensor, item: torch.Tensor, g: torch.Generator, scale: tuple[float, float],
               mask: torch.Tensor | None = None, value: int = 1) -> None:
    """Paste one uint8 item [1,28,28] into `img` (float [3,S,S]) at 28 * U(scale) px, a random place and
    colour; its pixels in `mask` (if given) become `value`. Both are changed in place."""
    size = img.shape[-1]
    s = int(round(28 * (scale[0] + (scale[1] - scale[0]) * float(torch.rand((), generator=g)))))
    s = min(s, size)
    shape = F.interpolate(item[None].float() / 255, size=(s, s), mode="bilinear", align_corners=False)[0, 0]
    alpha = (shape * 4).clamp(max=1)           # opaque cloth, soft only at the outline
    y0, x0 = (int(torch.randint(size - s + 1, (), generator=g)) for _ in range(2))
    colour = 255 * (0.05 + 0.9 * torch.rand(3, 1, 1, generator=g))     # darker or brighter than the ground
    cloth = colour * (0.35 + 0.65 * shape)     # the item's own shading and texture kept
    region = img[:, y0:y0 + s, x0:x0 + s]
    img[:, y0:y0 + s, x0:x0 + s] = region * (1 - alpha) + cloth * alpha
    if mask is not None:
        mask[y0:y0 + s, x0:x0 + s][alpha > 0.5] = value


def compose_scene(items: torch.Tensor, labels: torch.Tensor, g: torch.Generator, size: int,
                  n_items: tuple[int, int], scale: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """One scene: (uint8 image [3,S,S], uint8 mask [S,S]) from a pool of uint8 items [N,1,28,28]; a pixel's
    label is the class of the item on top (+1), 0 for background."""
    img = background(g, size)
    mask = torch.zeros(size, size, dtype=torch.uint8)
    k = int(torch.randint(n_items[0], n_items[1] + 1, (), generator=g))
    for _ in range(k):
        i = int(torch.randint(len(items), (), generator=g))
        paste_item(img, items[i], g, scale, mask, int(labels[i]) + 1)
    return img.round().clamp(0, 255).to(torch.uint8), mask


def items_on_canvas(items: torch.Tensor, seed: int, size: int, scale: tuple[float, float]) -> torch.Tensor:
    """Every item [N,1,28,28] once, alone on its own background: uint8 [N,3,S,S], in the items' order."""
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(len(items), 3, size, size, dtype=torch.uint8)
    for n, item in enumerate(items):
        img = background(g, size)
        paste_item(img, item, g, scale)
        out[n] = img.round().clamp(0, 255).to(torch.uint8)
    return out


def cached_arrays(name: str, key: str, keys: tuple[str, ...],
                  build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays `keys` that `build()` makes, from the cache file named by `name` and a hash of `key` where
    one is there and whole (a damaged one is rebuilt); a cache that cannot be written (read-only home) is
    skipped: the next run only builds it again."""
    path = data_cache_dir() / f"{name}-{hashlib.sha1(key.encode()).hexdigest()[:12]}.npz"
    if path.is_file():
        try:
            with np.load(path) as z:
                return {k: z[k] for k in keys}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            pass                                  # damaged or cut short: built again below
    arrays = build()

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, write)
    except OSError:
        pass
    return arrays


ITEMS_VERSION = 1
ITEMS_DEFAULTS = {"size": 64, "scale": (1.0, 2.2)}


def load_items(data_dir: str | None = None, seed: int = 0, **overrides) -> tuple[dict, Path, str]:
    """fmnist-items: ({'train': (images uint8 [N,3,S,S], labels), 'test': ...}, folder, origin).

    Each Fashion-MNIST image once, pasted alone on a scene background at the scale and colours of
    fmnist-scenes' items (S = 64 px holds the largest, 28 x 2.2 px): a classifier trained on it learns
    the pictures a scene segmenter will see, not grey items on black. Test items come from the test split.
    """
    from .fashion_mnist import find_fashion_mnist, load_split

    p = {**ITEMS_DEFAULTS, **overrides}
    folder, origin = find_fashion_mnist(data_dir)
    key = f"v{ITEMS_VERSION}-{origin}-{folder}-{sorted(p.items())}-{seed}"
    source = {split: load_split(folder, split) for split in ("train", "test")}   # (items, labels)

    def build() -> dict:
        return {split: items_on_canvas(x, seed + k, p["size"], tuple(p["scale"])).numpy()
                for k, (split, (x, _)) in enumerate(source.items())}

    z = cached_arrays("fmnist-items", key, ("train", "test"), build)
    return {s: (torch.from_numpy(z[s]), source[s][1]) for s in ("train", "test")}, folder, origin
