"""Data layer: `--data` specs -> datasets, fast loaders, augmentation.

    train_ds, test_ds, info = build_datasets("fashion-mnist")
    for x, y in build_loader(train_ds, 256, train=True, seed=0):
        ...   # x: normalized float32 [B, info.in_chans, S, S], y: int64 [B]
"""
from .build import SUPPORTED, DataInfo, build_datasets, build_loader, split_validation, train_subset
from .cifar import load_cifar
from .fashion_mnist import read_idx, write_idx
from .imagefolder import SafeImageFolder, SkipBadLoader, check_imagefolder, collate_skip_none
from .memory import FastLoader, InMemoryDataset
from .transforms import AUG_RECIPES, STATS, batch_augment, batch_erase, folder_transforms, normalize_batch

__all__ = [
    "SUPPORTED", "AUG_RECIPES", "STATS", "DataInfo", "build_datasets", "build_loader", "split_validation", "train_subset",
    "load_cifar", "read_idx", "write_idx", "SafeImageFolder", "SkipBadLoader",
    "check_imagefolder", "collate_skip_none", "FastLoader", "InMemoryDataset",
    "batch_augment", "batch_erase", "folder_transforms", "normalize_batch",
]
