"""A run's folder: what it holds, who may write it (prepare_run), and how a run ends (finish_run).

A folder holding another run is never overwritten unless asked (--resume or --overwrite). At the
end the best weights are fused into deploy.safetensors and both forms are evaluated side by side on
the full test set; a prediction changed by the fusion (beyond float ties) raises.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..checkpoint import model_from_checkpoint, read_metadata, save_checkpoint
from ..data import build_loader
from ..evaluate import compare_predictions, evaluate, format_report, save_confusion_png
from ..reparam import reparameterize
from .config import atomic_write_text, read_config, resolve_config

# files a run writes; --overwrite removes exactly these, never anything else in the folder
RUN_FILES = ("config.yaml", "last.safetensors", "last_ema.safetensors", "last.state.pt",
             "best.safetensors", "deploy.safetensors", "metrics.jsonl", "metrics.csv",
             "curves.png", "confusion.png", "train.log", "summary.json")
# settings that may differ on --resume without changing the result
RESUME_FREE = ("device", "workers", "data_dir", "threads")


def prepare_run(output, recipe="normal", overrides: dict | None = None, *, resume=False,
                overwrite=False) -> dict:
    """The config for this run, after checking the output folder.

    A folder holding another run is refused unless resume (continue it, with its saved config;
    an explicit flag that contradicts it is an error) or overwrite (its run files are removed).
    """
    out = Path(output)
    present = [f for f in RUN_FILES if (out / f).exists()]
    if resume:
        if not (out / "last.state.pt").is_file():
            raise FileNotFoundError(f"--resume: no resumable state in {out} (expected {out}/last.state.pt)")
        cfg = read_config(out / "config.yaml")
        for k, v in (overrides or {}).items():
            if k == "amp" and v == "auto":
                continue                           # the saved config holds what `auto` resolved to
            if v is not None and k not in RESUME_FREE and cfg.get(k) != v:
                raise ValueError(f"--resume continues {out} with its saved config; {k}={v!r} differs "
                                 f"from the saved {cfg.get(k)!r} (use a new --output to change it)")
            if v is not None and k in RESUME_FREE:
                cfg[k] = v
        return cfg
    cfg = resolve_config(recipe, overrides)
    is_main = int(os.environ.get("RANK", "0")) == 0      # under torchrun rank 0 alone judges the folder
    if present and not overwrite and is_main:
        raise FileExistsError(f"{out} already holds a run ({', '.join(present[:3])}...); use --resume to "
                              f"continue it, --overwrite to replace it, or another --output")
    return cfg


def clear_run(out: Path) -> None:
    """Remove exactly the files a run writes (--overwrite), nothing else in the folder."""
    for f in RUN_FILES:
        (out / f).unlink(missing_ok=True)


def finish_run(out: Path, test_ds, info, log=print, workers: int = 0) -> dict:
    """Fuse best.safetensors into deploy.safetensors and evaluate both forms on the full test set."""
    best_path = out / "best.safetensors"
    meta = read_metadata(best_path)
    trained = model_from_checkpoint(best_path).eval()
    deployed = reparameterize(trained)
    loader = build_loader(test_ds, 512, train=False, num_workers=workers)
    t = evaluate(trained, loader, info.num_classes, keep_outputs=True)
    d = evaluate(deployed, loader, info.num_classes, keep_outputs=True)
    labels = torch.as_tensor(test_ds.targets) if hasattr(test_ds, "targets") else torch.cat([y for _, y in loader])
    check = compare_predictions(t, d, labels)      # raises if fusion changed any non-tie prediction
    deploy_meta = {k: v for k, v in meta.items() if k not in ("build_args", "deployed", "format", "repvgg_version")}
    save_checkpoint(deployed, out / "deploy.safetensors", metadata=deploy_meta)
    save_confusion_png(d["confusion"], out / "confusion.png", info.class_names,
                       title=f"deploy model, {info.name} test: top-1 {d['top1']:.2f}%")
    summary = {"train_top1": t["top1"], "deploy_top1": d["top1"], "top5": d["top5"],
               "agreement_pct": check["agreement"], "flips": check["flips"], "tie_flips": check["tie_flips"],
               "max_logit_diff": check["max_logit_diff"], "test_images": d["n"], "best_epoch": meta.get("epoch"),
               "per_class": dict(zip(info.class_names, d["per_class"]))}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    log(f"best weights (epoch {meta.get('epoch')}): train-time top-1 {t['top1']:.2f}%  |  fused deploy "
        f"top-1 {d['top1']:.2f}%  |  identical predictions on {check['agreement']:.2f}% of {d['n']} "
        f"test images (max logit diff {check['max_logit_diff']:.2g})")
    if check["flips"]:
        log(f"  {check['flips']} prediction(s) differ, all near-ties (two best logits equal within "
            f"float rounding), which is why accuracy can move by at most that many images")
    log(format_report(d, info.class_names))
    log(f"wrote {out}/deploy.safetensors (fused), best.safetensors, last.*, metrics.csv/jsonl, "
        f"curves.png, confusion.png, train.log")
    return summary
