"""Segmentation data: image/mask pairs with joint transforms (torchvision transforms.v2), ignore 255.

Three sources, one dataset class per storage: ``cityscapes`` and ``folder`` read PNG pairs from
disk (:class:`PairFolder`), ``fmnist-scenes`` (the built-in default, see .scenes) lives in memory
(:class:`SceneSet`). Problems are found before training writes anything: a missing split, an image
without a mask and a mask whose size differs from its image are checked from the file headers
when the set is built; a label outside the classes (and not 255) is named with its file when read.

Augmentation is a pure function of (seed, epoch, index): a resumed run sees the same crops.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..data.build import channel_stats

IGNORE_INDEX = 255
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
SOURCES = ("fmnist-scenes", "cityscapes", "folder")

# Cityscapes: the 34 label ids -> the 19 train ids (others ignored), as cityscapesScripts' labels.py
CITYSCAPES_CLASSES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
                      "motorcycle", "bicycle"]
_CITYSCAPES_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
CITYSCAPES_LUT = np.full(256, IGNORE_INDEX, dtype=np.uint8)
CITYSCAPES_LUT[list(_CITYSCAPES_IDS)] = np.arange(19, dtype=np.uint8)


@dataclass
class SegInfo:
    name: str
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    origin: str
    in_chans: int = 3
    num_train: int = 0
    num_test: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# ------------------------------------------------------------------------------- transforms
def train_transform(crop: int, scale=(0.5, 2.0), mean=(0.5,), std=(0.5,)) -> v2.Compose:
    """Random scale (of the crop size), pad-and-crop (pads: image 0, mask 255), flip; then normalize."""
    lo, hi = int(crop * scale[0]), int(crop * scale[1]) + 1
    return v2.Compose([v2.RandomResize(lo, hi, antialias=True),
                       v2.RandomCrop(crop, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX}),
                       v2.RandomHorizontalFlip(), v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64},
                                                             scale=True),
                       v2.Normalize(mean, std)])


def eval_transform(mean=(0.5,), std=(0.5,)) -> v2.Compose:
    return v2.Compose([v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64}, scale=True),
                       v2.Normalize(mean, std)])


class _Joint(torch.utils.data.Dataset):
    """Applies a joint transform with an RNG seeded from (seed, epoch, index)."""

    transform = None
    seed = 0
    epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def pair(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def __getitem__(self, i: int):
        img, mask = self.pair(i)
        img, mask = tv_tensors.Image(img), tv_tensors.Mask(mask)
        if self.transform is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + i)
                img, mask = self.transform(img, mask)
        return img.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor).long()


class SceneSet(_Joint):
    """Images uint8 [N,C,H,W] and masks uint8 [N,H,W] in memory."""

    def __init__(self, images: torch.Tensor, masks: torch.Tensor, transform=None, seed: int = 0):
        self.images, self.masks, self.transform, self.seed = images, masks, transform, seed

    def __len__(self) -> int:
        return len(self.images)

    def pair(self, i):
        return self.images[i], self.masks[i]


class PairFolder(_Joint):
    """(image file, mask file) pairs; masks are grayscale or palette PNGs of class indices."""

    def __init__(self, pairs: list[tuple[Path, Path]], num_classes: int, lut: np.ndarray | None = None,
                 transform=None, seed: int = 0):
        self.pairs, self.num_classes, self.lut, self.transform, self.seed = pairs, num_classes, lut, transform, seed

    def __len__(self) -> int:
        return len(self.pairs)

    def pair(self, i):
        from PIL import Image

        img_path, mask_path = self.pairs[i]
        with Image.open(img_path) as im:
            img = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).contiguous()
        mask = read_mask(mask_path)
        if self.lut is not None:
            mask = self.lut[mask]
        if mask.shape != tuple(img.shape[1:]):
            raise ValueError(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} px, its image {img_path} "
                             f"is {img.shape[2]}x{img.shape[1]}")
        bad = np.unique(mask[(mask >= self.num_classes) & (mask != IGNORE_INDEX)])
        if bad.size:
            raise ValueError(f"{mask_path}: label value(s) {bad[:8].tolist()} outside the {self.num_classes} classes "
                             f"(0..{self.num_classes - 1}) and not the ignore index {IGNORE_INDEX}")
        return img, torch.from_numpy(mask.astype(np.uint8))


def read_mask(path: Path) -> np.ndarray:
    """A mask PNG as class indices: grayscale (L) values or palette (P) indices; colour masks are refused."""
    from PIL import Image

    try:
        with Image.open(path) as m:
            if m.mode not in ("L", "P", "I", "I;16"):
                raise ValueError(f"{path}: a mask must be a grayscale or palette PNG of class indices, got mode {m.mode}")
            return np.array(m).astype(np.int64)
    except (OSError, SyntaxError) as e:
        raise ValueError(f"{path}: unreadable mask ({e})") from None


def _header_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, SyntaxError) as e:
        raise ValueError(f"{path}: unreadable image ({e})") from None


def check_pairs(pairs: list[tuple[Path, Path]]) -> None:
    """Every mask has its image's size (read from the headers, nothing decoded)."""
    for img, mask in pairs:
        a, b = _header_size(img), _header_size(mask)
        if a != b:
            raise ValueError(f"{mask}: mask is {b[0]}x{b[1]} px, its image {img} is {a[0]}x{a[1]}")


# ------------------------------------------------------------------------------- sources
def cityscapes_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    """leftImg8bit/SPLIT/CITY/*_leftImg8bit.png with gtFine/SPLIT/CITY/*_gtFine_labelTrainIds.png (else labelIds)."""
    img_dir = root / "leftImg8bit" / split
    if not img_dir.is_dir():
        raise FileNotFoundError(f"cityscapes: no {split} split at {img_dir} (expected the official layout "
                                f"leftImg8bit/{{train,val}}/CITY/*_leftImg8bit.png and gtFine/...)")
    pairs, lut_needed = [], None
    for img in sorted(img_dir.glob("*/*_leftImg8bit.png")):
        stem = img.name[: -len("_leftImg8bit.png")]
        gt = root / "gtFine" / split / img.parent.name
        train_ids, label_ids = gt / f"{stem}_gtFine_labelTrainIds.png", gt / f"{stem}_gtFine_labelIds.png"
        mask = train_ids if train_ids.is_file() else label_ids
        if not mask.is_file():
            raise FileNotFoundError(f"cityscapes: {img} has no mask ({label_ids} or {train_ids})")
        kind = mask is label_ids
        if lut_needed is not None and kind != lut_needed:
            raise ValueError(f"cityscapes {split}: mixes *_labelIds.png and *_labelTrainIds.png masks ({mask})")
        lut_needed = kind
        pairs.append((img, mask))
    if not pairs:
        raise FileNotFoundError(f"cityscapes: no *_leftImg8bit.png images under {img_dir}/CITY/")
    return pairs, bool(lut_needed)


def folder_pairs(root: Path) -> list[tuple[Path, Path]]:
    """ROOT/images/NAME.* with ROOT/masks/NAME.png (matching stems)."""
    img_dir, mask_dir = root / "images", root / "masks"
    for d in (img_dir, mask_dir):
        if not d.is_dir():
            raise FileNotFoundError(f"folder dataset: {d} is missing (expected {root}/images/ and {root}/masks/ "
                                    "with matching file stems)")
    masks = {p.stem: p for p in mask_dir.iterdir() if p.suffix.lower() == ".png"}
    pairs = []
    for img in sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        if img.stem not in masks:
            raise FileNotFoundError(f"folder dataset: {img} has no mask {mask_dir}/{img.stem}.png")
        pairs.append((img, masks[img.stem]))
    if not pairs:
        raise FileNotFoundError(f"folder dataset: no images in {img_dir}")
    return pairs


def folder_classes(root: Path, num_classes: int | None) -> list[str]:
    f = root / "classes.txt"
    if f.is_file():
        names = [line.strip() for line in f.read_text().splitlines() if line.strip()]
        if num_classes is not None and num_classes != len(names):
            raise ValueError(f"--num-classes {num_classes} but {f} names {len(names)} classes")
        return names
    if num_classes is None:
        raise ValueError(f"folder dataset {root}: no classes.txt (one class name per line); pass --num-classes")
    return [f"class{i}" for i in range(num_classes)]


def _folder_split(root: Path, *names: str) -> Path | None:
    for n in names:
        if (root / n / "images").is_dir():
            return root / n
    return None


def build_seg_datasets(spec: str = "fmnist-scenes", data_dir: str | None = None, crop_size: int | None = None, *,
                       seed: int = 0, num_classes: int | None = None, scale=(0.5, 2.0), scenes: dict | None = None):
    """(train set with augmentation, test set, SegInfo). Nothing is written but the scenes cache."""
    if spec == "fmnist-scenes":
        from .scenes import CLASS_NAMES, load_scenes

        splits, origin = load_scenes(data_dir, **(scenes or {}))
        (xtr, ytr), (xte, yte) = splits["train"], splits["test"]
        mean, std = channel_stats(xtr)    # the training scenes' own, from their histograms (no float copy)
        info = SegInfo("fmnist-scenes", CLASS_NAMES, mean, std, f"Fashion-MNIST {origin}")
        crop = crop_size or xtr.shape[-1]
        train = SceneSet(xtr, ytr, train_transform(crop, scale, mean, std), seed)
        test = SceneSet(xte, yte, eval_transform(mean, std))
    elif spec in ("cityscapes", "folder"):
        if data_dir is None:
            raise ValueError(f"--data {spec} needs --data-dir")
        root = Path(data_dir).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"--data-dir {root} is not a folder")
        mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)    # ImageNet's, as pretrained backbones expect
        if spec == "cityscapes":
            (tr, lut_tr), (te, lut_te) = cityscapes_pairs(root, "train"), cityscapes_pairs(root, "val")
            names, luts = CITYSCAPES_CLASSES, (CITYSCAPES_LUT if lut_tr else None, CITYSCAPES_LUT if lut_te else None)
        else:
            tr_root = _folder_split(root, "train")
            te_root = _folder_split(root, "val", "test")
            if tr_root is None or te_root is None:
                raise FileNotFoundError(f"folder dataset {root}: expected train/images + train/masks and "
                                        "val/ (or test/) images + masks")
            tr, te = folder_pairs(tr_root), folder_pairs(te_root)
            names, luts = folder_classes(root, num_classes), (None, None)
        check_pairs(tr)
        check_pairs(te)
        info = SegInfo(spec, names, mean, std, str(root))
        train = PairFolder(tr, len(names), luts[0], train_transform(crop_size or 512, scale, mean, std), seed)
        test = PairFolder(te, len(names), luts[1], eval_transform(mean, std))
    else:
        raise ValueError(f"unknown segmentation data {spec!r}; use one of {', '.join(SOURCES)}")
    info.num_train, info.num_test = len(train), len(test)
    return train, test, info


def hold_out(train, fraction: float, seed: int, eval_tf):
    """Split a validation part off the training set (for checkpoint selection), without augmentation."""
    n = len(train)
    k = int(round(n * fraction))
    if k == 0:
        return train, None
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    val_idx, tr_idx = sorted(perm[:k]), sorted(perm[k:])
    return _subset(train, tr_idx, train.transform), _subset(train, val_idx, eval_tf)


def _subset(ds, idx: list[int], transform):
    if isinstance(ds, SceneSet):
        return SceneSet(ds.images[idx], ds.masks[idx], transform, ds.seed)
    return PairFolder([ds.pairs[i] for i in idx], ds.num_classes, ds.lut, transform, ds.seed)


class EpochSampler(torch.utils.data.Sampler):
    """A permutation drawn from (seed, epoch): epoch e's order is the same after a resume."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


def build_seg_loader(ds, batch_size: int, *, train: bool, seed: int = 0, workers: int = 0):
    """Training: shuffled from (seed, epoch), full batches only. ``loader.set_epoch(e)`` sets both
    the order and the augmentation of epoch e."""
    sampler = EpochSampler(len(ds), seed) if train else None
    # its own generator: the workers' base seed is not drawn from the global RNG, so a resumed run's
    # dropout sees the same random stream as an uninterrupted one
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=sampler, drop_last=train,
                                         num_workers=workers, generator=torch.Generator().manual_seed(seed))

    def set_epoch(epoch: int) -> None:
        sampler.set_epoch(epoch)
        ds.set_epoch(epoch)

    loader.set_epoch = set_epoch
    return loader
