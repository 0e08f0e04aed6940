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

from .checkpoint import (format_from_suffix, is_deploy_form, load_state_dict, read_checkpoint,
                         save_checkpoint)
from .rebuild import build_args_for, state_in_our_naming
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
    verify: bool = False, fmt: str | None = None, image_size: int = 64, seed: int = 0, to: str = "repvgg",
    form: str = "deploy", **build_flags,
) -> dict:
    """Fuse a train-time checkpoint (any naming) into a deploy checkpoint at ``dst``.

    The model comes from ``model`` (a zoo name), else the file's metadata, else its shapes (said
    with a warning); ``num_classes`` and ``build_flags`` (``small_input``, ``in_chans``,
    ``output_stride``...) override what the file says. Fusion runs in float64 and rounds once.
    With ``verify``, both forms run on random input in float64 and float32; above
    :data:`TOLERANCE` nothing is written and the report has ``ok=False``. A checkpoint already in
    deploy form is rewritten in our naming. ``to`` writes another project's key naming instead
    (official, timm, mmpretrain: see :func:`write_foreign`), and ``form="train"`` keeps the
    branches (renamed, not fused) so their code can go on training. Returns a report dict.
    """
    if form not in ("deploy", "train"):
        raise ValueError(f"form must be 'deploy' or 'train', got {form!r}")
    sd, meta = read_checkpoint(src)
    ours, naming = state_in_our_naming(sd, meta, str(src))
    overrides = {"name": model, "num_classes": num_classes, **build_flags}
    args = build_args_for(ours, meta, str(src), overrides)
    has_meta = isinstance(meta.get("build_args"), dict)
    source = "--model" if model is not None else "metadata" if has_meta else "shapes"
    report = dict(src=str(src), dst=str(dst), naming=naming, model=args["name"], model_from=source, ok=True,
                  errors={}, build_args=args)
    extra_meta = {"converted_from": Path(src).name, "source_naming": naming}
    if to != "repvgg":
        check_exportable(args, to)
    if is_deploy_form(ours):
        if form == "train":
            raise ValueError(f"{src} is already fused: its branches cannot be recovered for --form train")
        deployed = load_state_dict(create_model(**args, deploy=True), ours, source=str(src))
        report["already_deployed"] = True
        _write(deployed, dst, to, fmt, extra_meta)
        return report

    train = load_state_dict(create_model(**args), ours, source=str(src)).eval()
    if form == "train":
        _write(train, dst, to, fmt, extra_meta)
        return report
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
    _write(fused, dst, to, fmt, extra_meta)
    return report


FOREIGN = ("official", "timm", "mmpretrain")


def check_exportable(build_args: dict, to: str) -> None:
    """Their code builds the zoo models only: other shapes or stems would load and compute wrongly."""
    if to not in FOREIGN:
        raise ValueError(f"unknown --to {to!r}; choose repvgg or one of {', '.join(FOREIGN)}")
    odd = {k: v for k, v in build_args.items()
           if (k in ("width", "channels", "depths") and v not in (None, 1, 1.0))
           or (k == "small_input" and v) or (k == "output_stride" and v != 32)
           or (k == "block" and v != "repvgg")}
    if odd:
        raise ValueError(f"the model was built with {odd}; {to}'s RepVGG has the zoo shapes, the stride-2 stem and "
                         "the paper's block only, so its code would load these weights wrongly or not at all")


def _write(model: nn.Module, dst, to: str, fmt: str | None, meta: dict) -> None:
    if to == "repvgg":
        save_checkpoint(model, dst, metadata=meta, fmt=fmt)
    else:
        write_foreign(model.state_dict(), dst, to, fmt)


def write_foreign(state_dict: dict, dst, to: str, fmt: str | None = None) -> Path:
    """Write our state dict in ``to``'s naming and file layout, loadable with their own loaders.

    official and timm: a plain ``{key: tensor}`` (.pth, or .safetensors for timm); mmpretrain: the
    ``{"meta", "state_dict"}`` of its runner. Atomic, like every file we write.
    """
    from safetensors.torch import save_file

    from .fileio import atomic_write
    from .keymaps import from_ours

    tensors = {k: v.detach().cpu().contiguous() for k, v in from_ours(state_dict, to).items()}
    fmt = fmt or format_from_suffix(Path(dst)) or "pth"
    if fmt == "safetensors":
        if to != "timm":
            raise ValueError(f"{to}'s loader reads torch.save files: write {to} checkpoints as .pth")
        atomic_write(dst, lambda tmp: save_file(tensors, tmp))
    else:
        obj = {"meta": {"converted_by": "repvgg"}, "state_dict": tensors} if to == "mmpretrain" else tensors
        atomic_write(dst, lambda tmp: torch.save(obj, tmp))
    return Path(dst)
