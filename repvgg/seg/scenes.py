"""fmnist-scenes: a segmentation set composed from real Fashion-MNIST images, built offline.

Each scene is a textured, coloured background with several items pasted at random scales and
places, overlapping; a pixel's label is the class of the item on top (+1), 0 for background.
Train scenes use only the train split's images, test scenes only the test split's. The drawing
(repvgg.data.composite) is shared with fmnist-items, the classification set that pretrains a
segmenter's backbone on the same kind of picture. Deterministic from a seed, cached.
"""
from __future__ import annotations

import torch

from ..data.composite import cached_arrays, compose_scene
from ..data.fashion_mnist import CLASSES, find_fashion_mnist, load_split

SCENES_VERSION = 3
CLASS_NAMES = ["background"] + CLASSES
DEFAULTS = {"size": 96, "num_train": 6000, "num_test": 1000, "items": (3, 5), "scale": (1.0, 2.2)}


def make_scenes(items, labels, n: int, seed: int, size: int, n_items=(3, 5), scale=(1.0, 2.2)):
    g = torch.Generator().manual_seed(seed)
    out = [compose_scene(items, labels, g, size, n_items, scale) for _ in range(n)]
    return torch.stack([o[0] for o in out]), torch.stack([o[1] for o in out])


def load_scenes(data_dir: str | None = None, seed: int = 0, **overrides) -> tuple[dict, str]:
    """{'train': (images, masks), 'test': (images, masks)} and the Fashion-MNIST origin, cached."""
    p = {**DEFAULTS, **overrides}
    folder, origin = find_fashion_mnist(data_dir)
    key = f"v{SCENES_VERSION}-{origin}-{folder}-{sorted(p.items())}-{seed}"

    def build() -> dict:
        arrays = {}
        for split, n, s in (("train", p["num_train"], seed), ("test", p["num_test"], seed + 1)):
            items, labels = load_split(folder, split)
            x, y = make_scenes(items, labels, n, s, p["size"], tuple(p["items"]), tuple(p["scale"]))
            arrays.update({f"{split}_x": x.numpy(), f"{split}_y": y.numpy()})
        return arrays

    z = cached_arrays("fmnist-scenes", key, ("train_x", "train_y", "test_x", "test_y"), build)
    return {s: (torch.from_numpy(z[f"{s}_x"]), torch.from_numpy(z[f"{s}_y"])) for s in ("train", "test")}, origin
