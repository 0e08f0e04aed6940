"""`repvgg eval`: a checkpoint on a dataset's test split, with a confusion-matrix PNG."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..checkpoint import read_metadata
from ..rebuild import model_from_checkpoint
from ..data import build_datasets, build_loader
from ..evaluate import evaluate, format_report, save_confusion_png
from ..reparam import reparameterize
from ..threads import set_threads


def _meta_value(meta: dict, key: str):
    v = meta.get(key)
    if isinstance(v, str):
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            return v
    return v


def evaluate_checkpoint(checkpoint, data: str, *, data_dir=None, deploy=False, image_size=None,
                        batch_size=512, device="cpu", output=None, quiet=False, threads=None, **overrides) -> dict:
    """Evaluate; raise ValueError when the data and the checkpoint disagree on classes/channels.

    ``overrides`` go to ``create_model`` (``name``, ``small_input``...: files without metadata).
    """
    path = Path(checkpoint)
    threads_note = set_threads(threads) if torch.device(device).type == "cpu" else None
    meta = read_metadata(path)
    size = image_size or _meta_value(meta, "image_size")
    _, test_ds, info = build_datasets(data, data_dir, size, recipe_aug="none")
    model = model_from_checkpoint(path, **overrides)
    n_cls, in_chans = model.num_classes, model.in_chans
    if n_cls != info.num_classes:
        raise ValueError(f"label-count mismatch: {path} was trained for {n_cls} classes but {data} has "
                         f"{info.num_classes} ({', '.join(info.class_names[:5])}...)")
    if in_chans != info.in_chans:
        raise ValueError(f"channel mismatch: {path} takes {in_chans}-channel images but {data} has "
                         f"{info.in_chans}")
    if deploy and not model.is_deployed:
        model = reparameterize(model)
    model.to(device).eval()
    loader = build_loader(test_ds, batch_size, train=False)
    res = evaluate(model, loader, info.num_classes, device)
    form = "deploy (fused)" if model.is_deployed else "train-time"
    out_dir = Path(output) if output else path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    png = save_confusion_png(res["confusion"], out_dir / f"confusion_{path.stem}{'_deploy' if deploy else ''}.png",
                             info.class_names, title=f"{path.name} ({form}) on {info.name}: "
                                                     f"top-1 {res['top1']:.2f}%")
    if not quiet:
        if threads_note:
            print(f"CPU threads: {threads_note}")
        print(f"{path} [{form}] on {info.name} test ({info.source}):")
        print(format_report(res, info.class_names))
        print(f"confusion matrix: {png}")
    res["png"] = str(png)
    return res
