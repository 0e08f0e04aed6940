"""The one entry point for `--data` specs: build_datasets(), plus build_loader()."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch.utils.data import Dataset

from . import cifar, composite, fashion_mnist
from .imagefolder import SafeImageFolder, build_imagefolder, make_folder_loader
from .memory import FastLoader, InMemoryDataset
from .transforms import STATS, check_recipe, folder_transforms

SUPPORTED = ("fashion-mnist", "fashion-mnist-builtin", "fmnist-items", "cifar10", "cifar100", "imagefolder:PATH")
_ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist",
            "cifar-10": "cifar10", "cifar-100": "cifar100"}


@dataclass
class DataInfo:
    """What a model/trainer needs to know about the data, and where it came from."""
    name: str                   # canonical dataset name
    num_classes: int
    in_chans: int               # 1 for grayscale (never copied to 3 channels)
    class_names: list[str]
    image_size: int             # size of the images the datasets return
    default_image_size: int     # the dataset's native/default size
    source: str                 # directory the data was read from
    origin: str                 # 'data_dir' | 'system' | 'builtin'
    mean: tuple = field(default=())
    std: tuple = field(default=())
    recipe_aug: str = "simple"
    in_memory: bool = True      # True: FastLoader + batched aug; False: DataLoader path
    num_train: int = 0
    num_test: int = 0


def _in_memory(name, x_tr, y_tr, x_te, y_te, classes, *, source, origin, image_size,
               recipe_aug, policy, crop_padding=None, erasing=0.0):
    if name in STATS:
        mean, std = STATS[name]
    else:                                    # a built set: its training images' own statistics
        mean, std = channel_stats(x_tr)
    size = image_size or x_tr.shape[-1]
    kw = dict(mean=mean, std=std, recipe_aug=recipe_aug, image_size=size, policy=policy)
    train = InMemoryDataset(x_tr, y_tr, classes, train=True, padding=crop_padding,
                           erasing=erasing, **kw)
    test = InMemoryDataset(x_te, y_te, classes, train=False, **kw)
    info = DataInfo(name, len(classes), x_tr.shape[1], list(classes), size, x_tr.shape[-1],
                    source, origin, mean, std, recipe_aug, True, len(train), len(test))
    return train, test, info


def channel_stats(images: torch.Tensor) -> tuple[tuple, tuple]:
    """Per-channel mean and std on [0, 1] of uint8 images [N,C,H,W], exact, from each channel's histogram
    of the 256 values: no float copy of a large set (gigabytes), and a fraction of a second where
    float sums a chunk at a time took 9 s on 60,000 64 px images."""
    values = torch.arange(256, dtype=torch.float64) / 255
    counts = torch.stack([torch.bincount(images[:, c].reshape(-1), minlength=256)
                          for c in range(images.shape[1])]).double()
    n = counts.sum(1)
    mean = counts @ values / n
    std = (counts @ (values * values) / n - mean * mean).clamp(min=0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def build_datasets(spec: str, data_dir: str | None = None, image_size: int | None = None,
                   recipe_aug: str = "simple", crop_padding: int | None = None,
                   erasing: float = 0.0) -> tuple[Dataset, Dataset, DataInfo]:
    """Resolve a `--data` spec to (train_ds, test_ds, info).

    Specs: 'fashion-mnist' (data_dir, else the Debian files in
    /usr/share/datasets/fashion-mnist, else the built-in subset),
    'fashion-mnist-builtin' (always the built-in subset), 'fmnist-items' (each Fashion-MNIST image
    alone on a textured 64 px canvas at fmnist-scenes' scale and colours: pretraining for the scene
    segmenters, see repvgg.data.composite), 'cifar10' / 'cifar100'
    (pickle batches under data_dir), 'imagefolder:PATH' (PATH/train, PATH/val;
    'imagefolder' alone uses data_dir as PATH). recipe_aug: 'simple' | 'autoaugment' | 'none'.
    Datasets yield normalized float32 images and int64 labels; use build_loader
    to iterate (fast batched path for in-memory data). crop_padding: pixels of zero padding
    for the random crop of small images (None: size / 8, the CIFAR 4 px). erasing: probability
    of random erasing per training image (0: off).
    """
    check_recipe(recipe_aug)
    name, _, arg = spec.strip().partition(":")
    name = _ALIASES.get(name.lower(), name.lower())
    if name in ("fashion-mnist", "fashion-mnist-builtin"):
        if arg:
            raise ValueError(f"{name} takes no ':' argument; use data_dir")
        if name == "fashion-mnist":
            folder, origin = fashion_mnist.find_fashion_mnist(data_dir)
        else:
            folder, origin = fashion_mnist.BUILTIN_DIR, "builtin"
        return _in_memory("fashion-mnist", *fashion_mnist.load_split(folder, "train"),
                          *fashion_mnist.load_split(folder, "test"), fashion_mnist.CLASSES,
                          source=str(folder), origin=origin, image_size=image_size,
                          recipe_aug=recipe_aug, policy="cifar10", crop_padding=crop_padding,
                          erasing=erasing)
    if name == "fmnist-items":
        if arg:
            raise ValueError("fmnist-items takes no ':' argument; use data_dir")
        splits, folder, origin = composite.load_items(data_dir)
        return _in_memory("fmnist-items", *splits["train"], *splits["test"], fashion_mnist.CLASSES,
                          source=str(folder), origin=origin, image_size=image_size,
                          recipe_aug=recipe_aug, policy="cifar10", crop_padding=crop_padding,
                          erasing=erasing)
    if name in cifar.LAYOUTS:
        d = cifar.load_cifar(name, data_dir)
        return _in_memory(name, d["x_train"], d["y_train"], d["x_test"], d["y_test"], d["classes"],
                          source=d["source"], origin="data_dir", image_size=image_size,
                          recipe_aug=recipe_aug, policy="cifar10", crop_padding=crop_padding,
                          erasing=erasing)
    if name == "imagefolder":
        root = arg or data_dir
        if not root:
            raise ValueError("imagefolder needs a path: 'imagefolder:PATH' (PATH/train, PATH/val)")
        size = image_size or 224
        mean, std = STATS["imagenet"]
        train_tf, eval_tf = folder_transforms(size, recipe_aug, mean, std, crop_padding, erasing)
        train, test, classes = build_imagefolder(root, train_tf, eval_tf)
        info = DataInfo("imagefolder", len(classes), 3, classes, size, 224, str(root), "data_dir",
                        mean, std, recipe_aug, False, len(train), len(test))
        return train, test, info
    raise ValueError(f"unknown data spec {spec!r}; supported: {', '.join(SUPPORTED)}")


def build_loader(dataset, batch_size: int, *, train: bool, seed: int = 0, rank: int = 0,
                 world_size: int = 1, drop_last: bool | None = None, num_workers: int = 0,
                 device: torch.device | str | None = None):
    """Iterable of (images float32 [B,C,S,S], labels int64 [B]) batches.

    In-memory datasets get the worker-free FastLoader (augmenting on `device`
    if given); ImageFolder gets a DataLoader that skips unreadable files.
    Both have set_epoch(), len() and `.skipped`. drop_last defaults to `train`.
    """
    drop_last = train if drop_last is None else drop_last
    if isinstance(dataset, InMemoryDataset):
        return FastLoader(dataset, batch_size, shuffle=train, seed=seed, rank=rank,
                          world_size=world_size, drop_last=drop_last, device=device)
    if isinstance(dataset, SafeImageFolder):
        return make_folder_loader(dataset, batch_size, train=train, seed=seed, rank=rank,
                                  world_size=world_size, num_workers=num_workers, drop_last=drop_last)
    raise TypeError(f"build_loader: unsupported dataset type {type(dataset).__name__}")


def split_validation(train_ds, test_ds, fraction: float, seed: int):
    """``(train, val)``: a seeded, class-stratified ``fraction`` of the training set held out.

    Checkpoints and settings are chosen on ``val``, never on the test set. The held-out images are
    shown the way test images are (``test_ds``'s transforms: no augmentation). In-memory data and
    ImageFolder data both keep their own dataset type, so ``build_loader`` takes either part.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"val_split must be a fraction in (0, 1) of the training set (0 = none), got {fraction}")
    targets = torch.as_tensor(train_ds.targets)
    gen = torch.Generator().manual_seed(seed)
    val_idx = []
    for c in targets.unique():
        members = (targets == c).nonzero().flatten()
        n_val = int(round(fraction * len(members)))
        val_idx.append(members[torch.randperm(len(members), generator=gen)[:n_val]])
    held = torch.zeros(len(targets), dtype=torch.bool)
    held[torch.cat(val_idx)] = True
    if held.all() or not held.any():
        raise ValueError(f"val_split={fraction} of {len(targets)} training images leaves no "
                         f"{'training' if held.all() else 'validation'} images")
    keep_idx, val_idx = (~held).nonzero().flatten(), held.nonzero().flatten()
    train, val = copy.copy(train_ds), copy.copy(test_ds)
    if isinstance(train_ds, InMemoryDataset):
        train.images, train.targets = train_ds.images[keep_idx], train_ds.targets[keep_idx]
        val.images, val.targets = train_ds.images[val_idx], train_ds.targets[val_idx]
        return train, val
    if isinstance(train_ds, SafeImageFolder):
        for part, idx in ((train, keep_idx), (val, val_idx)):
            part.samples = [train_ds.samples[i] for i in idx.tolist()]
            part.imgs, part.targets = part.samples, [s[1] for s in part.samples]
            part.root = train_ds.root
        return train, val
    raise TypeError(f"split_validation: unsupported dataset type {type(train_ds).__name__}")


def train_subset(ds, n: int, seed: int):
    """The first n of a seeded permutation of an in-memory training set (quick runs, the demo)."""
    if not isinstance(ds, InMemoryDataset):
        raise ValueError("train_subset works with in-memory data (fashion-mnist, cifar), not imagefolder")
    if not 0 < n <= len(ds):
        raise ValueError(f"train_subset={n} must be in 1..{len(ds)}")
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    sub = copy.copy(ds)  # every augmentation setting (crop padding, erasing, ...) carries over
    sub.images, sub.targets = ds.images[idx], ds.targets[idx]
    return sub
