"""Pretrained ImageNet weights: the official RepVGG weights as republished by mmpretrain (mmcls v0).

The files are train-time checkpoints in mmpretrain naming; ``load_checkpoint`` maps and (for
``deploy=True``) fuses them. They are downloaded once into a cache directory (``REPVGG_CACHE``,
else ``$TORCH_HOME/hub/checkpoints``) and checked against the sha256 prefix in their file name.
A file already in the cache is used as is, which is also how to work offline.
"""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from .checkpoint import load_state_dict, normalize_state_dict, read_checkpoint
from .input_adapt import adapt_first_convs, stem_kernel_keys

BASE_URL = "https://download.openmmlab.com/mmclassification/v0/repvgg/"
_SHORT = "4xb64-coslr-120e_in1k"
_LONG = "4xb64-autoaug-lbs-mixup-coslr-200e_in1k"
# File names from the mmcls RepVGG README (../shared/paper/mmcls-repvgg-readme.md); no b2g2/b3g2.
PRETRAINED_FILES = {
    "repvgg_a0": f"repvgg-A0_3rdparty_{_SHORT}_20210909-883ab98c.pth",
    "repvgg_a1": f"repvgg-A1_3rdparty_{_SHORT}_20210909-24003a24.pth",
    "repvgg_a2": f"repvgg-A2_3rdparty_{_SHORT}_20210909-97d7695a.pth",
    "repvgg_b0": f"repvgg-B0_3rdparty_{_SHORT}_20210909-446375f4.pth",
    "repvgg_b1": f"repvgg-B1_3rdparty_{_SHORT}_20210909-750cdf67.pth",
    "repvgg_b1g2": f"repvgg-B1g2_3rdparty_{_SHORT}_20210909-344f6422.pth",
    "repvgg_b1g4": f"repvgg-B1g4_3rdparty_{_SHORT}_20210909-d4c1a642.pth",
    "repvgg_b2": f"repvgg-B2_3rdparty_{_SHORT}_20210909-bd6b937c.pth",
    "repvgg_b2g4": f"repvgg-B2g4_3rdparty_{_LONG}_20210909-7b7955f0.pth",
    "repvgg_b3": f"repvgg-B3_3rdparty_{_LONG}_20210909-dda968bf.pth",
    "repvgg_b3g4": f"repvgg-B3g4_3rdparty_{_LONG}_20210909-4e54846a.pth",
    "repvgg_d2se": f"repvgg-D2se_3rdparty_{_LONG}_20210909-cf3139b7.pth",
}

def cache_dir() -> Path:
    env = os.environ.get("REPVGG_CACHE")
    return Path(env) if env else Path(torch.hub.get_dir()) / "checkpoints"


def pretrained_path(name: str, download: bool = True) -> Path:
    """Local path of ``name``'s pretrained file, downloading (and hash-checking) it if needed."""
    if name not in PRETRAINED_FILES:
        raise ValueError(f"no pretrained weights are published for {name}; available: {', '.join(PRETRAINED_FILES)}")
    filename = PRETRAINED_FILES[name]
    path = cache_dir() / filename
    if path.is_file():
        return path
    if not download:
        raise FileNotFoundError(f"pretrained weights for {name} are not in the cache: {path}")
    url = BASE_URL + filename
    path.parent.mkdir(parents=True, exist_ok=True)
    hash_prefix = re.search(r"-([0-9a-f]{8,})\.pth$", filename)[1]
    try:
        torch.hub.download_url_to_file(url, str(path), hash_prefix=hash_prefix, progress=True)
    except Exception as e:  # offline, proxy, hash mismatch: say what to do instead
        raise RuntimeError(
            f"could not download the pretrained weights of {name} from {url} ({type(e).__name__}: {e}). "
            f"To work offline, put the file at {path} (or set REPVGG_CACHE to its folder)."
        ) from e
    return path


def load_pretrained(model: nn.Module, name: str) -> nn.Module:
    """Load ``name``'s ImageNet weights into ``model``; a head of another size is left untrained."""
    path = pretrained_path(name)
    sd, _ = read_checkpoint(path)
    sd, _ = normalize_state_dict(sd, str(path))
    in_chans = model.stem.in_channels if hasattr(model, "stem") else 3
    sd = adapt_first_convs(sd, in_chans, stem_kernel_keys(sd), str(path))     # ImageNet RGB -> gray etc.
    head, theirs = model.state_dict().get("head.fc.weight"), sd.get("head.fc.weight")
    if head is not None and theirs is not None and head.shape != theirs.shape:
        warnings.warn(
            f"{name}: the pretrained head has {theirs.shape[0]} classes, the model {head.shape[0]}; "
            "loading the backbone only, head.fc keeps its fresh initialization",
            stacklevel=3,
        )
        sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
        return load_state_dict(model, sd, source=str(path), allow_missing=("head.",))
    return load_state_dict(model, sd, source=str(path))


__all__ = ["PRETRAINED_FILES", "cache_dir", "pretrained_path", "load_pretrained"]
