"""Augmentation and normalization.

Design: small in-memory datasets (Fashion-MNIST, CIFAR) are augmented a whole
batch at a time on uint8 tensors (`batch_augment`: pad + random crop + flip in
one gather), then converted/normalized (`normalize_batch`), then optionally
randomly erased (`batch_erase`). On a 2-core CPU
this costs well under a millisecond per batch, where per-image PIL transforms
would starve the model; it runs unchanged on GPU tensors too. Per-sample
torchvision (v2) transforms are kept for what cannot be batched cheaply:
AutoAugment (the heavy recipe) and ImageFolder images of arbitrary size.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

AUG_RECIPES = ("simple", "autoaugment", "none")

# per-dataset channel mean/std on [0, 1] pixels
STATS = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def check_recipe(recipe_aug: str) -> str:
    if recipe_aug not in AUG_RECIPES:
        raise ValueError(f"recipe_aug={recipe_aug!r}; supported: {', '.join(AUG_RECIPES)}")
    return recipe_aug


def crop_padding(size: int) -> int:
    """Padding for random crops of small images: 4 px for 28-32 px (the usual CIFAR recipe)."""
    return max(1, round(size / 8))


def batch_augment(x: torch.Tensor, padding: int = 4, flip: bool = True,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop (zero padding) + horizontal flip of a uint8 batch [B,C,H,W], per sample.

    One advanced-indexing gather does crop and flip for the whole batch, so it is
    fast on CPU and GPU alike. Random numbers come from `generator` (a CPU
    generator, so results are reproducible on any device). Returns the same
    shape and dtype.
    """
    if x.ndim != 4:
        raise ValueError(f"batch_augment expects [B,C,H,W], got shape {tuple(x.shape)}")
    b, _, h, w = x.shape
    rows, cols = torch.arange(h).expand(b, h), torch.arange(w).expand(b, w)
    if padding > 0:
        rows = rows + torch.randint(0, 2 * padding + 1, (b, 1), generator=generator)
        cols = cols + torch.randint(0, 2 * padding + 1, (b, 1), generator=generator)
        x = F.pad(x, (padding,) * 4)
    if flip:
        flipped = torch.rand(b, 1, generator=generator) < 0.5
        cols = torch.where(flipped, cols.flip(1), cols)
    dev = x.device
    bi = torch.arange(b, device=dev)[:, None, None]
    out = x[bi, :, rows.to(dev)[:, :, None], cols.to(dev)[:, None, :]]   # [B,H,W,C]
    return out.permute(0, 3, 1, 2).contiguous()


def batch_erase(x: torch.Tensor, p: float, generator: torch.Generator | None = None,
                scale: tuple[float, float] = (0.02, 0.33), ratio: tuple[float, float] = (0.3, 3.3),
                value: float = 0.0) -> torch.Tensor:
    """Random erasing (Zhong et al. 2020) of a normalized batch [B,C,H,W], in place, per sample.

    Same sampling as torchvision's RandomErasing (each image with probability p,
    area fraction in `scale`, log-uniform aspect `ratio`, value 0 = the dataset
    mean after normalization), but one masked fill for the whole batch; a
    rectangle that would not fit is clipped to the image instead of re-drawn.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"random erasing probability must be in [0, 1], got {p}")
    if p == 0.0:
        return x
    b, _, h, w = x.shape
    hit = torch.rand(b, generator=generator) < p
    area = h * w * torch.empty(b).uniform_(*scale, generator=generator)
    aspect = torch.empty(b).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator).exp()
    eh = (area * aspect).sqrt().round().clamp(1, h)
    ew = (area / aspect).sqrt().round().clamp(1, w)
    top = (torch.rand(b, generator=generator) * (h - eh + 1)).floor()
    left = (torch.rand(b, generator=generator) * (w - ew + 1)).floor()
    rows, cols = torch.arange(h), torch.arange(w)
    in_rows = (rows >= top[:, None]) & (rows < (top + eh)[:, None])        # [B,H]
    in_cols = (cols >= left[:, None]) & (cols < (left + ew)[:, None])      # [B,W]
    mask = hit[:, None, None] & in_rows[:, :, None] & in_cols[:, None, :]  # [B,H,W]
    return x.masked_fill_(mask[:, None].to(x.device), value)


def normalize_batch(x: torch.Tensor, mean, std, size: int | None = None) -> torch.Tensor:
    """uint8 [B,C,H,W] -> normalized float32, resized (bilinear) to size x size if given."""
    x = x.float().div_(255)
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=size < x.shape[-1])
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)


def autoaugment(policy: str = "cifar10") -> v2.AutoAugment:
    """torchvision AutoAugment; works per sample on uint8 tensors or PIL images."""
    return v2.AutoAugment({"cifar10": v2.AutoAugmentPolicy.CIFAR10,
                           "imagenet": v2.AutoAugmentPolicy.IMAGENET,
                           "svhn": v2.AutoAugmentPolicy.SVHN}[policy])


def folder_transforms(image_size: int, recipe_aug: str, mean, std, padding: int | None = None,
                      erasing: float = 0.0) -> tuple[v2.Compose, v2.Compose]:
    """(train, eval) per-sample PIL pipelines for ImageFolder data.

    The paper's simple recipe: RandomResizedCrop + flip for large images; for
    small ones (<= 64 px) resize + padded random crop + flip, as for CIFAR.
    'autoaugment' adds ImageNet AutoAugment; 'none' uses the eval pipeline.
    erasing > 0 ends the train pipeline with torchvision's RandomErasing(p=erasing).
    """
    check_recipe(recipe_aug)
    tail = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    small = image_size <= 64
    if small:
        resize = [v2.Resize((image_size, image_size), antialias=True)]
        pad = crop_padding(image_size) if padding is None else padding
        train = resize + ([v2.RandomCrop(image_size, padding=pad)] if pad else [])
    else:
        resize = [v2.Resize(round(image_size / 0.875), antialias=True), v2.CenterCrop(image_size)]
        train = [v2.RandomResizedCrop(image_size, antialias=True)]
    train.append(v2.RandomHorizontalFlip())
    if recipe_aug == "autoaugment":
        train.append(autoaugment("imagenet"))
    if recipe_aug == "none":
        train = resize
    erase = [v2.RandomErasing(p=erasing)] if erasing > 0 and recipe_aug != "none" else []
    return v2.Compose(train + tail + erase), v2.Compose(resize + tail)
