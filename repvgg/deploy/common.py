"""What export, quantize and prune share: loading a model to deploy, atomic writes, real test
images, top-1 and CPU timing."""
from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..rebuild import model_from_checkpoint
from ..reparam import reparameterize


def load_model(checkpoint: str | os.PathLike, log: Callable[[str], None] = print, **overrides) -> nn.Module:
    """The model a checkpoint holds, fused and in eval mode (a train-time file is fused, with a note).

    ``overrides`` (``name``, ``num_classes``, ``small_input``...) go to ``create_model`` (files
    without metadata need them); a pruned file is rebuilt at its smaller widths.
    """
    from .. import checkpoint as ckpt

    path = Path(checkpoint)
    meta = ckpt.read_metadata(path) or {}
    if "segmenter" in meta:
        from ..seg.models import load_segmenter

        model = load_segmenter(path, deploy=True)
        if not json.loads(meta["segmenter"]).get("deployed"):
            log(f"note: {path.name} is a train-time segmenter checkpoint; re-parameterized its blocks and dropped "
                "the auxiliary head before deployment")
        model.checkpoint_meta = meta
        return model
    build_args = meta.get("build_args") if isinstance(meta.get("build_args"), dict) else {}
    if meta.get("pruned_widths") and "channels" not in build_args:   # written before widths were build args
        from .prune import load_pruned

        model = load_pruned(path)
        model.checkpoint_meta = meta
        name = overrides.get("name")
        if name is not None and model.build_args.get("name") != _canonical(name):
            raise ValueError(f"checkpoint {path} holds a pruned {model.build_args.get('name')}, not {name}")
        return model.eval()
    model = model_from_checkpoint(path, **overrides)
    if not getattr(model, "is_deployed", True):
        n = sum(1 for m in model.modules() if getattr(m, "deploy", None) is False)
        log(f"note: {path.name} is a train-time checkpoint; re-parameterized {n} blocks into "
            "single 3x3 convs before deployment")
        model = reparameterize(model)
    model.checkpoint_meta = meta
    return model.eval()


def _canonical(name: str) -> str:
    from ..archs import canonical_name

    return canonical_name(name)


def default_image_size(model: nn.Module) -> tuple[int, int]:
    """The size it was trained at (checkpoint metadata), else 28 for small-input models, 480 for a segmenter
    (its pyramid pooling bins divide 480 / 8), else 224."""
    args, meta = getattr(model, "build_args", {}), getattr(model, "checkpoint_meta", {})
    size = meta.get("image_size")
    if isinstance(size, str):
        size = int(size) if size.isdigit() else None
    segmenter = hasattr(model, "head") and hasattr(getattr(model, "head"), "bins")
    size = size or (28 if args.get("small_input") else 480 if segmenter else 224)
    return (size, size) if isinstance(size, int) else tuple(size)


def real_images(n: int, in_chans: int, size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """``n`` real Fashion-MNIST test images (the built-in subset, always offline), normalized and
    resized/channel-repeated to what the model takes: real statistics for the export checks."""
    from ..data import STATS
    from ..data.fashion_mnist import BUILTIN_DIR, load_split

    images, _ = load_split(BUILTIN_DIR, "test")
    idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n]
    x = images[idx].float().div(255)
    mean, std = STATS["fashion-mnist"]
    x = (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return x.repeat(1, in_chans, 1, 1) if in_chans != x.shape[1] else x


@torch.no_grad()
def top1(predict: Callable[[torch.Tensor], torch.Tensor], loader) -> float:
    """Top-1 accuracy in percent of ``predict`` (images -> logits) over a loader."""
    correct = total = 0
    for x, y in loader:
        correct += (torch.as_tensor(predict(x)).argmax(1) == y).sum().item()
        total += len(y)
    if total == 0:
        raise ValueError("evaluation set is empty")
    return 100.0 * correct / total


def time_interleaved(fns: dict[str, Callable[[], object]], repeats: int = 20, warmup: int = 3) -> dict[str, float]:
    """Median seconds per call of each function, timed round-robin so that load from other
    processes on a shared CPU hits every contender alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}
