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

from ..checkpoint import load_checkpoint, read_metadata, save_checkpoint
from ..rebuild import model_from_checkpoint
from ..data import build_loader
from ..evaluate import compare_predictions, evaluate, format_report, save_confusion_png
from ..reparam import reparameterize
from ..fileio import atomic_write_text
from .config import MODEL_DEPTHS, read_config, resolve_config
from .state import load_state

# files a run writes; --overwrite removes exactly these, never anything else in the folder
RUN_FILES = ("config.yaml", "last.safetensors", "last_ema.safetensors", "last.state.pt",
             "best.safetensors", "deploy.safetensors", "metrics.jsonl", "metrics.csv",
             "curves.png", "confusion.png", "train.log", "summary.json")
# settings that may differ on --resume without changing the result
RESUME_FREE = ("device", "workers", "data_dir", "threads")


def prepare_run(output, recipe="normal", overrides: dict | None = None, *, resume=False,
                overwrite=False, resolve=resolve_config, run_files=RUN_FILES) -> dict:
    """The config for this run, after checking the output folder.

    A folder holding another run is refused unless resume (continue it, with its saved config;
    an explicit flag that contradicts it is an error) or overwrite (its run files are removed).
    ``resolve``/``run_files``: the recipe resolver and the files of another kind of run (segmentation).
    """
    out = Path(output)
    present = [f for f in run_files if (out / f).exists()]
    if resume:
        if not (out / "last.state.pt").is_file():
            raise FileNotFoundError(f"--resume: no resumable state in {out} (expected {out}/last.state.pt)")
        cfg = read_config(out / "config.yaml")
        for k, v in (overrides or {}).items():
            if k == "amp" and v == "auto":
                continue                           # the saved config holds what `auto` resolved to
            if k == "depths" and v == MODEL_DEPTHS:
                v = None                           # saved resolved: `model` is stored as null
            if v is not None and k not in RESUME_FREE and cfg.get(k) != v:
                raise ValueError(f"--resume continues {out} with its saved config; {k}={v!r} differs "
                                 f"from the saved {cfg.get(k)!r} (use a new --output to change it)")
            if v is not None and k in RESUME_FREE:
                cfg[k] = v
        return cfg
    cfg = resolve(recipe, overrides)
    is_main = int(os.environ.get("RANK", "0")) == 0      # under torchrun rank 0 alone judges the folder
    if present and not overwrite and is_main:
        raise FileExistsError(f"{out} already holds a run ({', '.join(present[:3])}...); use --resume to "
                              f"continue it, --overwrite to replace it, or another --output")
    return cfg


def load_last(model, out: Path) -> dict:
    """Load ``out/last.safetensors`` into ``model`` and return ``out/last.state.pt``; a pair from two
    different steps (a crash between the two writes) is refused."""
    st = load_state(out / "last.state.pt")
    load_checkpoint(model, out / "last.safetensors")
    if read_metadata(out / "last.safetensors").get("step") != str(st["step"]):
        raise ValueError(f"{out}: last.safetensors and last.state.pt are from different steps")
    return st


def clear_run(out: Path, run_files=RUN_FILES) -> None:
    """Remove exactly the files a run writes (--overwrite), nothing else in the folder."""
    for f in run_files:
        (out / f).unlink(missing_ok=True)


def finish_run(out: Path, test_ds, info, log=print, workers: int = 0, final: Path | None = None) -> dict:
    """Fuse best.safetensors into deploy.safetensors; evaluate both forms (and the final epoch) on the test set.

    Everything is written before the fusion is judged: a run that finished training never ends in a
    crash. A fusion that fails its check (see :func:`repvgg.evaluate.compare_predictions`) leaves
    ``fusion_ok: false`` and the reason in summary.json and no deploy.safetensors.
    """
    best_path = out / "best.safetensors"
    meta = read_metadata(best_path)
    trained = model_from_checkpoint(best_path).eval()
    deployed = reparameterize(trained)
    loader = build_loader(test_ds, 512, train=False, num_workers=workers)
    t = evaluate(trained, loader, info.num_classes, keep_outputs=True)
    d = evaluate(deployed, loader, info.num_classes, keep_outputs=True)
    labels = torch.as_tensor(test_ds.targets) if hasattr(test_ds, "targets") else torch.cat([y for _, y in loader])
    check = compare_predictions(t, d, labels)
    final_top1 = t["top1"]
    if final is not None and final.is_file() and read_metadata(final).get("epoch") != meta.get("epoch"):
        final_top1 = evaluate(model_from_checkpoint(final).eval(), loader, info.num_classes)["top1"]
    summary = {"train_top1": t["top1"], "deploy_top1": d["top1"], "top5": d["top5"],
               "final_epoch_top1": final_top1, "best_epoch": meta.get("epoch"),
               "val_top1": float(meta["val_top1"]) if meta.get("val_top1") else None,   # metadata holds strings
               "selection": "validation split" if meta.get("val_top1") else "final epoch (no validation split)",
               "fusion_ok": check["ok"], "fusion_problem": check.get("reason"),
               "agreement_pct": check["agreement"], "agreement_away_from_ties_pct": check["agreement_away_from_ties"],
               "flips": check["flips"], "tie_flips": check["tie_flips"], "max_logit_diff": check["max_logit_diff"],
               "rel_logit_diff": check["rel_logit_diff"], "test_images": d["n"],
               "per_class": dict(zip(info.class_names, d["per_class"]))}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    save_confusion_png(d["confusion"], out / "confusion.png", info.class_names,
                       title=f"deploy model, {info.name} test: top-1 {d['top1']:.2f}%")
    picked = (f"epoch {meta.get('epoch')}, picked on the validation split: val top-1 {float(meta['val_top1']):.2f}%"
              if meta.get("val_top1") else f"epoch {meta.get('epoch')}, the final epoch (no validation split)")
    log(f"best weights ({picked})")
    log(f"test top-1: train-time {t['top1']:.2f}%  |  fused deploy {d['top1']:.2f}%  |  final epoch's weights "
        f"{final_top1:.2f}%  ({d['n']} test images)")
    log(f"fusion: max logit difference {check['max_logit_diff']:.2g} ({check['rel_logit_diff']:.1e} of the logits' "
        f"scale); identical predictions on {check['agreement']:.2f}% of the test images, "
        f"{check['agreement_away_from_ties']:.2f}% away from near-ties")
    if check["flips"]:
        log(f"  {check['flips']} prediction(s) differ, {check['tie_flips']} of them near-ties (two best logits equal "
            "within float rounding), so accuracy can move by at most that many images")
    log(format_report(d, info.class_names))
    if not check["ok"]:
        log(f"FUSION CHECK FAILED: {check['reason']}. deploy.safetensors was not written; the trained weights are "
            f"in {best_path} and last.*; please report this with {out}/summary.json")
        return summary
    deploy_meta = {k: v for k, v in meta.items() if k not in ("build_args", "deployed", "format", "repvgg_version")}
    save_checkpoint(deployed, out / "deploy.safetensors", metadata=deploy_meta)
    log(f"wrote {out}/deploy.safetensors (fused), best.safetensors, last.*, metrics.csv/jsonl, "
        f"curves.png, confusion.png, train.log, summary.json")
    return summary
