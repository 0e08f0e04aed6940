"""Training: recipes, the loop (one CPU to torchrun), resumable state, EMA, metrics.

    from repvgg.train import prepare_run, train
    cfg = prepare_run("runs/a0", "small", {"model": "repvgg_a0", "epochs": 10})
    summary = train(cfg, "runs/a0")
"""
from .config import RECIPES, load_recipe, resolve_config
from .ema import ModelEma
from .grad_ckpt import GradCheckpointed
from .interrupt import TrainingInterrupted
from .loop import Trainer, train
from .optim import build_optimizer, build_scheduler, lr_factor, param_groups, scaled_lr
from .run_folder import finish_run, prepare_run

__all__ = ["RECIPES", "load_recipe", "resolve_config", "ModelEma", "GradCheckpointed", "Trainer",
           "TrainingInterrupted", "finish_run", "prepare_run", "train", "build_optimizer",
           "build_scheduler", "lr_factor", "param_groups", "scaled_lr"]
