"""Recipes: YAML files users can read, merged with command-line overrides, then checked.

Precedence: built-in defaults < recipe (name or file) < explicit overrides (CLI flags).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from ..archs import check_depths
from ..fileio import atomic_write_text
from ..tvmodels import is_tv_name

MODEL_DEPTHS = "model"  # `depths: model` / `--depths model`: the zoo model's own blocks per stage

RECIPE_DIR = Path(__file__).resolve().parent.parent / "recipes"
RECIPES = ("normal", "heavy", "small")


def recipe_path(recipe: str | os.PathLike) -> Path:
    """A recipe name (normal/heavy/small) or a YAML file path."""
    s = str(recipe)
    if s in RECIPES:
        return RECIPE_DIR / f"{s}.yaml"
    p = Path(s).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"recipe {s!r} is neither a built-in recipe ({', '.join(RECIPES)}) "
                                f"nor an existing YAML file")
    return p


def _defaults() -> dict:
    with open(RECIPE_DIR / "normal.yaml") as f:
        return yaml.safe_load(f)


def load_recipe(recipe: str | os.PathLike = "normal") -> dict:
    """The recipe's settings on top of the defaults (the normal recipe); unknown keys are an error."""
    cfg = _defaults()
    path = recipe_path(recipe)
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"recipe {path}: expected a mapping of settings, got {type(data).__name__}")
    unknown = sorted(set(data) - set(cfg))
    if unknown:
        raise ValueError(f"recipe {path}: unknown setting(s) {unknown}; known: {sorted(cfg)}")
    cfg.update(data)
    cfg["recipe"] = str(recipe)
    return cfg


AUGMENTATION_KEYS = ("aug", "crop_padding", "random_erasing")  # the settings that shape training images


def augmentation_kwargs(cfg: dict) -> dict:
    """``build_datasets`` kwargs for a config's (or a checkpoint's ``train_aug``) augmentation settings."""
    return {"recipe_aug": cfg.get("aug") or "simple", "crop_padding": cfg.get("crop_padding"),
            "erasing": float(cfg.get("random_erasing") or 0.0)}


def training_augmentation(meta: dict) -> dict:
    """``build_datasets`` kwargs for the augmentation a checkpoint was trained with.

    A fine-tune (after pruning, say) must see the images the model learned from: on Fashion-MNIST
    4 px crops instead of the recipe's 1 px cost a converged model 0.5 points in 3 epochs. Taken
    from the checkpoint's ``train_aug`` metadata, else its built-in recipe, else {} (the defaults).
    """
    raw = meta.get("train_aug")
    if raw:
        return augmentation_kwargs(json.loads(raw) if isinstance(raw, str) else dict(raw))
    if meta.get("recipe") in RECIPES:
        return augmentation_kwargs(load_recipe(meta["recipe"]))
    return {}


def resolve_config(recipe: str | os.PathLike = "normal", overrides: dict | None = None) -> dict:
    """Recipe + overrides (None values mean "not given" and are ignored), validated."""
    return check_config(apply_overrides(load_recipe(recipe), overrides))


def apply_overrides(cfg: dict, overrides: dict | None) -> dict:
    """Set each given override on ``cfg`` (None = not given); a key the recipe lacks is an error."""
    for k, v in (overrides or {}).items():
        if v is None:
            continue
        if k not in cfg:
            raise ValueError(f"unknown setting {k!r}; known: {sorted(cfg)}")
        cfg[k] = v
    return cfg


def check_config(cfg: dict) -> dict:
    def positive(key, kind=(int, float)):
        if not isinstance(cfg[key], kind) or isinstance(cfg[key], bool) or cfg[key] <= 0:
            raise ValueError(f"{key} must be a positive number, got {cfg[key]!r}")

    for key in ("epochs", "batch_size"):
        positive(key, int)
    positive("lr")
    cfg.setdefault("width", 1.0)  # runs saved before these settings existed
    cfg.setdefault("crop_padding", None)
    pad = cfg["crop_padding"]
    if pad is not None and (isinstance(pad, bool) or not isinstance(pad, int) or pad < 0):
        raise ValueError(f"crop_padding must be an int >= 0 or null (auto: size / 8), got {pad!r}")
    cfg.setdefault("random_erasing", 0.0)
    erase = cfg["random_erasing"]
    if isinstance(erase, bool) or not isinstance(erase, (int, float)) or not 0 <= erase <= 1:
        raise ValueError(f"random_erasing must be a probability in [0, 1], got {erase!r}")
    positive("width")
    cfg.setdefault("val_split", 0.0)     # runs saved before the split existed resume as they were
    cfg.setdefault("test_every_epoch", False)
    cfg.setdefault("repvggify", False)
    cfg.setdefault("custom_l2", False)
    split = cfg["val_split"]
    if isinstance(split, bool) or not isinstance(split, (int, float)) or not 0 <= split < 1:
        raise ValueError(f"val_split must be a fraction in [0, 1) of the training set, got {split!r}")
    cfg.setdefault("depths", None)  # null: the zoo model's blocks per stage
    if cfg["depths"] == MODEL_DEPTHS:  # an override back to the model's own (None means "not given")
        cfg["depths"] = None
    if cfg["depths"] is not None:
        cfg["depths"] = list(check_depths(cfg["depths"]))
    for key in ("weight_decay", "warmup_epochs", "label_smoothing", "mixup", "momentum"):
        if not isinstance(cfg[key], (int, float)) or cfg[key] < 0:
            raise ValueError(f"{key} must be a number >= 0, got {cfg[key]!r}")
    if cfg["label_smoothing"] >= 1:
        raise ValueError(f"label_smoothing must be < 1, got {cfg['label_smoothing']}")
    if cfg["optimizer"] not in ("sgd", "adamw"):
        raise ValueError(f"optimizer must be sgd or adamw, got {cfg['optimizer']!r}")
    if cfg["schedule"] not in ("cosine", "constant"):
        raise ValueError(f"schedule must be cosine or constant, got {cfg['schedule']!r}")
    if cfg["amp"] not in (True, False, "auto", "bf16", "fp16"):
        raise ValueError(f"amp must be true/false/auto/bf16/fp16, got {cfg['amp']!r}")
    if cfg["aug"] not in ("simple", "autoaugment", "none"):
        raise ValueError(f"aug must be simple, autoaugment or none, got {cfg['aug']!r}")
    if not 0 < cfg["ema_decay"] < 1:
        raise ValueError(f"ema_decay must be in (0, 1), got {cfg['ema_decay']}")
    if cfg["grad_clip"] is not None and cfg["grad_clip"] <= 0:
        raise ValueError(f"grad_clip must be > 0 or null, got {cfg['grad_clip']}")
    return cfg


def model_kwargs(cfg: dict) -> dict:
    """``create_model`` kwargs besides name/classes/channels. A torchvision model (``tv:NAME``) takes
    the stem and ``repvggify`` only: the zoo's width/depths/block settings of a recipe are not its."""
    if is_tv_name(cfg["model"]):
        return dict(small_input=cfg["small_input"], repvggify=bool(cfg.get("repvggify")), drop_rate=cfg["drop_rate"])
    if cfg.get("repvggify"):
        raise ValueError("--repvggify gives RepVGG branches to a torchvision model (--model tv:resnet18); "
                         f"{cfg['model']} has them already")
    return dict(block=cfg["block"], drop_rate=cfg["drop_rate"], **model_shape_kwargs(cfg))


def model_shape_kwargs(cfg: dict) -> dict:
    """The create_model kwargs a config fixes besides name/classes/channels: width, depths, stem."""
    return dict(width=cfg.get("width", 1.0), depths=cfg.get("depths"), small_input=cfg["small_input"])


def save_config(cfg: dict, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically."""
    atomic_write_text(path, yaml.safe_dump(cfg, sort_keys=False))


def read_config(path: str | os.PathLike) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


