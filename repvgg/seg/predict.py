"""Predict masks for image files: NAME_mask.png (palette PNG of class indices) and NAME_overlay.png."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import read_metadata
from ..fileio import check_output_path
from .metrics import predict_logits
from .models import load_segmenter
from .viz import overlay, save_png


def _read_image(path: Path, channels: int) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB" if channels == 3 else "L"))
    except (OSError, SyntaxError) as e:
        raise ValueError(f"{path}: unreadable image ({e})") from None


def predict_files(checkpoint, images: list[Path], out_dir: Path, *, window: int | None = None, force: bool = False):
    """Yield one line per image written. Every input is read and every output name checked before
    anything is written: a bad file or an existing output stops the command with nothing lost."""
    meta = read_metadata(checkpoint)
    model = load_segmenter(checkpoint, deploy=True)
    channels = model.spec.get("in_chans", 3)
    mean = json.loads(meta["mean"]) if "mean" in meta else [0.5] * channels
    std = json.loads(meta["std"]) if "std" in meta else [0.5] * channels
    stems = [p.stem for p in images]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise ValueError(f"several inputs are named {dupes[0]}.*: their outputs would collide; predict them separately")
    arrays = [_read_image(p, channels) for p in images]
    targets = [(out_dir / f"{p.stem}_mask.png", out_dir / f"{p.stem}_overlay.png") for p in images]
    for pair in targets:
        for t in pair:
            check_output_path(t, images, force=force, what="output")
    for path, img, (mask_path, overlay_path) in zip(images, arrays, targets):
        x = torch.from_numpy(img).float().div(255)
        x = x.permute(2, 0, 1) if x.ndim == 3 else x.unsqueeze(0)
        x = ((x - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)).unsqueeze(0)
        with torch.inference_mode():
            mask = predict_logits(model, x, window).argmax(1)[0].numpy().astype(np.uint8)
        rgb = img if img.ndim == 3 else np.repeat(img[..., None], 3, axis=2)
        save_png(mask, mask_path, palette_of=model.spec["num_classes"])
        save_png(overlay(rgb, mask.astype(np.int64)), overlay_path)
        names = json.loads(meta["class_names"]) if "class_names" in meta else None
        found = [names[c] if names else str(c) for c in np.unique(mask)]
        yield f"{path} -> {overlay_path} ({', '.join(found)})"
