"""ImageFolder data (PATH/train, PATH/val) that survives corrupt images.

Why: one unreadable file in a large folder should not kill an epoch. The
loader returns None for it, the collate function drops the Nones, and
`SkipBadLoader.skipped` counts them (counted in the main process, so it also
works with DataLoader workers).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import default_collate
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

_BAD_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def safe_pil_loader(path: str) -> Image.Image | None:
    """RGB PIL image, or None (with a warning) when the file cannot be decoded."""
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except _BAD_IMAGE_ERRORS as e:
        warnings.warn(f"skipping unreadable image {path}: {e}")
        return None


class SafeImageFolder(ImageFolder):
    """ImageFolder whose __getitem__ returns None for an unreadable image."""

    def __init__(self, root: str | Path, transform=None):
        super().__init__(str(root), transform=transform, loader=safe_pil_loader)

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        img = self.loader(path)
        if img is None:
            return None
        return (self.transform(img) if self.transform else img), target


def collate_skip_none(batch: list) -> tuple:
    """(images, labels, n_dropped); images/labels are None when the whole batch was bad."""
    good = [b for b in batch if b is not None]
    if not good:
        return None, None, len(batch)
    x, y = default_collate(good)
    return x, y, len(batch) - len(good)


class SkipBadLoader:
    """Wraps a DataLoader built with collate_skip_none: yields (x, y).

    `skipped` is the running total of unreadable files dropped (over all epochs).
    """

    def __init__(self, loader: torch.utils.data.DataLoader):
        self.loader, self.skipped = loader, 0

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.loader.sampler, "set_epoch"):
            self.loader.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for x, y, n_bad in self.loader:
            self.skipped += n_bad
            if x is not None:
                yield x, y


def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))


def _has_image(folder: Path) -> bool:
    for _, _, files in os.walk(folder, followlinks=True):
        if any(f.lower().endswith(IMG_EXTENSIONS) for f in files):
            return True
    return False


def check_imagefolder(root: str | Path) -> list[str]:
    """Validate PATH/{train,val}/<class>/<images>; return the class names.

    Clear errors for: missing folders, no class folders, a class folder with
    no image files, and train/val class lists that differ.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"imagefolder: {root} is not a folder "
                                f"(expected {root}/train and {root}/val)")
    classes = {}
    for split in ("train", "val"):
        d = root / split
        if not d.is_dir():
            raise FileNotFoundError(f"imagefolder: missing {d} (expected {root}/train and {root}/val, "
                                    f"one sub-folder per class)")
        classes[split] = _class_dirs(d)
        if not classes[split]:
            raise ValueError(f"imagefolder: {d} has no class sub-folders")
        for c in classes[split]:
            if not _has_image(d / c):
                raise ValueError(f"imagefolder: class folder {d / c} has no images "
                                 f"(extensions: {', '.join(IMG_EXTENSIONS)})")
    if classes["train"] != classes["val"]:
        only_t = sorted(set(classes["train"]) - set(classes["val"]))
        only_v = sorted(set(classes["val"]) - set(classes["train"]))
        raise ValueError(f"imagefolder: train/ and val/ classes differ in {root}: "
                         f"only in train {only_t}, only in val {only_v}")
    return classes["train"]


def build_imagefolder(root: str | Path, train_tf, eval_tf):
    """(train, val, classes) after check_imagefolder."""
    classes = check_imagefolder(root)
    root = Path(root).expanduser()
    return SafeImageFolder(root / "train", train_tf), SafeImageFolder(root / "val", eval_tf), classes


def make_folder_loader(ds: SafeImageFolder, batch_size: int, *, train: bool, seed: int = 0,
                       rank: int = 0, world_size: int = 1, num_workers: int = 0,
                       drop_last: bool = False) -> SkipBadLoader:
    """Standard DataLoader path (shuffling, optional DistributedSampler), skipping bad files."""
    sampler, gen = None, None
    if world_size > 1:
        sampler = torch.utils.data.DistributedSampler(ds, world_size, rank, shuffle=train,
                                                      seed=seed, drop_last=drop_last)
    elif train:
        gen = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        ds, batch_size, shuffle=train and sampler is None, sampler=sampler, generator=gen,
        num_workers=num_workers, collate_fn=collate_skip_none, drop_last=drop_last,
        pin_memory=torch.cuda.is_available(), persistent_workers=num_workers > 0)
    return SkipBadLoader(loader)
