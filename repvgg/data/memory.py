"""In-memory uint8 datasets and a worker-free batch loader.

Why: Fashion-MNIST/CIFAR fit in RAM as one uint8 tensor. Slicing a shuffled
batch out of it and augmenting with tensor ops (transforms.batch_augment) is
far cheaper on 2 CPU cores than torch DataLoader workers (process start-up,
pickling, one PIL call per image).
"""
from __future__ import annotations

import math

import torch

from .transforms import autoaugment, batch_augment, batch_erase, check_recipe, crop_padding, normalize_batch


class InMemoryDataset(torch.utils.data.Dataset):
    """A split held as `images` uint8 [N,C,H,W] and `targets` int64 [N].

    Two ways to read it, same augmentation either way:
    - `get_batch(idx)`: fast path (FastLoader), batched augmentation;
    - `ds[i]`: per-sample path for a standard torch DataLoader.
    Both return normalized float32 images ([C,S,S], S = image_size) and int64 labels.
    Augmentation only when `train`: 'simple' = padded random crop + flip,
    'autoaugment' = that + AutoAugment per sample, 'none' = nothing; then, if
    `erasing` > 0, random erasing with that probability (after normalization).
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, classes: list[str], *,
                 mean, std, train: bool, recipe_aug: str = "simple",
                 image_size: int | None = None, policy: str = "cifar10", padding: int | None = None,
                 erasing: float = 0.0):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 [N,C,H,W], got {images.dtype} {tuple(images.shape)}")
        if targets.shape != (len(images),):
            raise ValueError(f"{tuple(targets.shape)} targets for {len(images)} images")
        self.images, self.targets = images, targets.long()
        self.classes, self.mean, self.std = list(classes), tuple(mean), tuple(std)
        self.train, self.recipe_aug = train, check_recipe(recipe_aug)
        self.image_size = image_size or images.shape[-1]
        self.padding = crop_padding(images.shape[-1]) if padding is None else int(padding)
        self._autoaug = autoaugment(policy) if recipe_aug == "autoaugment" else None
        if not 0.0 <= erasing <= 1.0:
            raise ValueError(f"random erasing probability must be in [0, 1], got {erasing}")
        self.erasing = float(erasing)

    def __len__(self) -> int:
        return len(self.images)

    def _augment(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if not self.train or self.recipe_aug == "none":
            return x
        x = batch_augment(x, self.padding, flip=True, generator=generator)
        if self._autoaug is not None:
            # AutoAugment draws from the global RNG: reseed it from `generator` in a fork
            seed = int(torch.randint(2**62, (1,), generator=generator))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                x = torch.stack([self._autoaug(img) for img in x])
        return x

    def _erase(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if not self.train or self.recipe_aug == "none":
            return x
        return batch_erase(x, self.erasing, generator)

    def get_batch(self, idx: torch.Tensor, generator: torch.Generator | None = None,
                  device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Images [B,C,S,S] float32 (normalized) and labels [B] int64 for indices `idx`."""
        x, y = self.images[idx], self.targets[idx]
        if device is not None:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        x = normalize_batch(self._augment(x, generator), self.mean, self.std, self.image_size)
        return self._erase(x, generator), y

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        i = range(len(self))[i]                  # bounds check, negative indices
        x = normalize_batch(self._augment(self.images[i:i + 1], None), self.mean, self.std, self.image_size)
        return self._erase(x, None)[0], int(self.targets[i])


class FastLoader:
    """Shuffled batches from an InMemoryDataset, optionally sharded across ranks.

    Every epoch the same seeded permutation is drawn on all ranks and rank r
    takes positions r, r+W, r+2W, ... so the shards are disjoint and, with
    drop_last=False, cover every index exactly once. drop_last=True first trims
    the permutation to a multiple of world_size*batch_size so all ranks run the
    same number of full batches (needed for DDP training). The epoch advances
    on each iteration; `set_epoch` pins it (like DistributedSampler).
    """

    def __init__(self, dataset: InMemoryDataset, batch_size: int, *, shuffle: bool = True,
                 seed: int = 0, rank: int = 0, world_size: int = 1, drop_last: bool = False,
                 device: torch.device | str | None = None):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        self.dataset, self.batch_size, self.shuffle = dataset, batch_size, shuffle
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.drop_last, self.device = drop_last, device
        self.epoch = 0
        self.skipped = 0          # API parity with the ImageFolder loader; nothing is ever skipped

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self, epoch: int | None = None) -> torch.Tensor:
        """This rank's sample indices for `epoch`, in iteration order."""
        epoch = self.epoch if epoch is None else epoch
        n = len(self.dataset)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + epoch))
        else:
            order = torch.arange(n)
        if self.drop_last:
            step = self.world_size * self.batch_size
            order = order[: n // step * step]
        return order[self.rank::self.world_size]

    def __len__(self) -> int:
        n, w = len(self.dataset), self.world_size
        if self.drop_last:
            return n // (w * self.batch_size)
        return math.ceil(max(0, math.ceil((n - self.rank) / w)) / self.batch_size)

    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1
        idx = self.indices(epoch)
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 65_537 + self.rank)
        for start in range(0, len(idx), self.batch_size):
            yield self.dataset.get_batch(idx[start:start + self.batch_size], gen, self.device)
