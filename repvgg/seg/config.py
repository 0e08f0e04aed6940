"""Segmentation recipes (repvgg/recipes/seg_*.yaml): defaults < recipe < command-line overrides, checked."""
from __future__ import annotations

import os
from pathlib import Path

import yaml

from ..train.config import RECIPE_DIR, apply_overrides

SEG_RECIPES = ("scenes", "cityscapes")
SEG_RUN_FILES = ("config.yaml", "last.safetensors", "last.state.pt", "best.safetensors", "deploy.safetensors",
                 "metrics.jsonl", "metrics.csv", "curves.png", "train.log", "summary.json", "samples.png")


def _read(path: Path) -> dict:
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"recipe {path}: expected a mapping of settings, got {type(data).__name__}")
    return data


def load_seg_recipe(recipe: str | os.PathLike = "scenes") -> dict:
    cfg = _read(RECIPE_DIR / "seg_scenes.yaml")
    s = str(recipe)
    if s in SEG_RECIPES:
        path = RECIPE_DIR / f"seg_{s}.yaml"
    else:
        path = Path(s).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"segmentation recipe {s!r} is neither built in ({', '.join(SEG_RECIPES)}) "
                                    "nor an existing YAML file")
    data = _read(path)
    unknown = sorted(set(data) - set(cfg))
    if unknown:
        raise ValueError(f"recipe {path}: unknown setting(s) {unknown}; known: {sorted(cfg)}")
    cfg.update(data)
    cfg["recipe"] = s
    return cfg


def resolve_seg_config(recipe="scenes", overrides: dict | None = None) -> dict:
    return check_seg_config(apply_overrides(load_seg_recipe(recipe), overrides))


def check_seg_config(cfg: dict) -> dict:
    from .models import list_segmenters

    def number(key, kind=(int, float), low=0.0, strict=True):
        v = cfg[key]
        if isinstance(v, bool) or not isinstance(v, kind) or (v <= low if strict else v < low):
            raise ValueError(f"{key} must be a number {'>' if strict else '>='} {low:g}, got {v!r}")

    if cfg["model"] not in list_segmenters():
        raise ValueError(f"unknown segmenter {cfg['model']!r}; e.g. pspnet_repvgg_a0, pspnet_repvgg_b1g2_fast, "
                         "pspnet_resnet18 (repvgg.seg.list_segmenters())")
    for key in ("epochs", "batch_size", "head_channels"):
        number(key, int)
    for key in ("lr", "power"):
        number(key)
    for key in ("momentum", "weight_decay", "aux_weight"):
        number(key, strict=False)
    if cfg["time_budget_min"] is not None:
        number("time_budget_min")
    if cfg["crop_size"] is not None:
        number("crop_size", int)
    scenes = cfg.get("scenes")
    if scenes is not None:
        from .scenes import DEFAULTS

        if not isinstance(scenes, dict) or set(scenes) - set(DEFAULTS):
            raise ValueError(f"scenes must be a mapping with keys among {sorted(DEFAULTS)}, got {scenes!r}")
    sc = cfg["scale"]
    if not (isinstance(sc, (list, tuple)) and len(sc) == 2 and 0 < sc[0] <= sc[1]):
        raise ValueError(f"scale must be [low, high] with 0 < low <= high, got {sc!r}")
    split = cfg["val_split"]
    if isinstance(split, bool) or not isinstance(split, (int, float)) or not 0 <= split < 1:
        raise ValueError(f"val_split must be a fraction in [0, 1), got {split!r}")
    if cfg.get("block", "repvgg") != "repvgg":   # runs saved before 'block' existed have none
        from ..blocks import get_block_spec
        from .models import RESNETS

        get_block_spec(cfg["block"])   # an unknown variant is named there
        if cfg["model"].removeprefix("pspnet_") in RESNETS:
            raise ValueError(f"block {cfg['block']!r} is a RepVGG block variant; {cfg['model']} has a ResNet backbone")
    if cfg["optimizer"] not in ("sgd", "adamw"):
        raise ValueError(f"optimizer must be sgd or adamw, got {cfg['optimizer']!r}")
    if cfg["amp"] not in (True, False, "auto", "bf16", "fp16"):
        raise ValueError(f"amp must be true/false/auto/bf16/fp16, got {cfg['amp']!r}")
    return cfg
