"""Rebuild the model a checkpoint holds: from its metadata, else from its weight shapes (said aloud).

``model_from_checkpoint(path)`` is what ``repvgg eval``, ``convert``, ``export`` and the training's
final check use; ``saved_shape`` lets ``create_model(name, checkpoint=...)`` take a pruned or resized
file's widths and its form.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping
from os import PathLike

import torch.nn as nn

from .archs import canonical_name
from .build import build_model
from .tvmodels import is_tv_name
from .checkpoint import (CheckpointError, describe_checkpoint, guess_model, infer_arch, is_deploy_form,
                         load_state_dict, normalize_state_dict, read_checkpoint)


class GuessedArchitectureWarning(UserWarning):
    """A file without our metadata: the model was inferred from its weight shapes (said, never silent)."""


# Build flags that change what a model computes without changing any weight's shape: a file
# without metadata cannot tell them, so a guess leaves them at their defaults and says so.
SHAPELESS_FLAGS = {"small_input": "small_input=False (a stride-2 stem; --small-input for a stride-1 one)",
                   "output_stride": "output_stride=32 (--output-stride 8/16 for a dilated backbone)"}


def model_from_checkpoint(path: str | PathLike, **overrides) -> nn.Module:
    """Build the model a checkpoint holds and load it.

    Uses the saved ``build_args`` when the file has our metadata, else the zoo model its shapes
    match (any naming; a :class:`GuessedArchitectureWarning` says what was guessed).
    ``overrides`` go to :func:`repvgg.create_model` (``deploy=True`` fuses a train-time
    checkpoint on the way in; ``small_input=True`` for a file saved without metadata).
    """
    sd, meta = read_checkpoint(path)
    if meta.get("int8"):
        raise CheckpointError(f"{path} holds an INT8 program (fp32 weights + calibration statistics), not a model "
                              "checkpoint; load it with repvgg.deploy.quantize_pt2e.load_int8")
    ours, _ = state_in_our_naming(sd, meta, str(path))
    deploy = overrides.pop("deploy", None)
    args = build_args_for(ours, meta, str(path), overrides)
    model = build_model(**args, deploy=is_deploy_form(ours) if deploy is None else deploy)
    return load_state_dict(model, ours, source=str(path))


def state_in_our_naming(sd: Mapping, meta: Mapping, source: str) -> tuple[dict, str]:
    """``(state dict, naming)``: a zoo checkpoint renamed to our keys; a torchvision model's as it is."""
    args = meta.get("build_args")
    if isinstance(args, dict) and is_tv_name(args.get("name", "")):
        return dict(sd), "torchvision"
    return normalize_state_dict(sd, source)


def saved_shape(ours: Mapping, meta: Mapping, name: str, width, channels, depths, deploy):
    """``(width, channels, depths, deploy)`` for ``create_model(name, checkpoint=...)``, from the
    file's state dict as :func:`state_in_our_naming` gives it and its metadata.

    What the caller left unset comes from the file: the form (train-time or fused), and the widths
    and depths its metadata records for this same model (a pruned or resized one), so every
    checkpoint repvgg writes loads through ``create_model`` as well.
    """
    if deploy is None:
        deploy = is_deploy_form(ours)
    saved = meta.get("build_args")
    if isinstance(saved, dict) and saved.get("name") == name and width == 1 and channels is None and depths is None:
        width, channels, depths = saved.get("width", 1.0), saved.get("channels"), saved.get("depths")
    return width, channels, depths, deploy


def build_args_for(sd_ours: Mapping, meta: Mapping, source: str, overrides: Mapping | None = None) -> dict:
    """``create_model`` kwargs for a checkpoint: its metadata, else inferred from its shapes.

    ``overrides`` (a model name, ``num_classes``, ``small_input``...) win over both. What is
    inferred from shapes is announced with a :class:`GuessedArchitectureWarning`, naming the flags
    that no shape reveals.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if "name" in overrides and not is_tv_name(overrides["name"]):
        overrides["name"] = canonical_name(overrides["name"])
    saved = meta.get("build_args")
    if isinstance(saved, dict) and "name" in saved:
        return {**saved, **overrides}
    info = infer_arch(sd_ours)
    name = overrides.get("name") or guess_model(sd_ours)
    if name is None or info is None:
        raise CheckpointError(
            f"{source} has no repvgg metadata and {describe_checkpoint(sd_ours)}; build the model with "
            "create_model(name, ...) and call load_checkpoint(model, path)"
        )
    args = {"name": name, "num_classes": info["num_classes"], "in_chans": info["in_chans"], **overrides}
    guessed = [k for k in ("name", "num_classes", "in_chans") if k not in overrides]
    unsaid = [flag for key, flag in SHAPELESS_FLAGS.items() if key not in overrides]
    if guessed or unsaid:
        seen = ", ".join(f"{k}={args[k]!r}" for k in guessed) or "nothing"
        warnings.warn(
            f"{source} has no repvgg metadata: inferred from its weight shapes {seen}"
            + (f"; not visible in weights, so left at the default: {'; '.join(unsaid)}" if unsaid else ""),
            GuessedArchitectureWarning, stacklevel=3,
        )
    return args
