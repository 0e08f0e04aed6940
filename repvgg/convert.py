"""Fuse a train-time checkpoint file (any naming) into a deploy checkpoint file, optionally verified.

Fusion runs in float64 and rounds once; with verification both forms run on the same random
input and nothing is written above :data:`TOLERANCE`.
"""
from __future__ import annotations

import copy
from os import PathLike
from pathlib import Path

import torch
import torch.nn as nn

from .checkpoint import build_args_for, is_deploy_form, load_state_dict, normalize_state_dict, read_checkpoint, save_checkpoint
from .factory import create_model
from .reparam import reparameterize

TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4}  # max relative error, fused vs train form


def fusion_error(train: nn.Module, deploy: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """``(max abs error, max abs error / max |train output|)`` of the two forms on ``x``."""
    with torch.no_grad():
        ref, out = train.eval()(x), deploy.eval()(x)
    abs_err = (out - ref).abs().max().item()
    return abs_err, abs_err / max(ref.abs().max().item(), 1e-30)


def convert_checkpoint(
    src: str | PathLike, dst: str | PathLike, model: str | None = None, num_classes: int | None = None,
    verify: bool = False, fmt: str | None = None, image_size: int = 64, seed: int = 0, **build_flags,
) -> dict:
    """Fuse a train-time checkpoint (any naming) into a deploy checkpoint at ``dst``.

    The model comes from ``model`` (a zoo name), else the file's metadata, else its shapes (said
    with a warning); ``num_classes`` and ``build_flags`` (``small_input``, ``in_chans``,
    ``output_stride``...) override what the file says. Fusion runs in float64 and rounds once.
    With ``verify``, both forms run on random input in float64 and float32; above
    :data:`TOLERANCE` nothing is written and the report has ``ok=False``. A checkpoint already in
    deploy form is rewritten in our naming. Returns a report dict.
    """
    sd, meta = read_checkpoint(src)
    ours, naming = normalize_state_dict(sd, str(src))
    overrides = {"name": model, "num_classes": num_classes, **build_flags}
    args = build_args_for(ours, meta, str(src), overrides)
    has_meta = isinstance(meta.get("build_args"), dict)
    source = "--model" if model is not None else "metadata" if has_meta else "shapes"
    report = dict(src=str(src), dst=str(dst), naming=naming, model=args["name"], model_from=source, ok=True,
                  errors={}, build_args=args)
    extra_meta = {"converted_from": Path(src).name, "source_naming": naming}
    if is_deploy_form(ours):
        deployed = load_state_dict(create_model(**args, deploy=True), ours, source=str(src))
        report["already_deployed"] = True
        save_checkpoint(deployed, dst, metadata=extra_meta, fmt=fmt)
        return report

    train = load_state_dict(create_model(**args), ours, source=str(src)).eval()
    train64 = copy.deepcopy(train).double()
    x = torch.randn(2, args["in_chans"], image_size, image_size, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(seed))
    fused64 = reparameterize(train64, inplace=not verify)  # raises NotConvertibleError, with the reason
    with torch.no_grad():
        ref64 = train64(x) if verify else None
    del train64
    fused = copy.deepcopy(fused64).to(next(train.parameters()).dtype)
    if verify:
        with torch.no_grad():
            abs64 = (fused64(x) - ref64).abs().max().item()
        report["errors"]["float64"] = (abs64, abs64 / max(ref64.abs().max().item(), 1e-30))
        report["errors"]["float32"] = fusion_error(train, fused, x.float())
        report["ok"] = all(rel <= TOLERANCE[getattr(torch, dt)] for dt, (_, rel) in report["errors"].items())
        if not report["ok"]:
            return report
    save_checkpoint(fused, dst, metadata=extra_meta, fmt=fmt)
    return report
