"""Save and load RepVGG weights: safetensors or weights-only .pth, any known key naming, either form.

Loading never runs code from the file (safetensors, or ``torch.load(weights_only=True)``). The key
naming (ours, the official release, timm, mmpretrain) and the form (train-time branches or fused
deploy convs) are detected from the keys, so a user points at a file and gets a model. A
train-time checkpoint loaded into a deploy model is fused on the way in, block by block in
float64; a deploy checkpoint cannot go into a train-time model (a fused conv has no unique split).
"""
from __future__ import annotations

import argparse
import json
import pickle
import re
from collections.abc import Mapping
from os import PathLike
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

from .archs import ARCHS
from .blocks import BLOCKS, BlockSpec
from .fileio import atomic_write
from .keymaps import detect_naming, to_ours
from .reparam import FUSABLE

FORMAT_NAME = "repvgg"
# Containers that training frameworks put the weights in, tried in this order.
WRAPPER_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema", "module")
_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP, torch.compile
_SHOW = 5  # how many mismatched keys an error lists


class CheckpointError(ValueError):
    """The file is not a readable checkpoint, or its weights do not fit the model."""


# ----------------------------------------------------------------------------------------- save
def save_checkpoint(
    model: nn.Module | Mapping, path: str | PathLike, metadata: Mapping | None = None, fmt: str | None = None
) -> Path:
    """Write the weights to ``path`` atomically: safetensors, or .pth/.pt via ``torch.save``.

    ``fmt`` ("safetensors" or "pth") defaults to the one the extension names, else safetensors.
    The file says what it holds: format name, repvgg version, ``build_args`` (what rebuilds the
    model) and whether it is deployed. A .pth file is ``{"state_dict": tensors, "metadata": strs}``.
    A failure leaves no partial file and never clobbers an existing one.
    """
    from . import __version__

    path = Path(path)
    fmt = fmt or format_from_suffix(path) or "safetensors"
    if fmt not in ("safetensors", "pth"):
        raise ValueError(f"unknown checkpoint format {fmt!r}; use 'safetensors' or 'pth'")
    state = model if isinstance(model, Mapping) else model.state_dict()
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    meta = {"format": FORMAT_NAME, "repvgg_version": __version__, "deployed": json.dumps(is_deploy_form(tensors))}
    build_args = getattr(model, "build_args", None)
    if build_args:
        _check_build_args(build_args, tensors, path)
        meta["build_args"] = json.dumps(build_args, default=_jsonable, sort_keys=True)
    for k, v in (metadata or {}).items():
        meta[str(k)] = v if isinstance(v, str) else json.dumps(v, default=_jsonable)

    def write(tmp: str) -> None:
        if fmt == "safetensors":
            save_file(tensors, tmp, metadata=meta)
        else:
            torch.save({"state_dict": tensors, "metadata": meta}, tmp)

    atomic_write(path, write)
    return path


def _check_build_args(build_args: Mapping, tensors: Mapping, path: Path) -> None:
    """Refuse metadata that would not rebuild these weights (a model changed behind create_model's back).

    The model the metadata describes is built on the meta device (shapes only, no memory) and its
    state dict compared with the one being saved.
    """
    from .build import build_model   # construction only: build does not import checkpoint

    if "name" not in build_args:
        return
    sd = _strip_prefixes(dict(tensors))
    with torch.device("meta"):
        ref = build_model(**build_args, deploy=is_deploy_form(sd)).state_dict()
    bad = [k for k in ref if k not in sd or tuple(sd[k].shape) != tuple(ref[k].shape)]
    bad += [k for k in sd if k not in ref]
    if bad:
        k = bad[0]
        got = tuple(sd[k].shape) if k in sd else "absent"
        want = tuple(ref[k].shape) if k in ref else "absent"
        raise CheckpointError(
            f"not writing {path}: the model's build_args {dict(build_args)} would rebuild a different model "
            f"({len(bad)} tensors differ; first {k}: weights {got}, rebuilt {want}). Change a model through "
            "its API (reset_classifier, repvgg.deploy.prune_model) so that its build_args follow, or save "
            "model.state_dict() to write the weights without build_args")


def _jsonable(obj):
    if isinstance(obj, BlockSpec):
        return obj.name if BLOCKS.get(obj.name) == obj else str(obj)
    if isinstance(obj, (tuple, set)):
        return list(obj)
    return str(obj)


# ----------------------------------------------------------------------------------------- read
def read_checkpoint(path: str | PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """``(state_dict, metadata)`` of a file: wrappers and ``module.`` prefixes removed, naming kept."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, not a checkpoint file (give the .safetensors/.pth file in it)")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    fmt = _sniff_format(path)
    try:
        if fmt == "safetensors":
            with safe_open(str(path), framework="pt", device="cpu") as f:
                raw_meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        else:
            # timm's train.py stores its argparse.Namespace; rebuilding one sets attributes, runs no code
            # a file object, not the path: torch.load picks its reader from a path's extension, and a
            # .pth renamed to .safetensors must still load as what its bytes are
            with torch.serialization.safe_globals([argparse.Namespace]), open(path, "rb") as f:
                obj = torch.load(f, map_location="cpu", weights_only=True)
            tensors, raw_meta = _unwrap(obj, path)
    except CheckpointError:
        raise
    except pickle.UnpicklingError as e:
        # torch's wording changes between versions ("Unsupported global: GLOBAL x", "unsupported GLOBAL
        # x whose module y is blocked"); both name the refused callable after the word GLOBAL
        refused = re.search(r"\bGLOBAL\s+([\w.]+)", str(e), flags=re.IGNORECASE)
        if refused:
            raise CheckpointError(
                f"{path} holds Python objects other than tensors and plain containers ({refused[1]}): loading them "
                "could run code, so they were refused and nothing from the file was executed. Re-save its "
                "state_dict with torch.save, or as .safetensors"
            ) from None
        raise CheckpointError(
            f"cannot read {path} as a {fmt} checkpoint: the file is truncated or corrupt (not a valid pickle)"
        ) from None
    except Exception as e:  # torch/safetensors/zip errors: one clear line instead of a deep traceback
        raise CheckpointError(
            f"cannot read {path} as a {fmt} checkpoint: the file is truncated or corrupt ({_short(e)})"
        ) from None
    if not tensors:
        raise CheckpointError(f"{path} holds no tensors")
    return _strip_prefixes(tensors), _parse_metadata(raw_meta)


def read_metadata(path: str | PathLike) -> dict:
    """The metadata saved with the file: ``build_args`` (dict), ``deployed`` (bool), version...

    Empty for files written by other tools.
    """
    return read_checkpoint(path)[1]


CHECKPOINT_SUFFIXES = {"safetensors": (".safetensors",), "pth": (".pth", ".pt", ".bin", ".ckpt", ".tar")}


def format_from_suffix(path: Path) -> str | None:
    suffix = path.suffix.lower()
    return next((fmt for fmt, suffixes in CHECKPOINT_SUFFIXES.items() if suffix in suffixes), None)


def _sniff_format(path: Path) -> str:
    """By content first (a renamed file still loads), by extension when the head says nothing."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{":  # safetensors: u64 header length, then JSON
        return "safetensors"  # checked first: a header length like 0x..80 starts with the pickle byte
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch zip archive / legacy pickle
        return "pth"
    return format_from_suffix(path) or "pth"


def _unwrap(obj, path: Path) -> tuple[dict, dict]:
    meta = {}
    for _ in range(3):
        if not isinstance(obj, Mapping):
            break
        if isinstance(obj.get("metadata"), Mapping):
            meta = dict(obj["metadata"])
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj), meta
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if isinstance(obj, Mapping):
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors, meta
        raise CheckpointError(f"{path} holds a dict without tensors (keys: {list(obj)[:8]})")
    raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")


def _strip_prefixes(sd: dict) -> dict:
    for prefix in _PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _parse_metadata(raw: Mapping) -> dict:
    meta = dict(raw)
    for key in ("build_args", "deployed", "int8"):
        if isinstance(meta.get(key), str):
            try:
                meta[key] = json.loads(meta[key])
            except json.JSONDecodeError:
                pass
    return meta


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


# ----------------------------------------------------------------------------------------- load
def load_checkpoint(model: nn.Module, path: str | PathLike, strict: bool = True) -> nn.Module:
    """Load a checkpoint of any supported format, naming and form into ``model``; return it.

    A train-time checkpoint loaded into a deploy model is fused on the way in. Raises
    :class:`CheckpointError` (a ValueError) for unreadable files and for weights that do not fit,
    listing the first mismatches and the zoo model the checkpoint looks like.
    """
    state_dict, _ = read_checkpoint(path)
    return load_state_dict(model, state_dict, strict=strict, source=str(path))


def load_state_dict(
    model: nn.Module, state_dict: Mapping, strict: bool = True, source: str = "state dict",
    allow_missing: tuple[str, ...] = (),
) -> nn.Module:
    """:func:`load_checkpoint` for an in-memory state dict (any naming, either form).

    ``allow_missing``: key prefixes of the model the checkpoint may lack (e.g. ``("head.",)``).
    A model of another kind (a torchvision net trained here) loads strictly under its own keys.
    """
    own = _strip_prefixes(dict(state_dict))
    if detect_naming(own) is None and set(own) == set(model.state_dict()):
        _check({k: tuple(v.shape) for k, v in model.state_dict().items()}, own, strict, f"checkpoint {source}", model)
        model.load_state_dict(own)
        return model
    sd, naming = normalize_state_dict(state_dict, source)
    target = model.state_dict()
    if not any(k.startswith("head.") for k in target):  # a backbone takes a classifier's weights
        sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
    renamed = "" if naming == "repvgg" else ", keys below renamed to repvgg naming"
    what = f"checkpoint {source} ({naming} naming, {'deploy' if is_deploy_form(sd) else 'train-time'} form{renamed})"
    deployed = {n: m for n, m in model.named_modules() if isinstance(m, FUSABLE) and m.deploy}
    if is_deploy_form(sd) and not is_deploy_form(target):
        raise CheckpointError(
            f"{what} holds fused deploy weights, but the model is in train-time form: a fused 3x3 conv "
            "cannot be split back into branches. Build the model with deploy=True, or load a train-time checkpoint."
        )
    if deployed and not is_deploy_form(sd):
        sd = _fuse_into_deploy(sd, deployed, target, strict, what, model, allow_missing)
    expected = {k: tuple(v.shape) for k, v in target.items()}
    _check(expected, sd, strict, what, model, allow_missing)
    model.load_state_dict(sd, strict=False)  # _check is the strict check, with clearer messages
    return model


def normalize_state_dict(state_dict: Mapping, source: str = "state dict") -> tuple[dict, str]:
    """``(state dict in our naming, detected naming)``; raises if no known naming matches."""
    sd = _strip_prefixes(dict(state_dict))
    naming = detect_naming(sd)
    if naming is None:
        raise CheckpointError(
            f"{source} does not look like a RepVGG checkpoint in any known naming (repvgg, official, timm, "
            f"mmpretrain); first keys: {', '.join(list(sd)[:_SHOW])}"
        )
    return to_ours(sd, naming), naming


def _fuse_into_deploy(sd, deployed, target, strict, what, model, allow_missing) -> dict:
    """Replace each deploy module's train-time keys in ``sd`` by the keys of its fused form.

    Each fused module (a RepVGG block, a Residual Reorg conv-BN layer) gets its train-time twin in
    float64, loads its branch weights, and is fused by the module's own ``fuse``, so loading and
    :func:`repvgg.reparameterize` share one piece of math and round once.
    """
    twins = {n: m.train_twin().double() for n, m in deployed.items()}
    expected = {k: tuple(v.shape) for k, v in target.items() if not _under(k, deployed)}
    for n, twin in twins.items():
        expected.update({f"{n}.{k}": tuple(v.shape) for k, v in twin.state_dict().items()})
    _check(expected, sd, strict, what, model, allow_missing)
    out = {k: v for k, v in sd.items() if not _under(k, deployed)}
    with torch.no_grad():
        for n, twin in twins.items():
            sub = {k[len(n) + 1:]: v for k, v in sd.items() if k.startswith(n + ".")}
            if not sub:  # strict=False and nothing for this module: leave it as it is
                continue
            twin.load_state_dict(sub, strict=strict)
            dtype = next(iter(deployed[n].parameters())).dtype
            out.update({f"{n}.{k}": v.to(dtype) for k, v in twin.eval().fuse().state_dict().items()})
    return out


def _under(key: str, prefixes) -> bool:
    return any(key.startswith(p + ".") for p in prefixes)


def _check(expected: dict, sd: Mapping, strict: bool, what: str, model: nn.Module, allow_missing=()) -> None:
    missing = [k for k in expected if k not in sd and not k.startswith(tuple(allow_missing))]
    unexpected = [k for k in sd if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {expected[k]}"
        for k in expected if k in sd and tuple(sd[k].shape) != expected[k]
    ]
    if not shapes and (not strict or not (missing or unexpected)):
        return
    name = getattr(model, "build_args", {}).get("name", type(model).__name__)
    lines = [f"{what} does not fit the model ({name}):"]
    for label, items in (("shape mismatches", shapes), ("missing keys", missing), ("unexpected keys", unexpected)):
        if items:
            more = f", ... ({len(items) - _SHOW} more)" if len(items) > _SHOW else ""
            lines.append(f"  {label} ({len(items)}): {', '.join(items[:_SHOW])}{more}")
    lines.append(f"  {describe_checkpoint(sd)}")
    raise CheckpointError("\n".join(lines))


# ------------------------------------------------------------------------------- introspection
_BLOCK_RX = re.compile(r"^(stem|stages\.(\d+)\.(\d+))\.(conv3x3\.conv|fused)\.weight$")


def infer_arch(sd: Mapping) -> dict | None:
    """What a state dict in our naming is, from its shapes: widths, depths, groups, SE, classes."""
    weights = {}
    for k, v in sd.items():
        m = _BLOCK_RX.match(k)
        if m and v.dim() == 4:
            weights["stem" if m[1] == "stem" else (int(m[2]), int(m[3]))] = v.shape
    if "stem" not in weights:
        return None
    stages = sorted({i for i in (k[0] for k in weights if k != "stem")})
    if stages != [0, 1, 2, 3]:
        return None
    depths = tuple(max(j for i2, j in (k for k in weights if k != "stem") if i2 == i) + 1 for i in stages)
    widths = tuple(weights[(i, 0)][0] for i in stages)
    groups, in_ch = 1, weights["stem"][0]
    for i, depth in enumerate(depths):
        for j in range(depth):
            shape = weights.get((i, j))
            if shape is not None:
                groups = max(groups, in_ch // shape[1])
            in_ch = widths[i]
    head = sd.get("head.fc.weight")
    return dict(
        stem_width=weights["stem"][0], in_chans=weights["stem"][1], widths=widths, depths=depths,
        groups=groups, se=any(".se." in k for k in sd), deployed=is_deploy_form(sd),
        num_classes=head.shape[0] if head is not None else 0,
    )


def guess_model(sd: Mapping) -> str | None:
    """The zoo model whose shapes a state dict (our naming) has, or None."""
    info = infer_arch(sd)
    if info is None:
        return None
    for name, arch in ARCHS.items():
        if (arch.depths, arch.stem_width, arch.widths, arch.groups, arch.se) == (
            info["depths"], info["stem_width"], info["widths"], info["groups"], info["se"]
        ):
            return name
    return None


def describe_checkpoint(sd: Mapping) -> str:
    """One line for error messages: which zoo model the weights look like."""
    info = infer_arch(sd)
    if info is None:
        return "the checkpoint does not have the stem + 4 stages of a RepVGG"
    extra = f"{info['num_classes']} classes, {info['in_chans']} input channels"
    name = guess_model(sd)
    if name:
        return f"the checkpoint looks like {name} ({extra})"
    return (
        f"the checkpoint matches no zoo model: stem width {info['stem_width']}, widths {list(info['widths'])}, "
        f"depths {list(info['depths'])}, groups {info['groups']}, se={info['se']} ({extra})"
    )


def is_deploy_form(sd: Mapping) -> bool:
    """Fused ``fused.*`` keys and no train-time ``conv3x3.*`` keys."""
    keys = list(sd)
    return any(".fused." in k or k.startswith("fused.") for k in keys) and not any(
        ".conv3x3." in k or k.startswith("conv3x3.") for k in keys
    )
