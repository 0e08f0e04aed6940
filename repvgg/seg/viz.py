"""Pictures of masks: a fixed palette, colour overlays (predict) and a sample grid (end of training)."""
from __future__ import annotations

import numpy as np
import torch

from ..fileio import atomic_output, atomic_savefig


def palette(n: int) -> np.ndarray:
    """uint8 [max(n, 256), 3]: class 0 dark grey, then well-separated hues (matplotlib tab20), 255 black."""
    import matplotlib

    base = [(60, 60, 60)] + [tuple(int(255 * c) for c in matplotlib.colormaps["tab20"](i % 20)[:3]) for i in range(255)]
    pal = np.array(base[:256], dtype=np.uint8)
    pal[255] = 0
    return pal


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """RGB uint8 [H,W,3] image blended with the colours of mask [H,W]."""
    colours = palette(int(mask.max()) + 1)[mask]
    return (image.astype(np.float32) * (1 - alpha) + colours.astype(np.float32) * alpha).round().astype(np.uint8)


def save_png(array: np.ndarray, path, *, palette_of: int | None = None) -> None:
    """Write a PNG atomically; ``palette_of``: a mask of class indices saved as a palette PNG (its values kept)."""
    from PIL import Image

    if palette_of is None:
        img = Image.fromarray(array)
    else:
        img = Image.fromarray(array.astype(np.uint8)).convert("P")    # an 8-bit image's values become its indices
        img.putpalette(palette(palette_of).flatten().tolist())
    with atomic_output(path) as tmp:
        img.save(tmp, format="PNG")


def denormalize(x: torch.Tensor, mean, std) -> np.ndarray:
    img = x * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)
    img = (img.clamp(0, 1) * 255).round().to(torch.uint8)
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    return img.permute(1, 2, 0).numpy()


def save_samples(path, test_ds, predictions: torch.Tensor, info, n: int = 6) -> None:
    """Rows: image, ground truth, prediction of the first n test images; legend of class colours."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    n = min(n, len(test_ds))
    pal = palette(info.num_classes)
    fig, axes = plt.subplots(3, n, figsize=(2 * n, 6.4), squeeze=False)
    for i in range(n):
        x, y = test_ds[i]
        img = denormalize(x, info.mean, info.std)
        for row, im in enumerate((img, overlay(img, y.numpy().astype(np.int64) % 256),
                                  overlay(img, predictions[i].numpy().astype(np.int64)))):
            axes[row, i].imshow(im)
            axes[row, i].axis("off")
    for row, title in enumerate(("image", "ground truth", "prediction (fused model)")):
        axes[row, 0].set_title(title, loc="left", fontsize=9)
    handles = [Patch(color=pal[c] / 255, label=name) for c, name in enumerate(info.class_names[:20])]
    fig.legend(handles=handles, loc="lower center", ncol=min(6, len(handles)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    try:
        atomic_savefig(fig, path, dpi=80)
    finally:
        plt.close(fig)
