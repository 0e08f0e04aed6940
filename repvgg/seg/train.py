"""Training a segmenter: the classification run's pieces (run folder, resumable state, SIGTERM,
atomic writes, threads, parameter groups) around a segmentation step (CE ignoring 255 + 0.4 aux).

The poly schedule runs on steps; with ``time_budget_min`` the number of steps is fitted to the
budget from the measured step time (re-fitted after every step from the latest ones), so two
models compared "at the same CPU time" both end their schedule. The best epoch is picked on a validation split of the training
scenes; at the end the best weights are fused and both forms are scored on the test set.
"""
from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import torch

from ..checkpoint import read_metadata, save_checkpoint
from ..cpu_backend import TrainingKernels, cpu_training_backend
from ..fileio import atomic_write_text
from ..reparam import reparameterize
from ..threads import set_threads
from ..train.amp import amp_dtype, probe_cpu_amp, settle_auto
from ..train.config import save_config
from ..train.interrupt import StopFlag, TrainingInterrupted
from ..train.metrics import MetricsLog
from ..train.optim import param_groups
from ..train.run_folder import clear_run, load_last, prepare_run
from ..train.state import rng_state, save_state, seed_everything, set_rng_state
from .config import SEG_RUN_FILES, resolve_seg_config
from .data import build_seg_datasets, build_seg_loader, eval_transform, hold_out
from .metrics import evaluate_segmenter, format_scores, seg_loss
from .models import create_segmenter, load_segmenter

_CALIBRATION_STEPS = 12
_BUDGET_WINDOW = 50          # the step times a budget is re-fitted from (median of the latest)


def prepare_seg_run(output, recipe="scenes", overrides=None, *, resume=False, overwrite=False) -> dict:
    return prepare_run(output, recipe, overrides, resume=resume, overwrite=overwrite,
                       resolve=resolve_seg_config, run_files=SEG_RUN_FILES)


def poly_lr(base: float, step: int, total: int, power: float) -> float:
    return base * max(0.0, 1 - step / max(total, 1)) ** power


class SegTrainer:
    def __init__(self, cfg: dict, output, *, resume=False, overwrite=False, quiet=False):
        self.cfg, self.out, self.quiet = cfg, Path(output), quiet
        self._threads_note = set_threads(cfg.get("threads"))
        dev = cfg["device"]
        if dev == "auto":
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        if dev.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available")
        self.device = torch.device(dev)
        seed_everything(cfg["seed"], deterministic=self.device.type == "cpu")
        # the data first: a bad dataset is reported before anything is written
        train, self.test_ds, self.info = build_seg_datasets(
            cfg["data"], cfg["data_dir"], cfg["crop_size"], seed=cfg["seed"], num_classes=cfg["num_classes"],
            scale=tuple(cfg["scale"]), scenes=cfg.get("scenes"))
        self.train_ds, self.val_ds = hold_out(train, cfg["val_split"], cfg["seed"],
                                              eval_transform(self.info.mean, self.info.std))
        self.info.num_train = len(self.train_ds)
        self.loader = build_seg_loader(self.train_ds, cfg["batch_size"], train=True, seed=cfg["seed"],
                                       workers=cfg["workers"])
        self.steps_per_epoch = len(self.loader)
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(self.train_ds)} training images give no full batch of {cfg['batch_size']}; "
                             "lower --batch-size")
        self.model = create_segmenter(cfg["model"], self.info.num_classes, in_chans=self.info.in_chans,
                                      head_channels=cfg["head_channels"],
                                      backbone_checkpoint=cfg["backbone_checkpoint"],
                                      **({"block": cfg["block"]} if cfg.get("block", "repvgg") != "repvgg" else {})).to(self.device)
        groups = param_groups(self.model, cfg["weight_decay"])
        self.optimizer = (torch.optim.AdamW(groups, lr=cfg["lr"]) if cfg["optimizer"] == "adamw" else
                          torch.optim.SGD(groups, lr=cfg["lr"], momentum=cfg["momentum"]))
        self.total_steps = cfg["epochs"] * self.steps_per_epoch
        self.budget_s = 60 * cfg["time_budget_min"] if cfg["time_budget_min"] else None
        self.epoch, self.epoch_step, self.step, self.best, self.best_epoch = 0, 0, 0, -1.0, 0
        self.train_time = 0.0
        self.out.mkdir(parents=True, exist_ok=True)
        if overwrite and not resume:
            clear_run(self.out, SEG_RUN_FILES)
        save_config(cfg, self.out / "config.yaml")
        if resume:
            self._load_last()
        self.amp, self._amp_note = self._resolve_amp(resume)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        self.metrics = MetricsLog(self.out, resume_epoch=self.epoch if resume else None, metric="miou",
                                  metric_name="mIoU", train_metric_name="train pixel acc (augmented)")

    def _resolve_amp(self, resume: bool):
        """The autocast dtype; `auto` on a CPU is settled by timing this model's steps (see train.amp), saved."""
        cfg = self.cfg
        if not (cfg["amp"] == "auto" and self.device.type == "cpu" and not resume):
            return amp_dtype(cfg["amp"], self.device), ""
        size = self.test_ds[0][0].shape[-1] if cfg["crop_size"] is None else cfg["crop_size"]
        dtype, speedup, _ = probe_cpu_amp(self.model, (cfg["batch_size"], self.info.in_chans, size, size),
                                          self.info.num_classes, dense=True)
        note = settle_auto(cfg, dtype, speedup)
        save_config(cfg, self.out / "config.yaml")
        return dtype, note

    # ------------------------------------------------------------------ state
    def _meta(self, **extra) -> dict:
        return {"segmenter": json.dumps(self.model.spec), "dataset": self.info.name, "class_names": self.info.class_names,
                "mean": list(self.info.mean), "std": list(self.info.std), "recipe": self.cfg["recipe"],
                "scenes": json.dumps(self.cfg.get("scenes")),
                "image_size": str(self.test_ds[0][0].shape[-1]), **extra}

    def save_last(self) -> None:
        save_checkpoint(self.model, self.out / "last.safetensors", metadata=self._meta(step=str(self.step)))
        save_state(self.out / "last.state.pt", optimizer=self.optimizer.state_dict(), rng=[rng_state()],
                   epoch=self.epoch, epoch_step=self.epoch_step, step=self.step, best=self.best,
                   best_epoch=self.best_epoch, elapsed=self.train_time, total_steps=self.total_steps,
                   config=dict(self.cfg))

    def _load_last(self) -> None:
        st = load_last(self.model, self.out)
        self.optimizer.load_state_dict(st["optimizer"])
        self.epoch, self.epoch_step, self.step = st["epoch"], st["epoch_step"], st["step"]
        self.best, self.best_epoch, self.train_time = st["best"], st["best_epoch"], st["elapsed"]
        self.total_steps = st["total_steps"]
        set_rng_state(st["rng"][0])

    def log(self, msg: str) -> None:
        if not self.quiet:
            print(msg, flush=True)
        with open(self.out / "train.log", "a") as f:
            f.write(msg + "\n")

    # ------------------------------------------------------------------ training
    def run(self, stop_at_step: int | None = None) -> None:
        cfg, info = self.cfg, self.info
        if self.step == 0:
            plan = (f"{cfg['time_budget_min']:g} min of training steps" if self.budget_s else f"{cfg['epochs']} epochs")
            self.log(f"training {cfg['model']} on {info.name} [{info.origin}: {info.num_train} train / "
                     f"{len(self.val_ds) if self.val_ds else 0} val (held out of train, picks the best) / "
                     f"{info.num_test} test, {info.num_classes} classes] for {plan}, batch {cfg['batch_size']}, "
                     f"poly lr {cfg['lr']:g} power {cfg['power']:g}, device {self.device}")
        else:
            self.log(f"resuming {self.out} at epoch {self.epoch + 1}, step {self.step}")
        self.log(f"CPU threads: {self._threads_note}")
        if self._amp_note:
            self.log(self._amp_note)
        with StopFlag() as stop, cpu_training_backend(self.device, self.log) as kernels:
            while self.step < self.total_steps:
                self._train_epoch(stop, kernels, stop_at_step)

    def _train_epoch(self, stop: StopFlag, kernels: TrainingKernels, stop_at_step: int | None) -> None:
        from tqdm import tqdm

        cfg, dev = self.cfg, self.device
        self.model.train()
        self.loader.set_epoch(self.epoch)
        bar = tqdm(total=min(self.steps_per_epoch, self.total_steps - self.step + self.epoch_step), initial=self.epoch_step,
                   desc=f"epoch {self.epoch + 1}", disable=True if self.quiet else None, leave=False,
                   dynamic_ncols=True, file=sys.stderr)
        t_epoch, loss_sum, images, correct, seen, step_times = time.perf_counter(), 0.0, 0, 0, 0, []
        for i, (x, y) in enumerate(self.loader):
            if i < self.epoch_step:
                continue                   # resuming mid-epoch: the same batches, skipped
            if self.step >= self.total_steps:
                break
            t0 = time.perf_counter()
            x, y = x.to(dev), y.to(dev)
            for g in self.optimizer.param_groups:
                g["lr"] = poly_lr(cfg["lr"], self.step, self.total_steps, cfg["power"])
            with torch.autocast(dev.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
                out = self.model(x)
                loss = seg_loss(out, y, cfg["aux_weight"])
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {self.step}: lower --lr")
            self.optimizer.zero_grad(set_to_none=True)
            with kernels.backward():
                self.scaler.scale(loss).backward()  # a no-op scaler unless fp16
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.step += 1
            self.epoch_step = i + 1
            main = out[0] if isinstance(out, tuple) else out
            keep = y != 255
            correct += int((main.argmax(1) == y)[keep].sum())
            seen += int(keep.sum())
            loss_sum += float(loss.detach()) * len(y)
            images += len(y)
            dt = time.perf_counter() - t0
            self.train_time += dt
            step_times.append(dt)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / images:.3f}", pixel_acc=f"{100 * correct / max(1, seen):.1f}")
            if self.budget_s and self.step >= _CALIBRATION_STEPS:   # every step: a run may be one epoch or less
                self._fit_budget(step_times[-_BUDGET_WINDOW:])
            if stop.signum or (stop_at_step is not None and self.step >= stop_at_step):
                if self.step < self.total_steps:
                    bar.close()
                    self._interrupt(stop.signum)
        bar.close()
        self.epoch += 1
        self.epoch_step = 0
        self._end_epoch(loss_sum / max(1, images), 100 * correct / max(1, seen), time.perf_counter() - t_epoch)

    def _fit_budget(self, times: list[float]) -> None:
        """Steps left = time left / median step time: the poly schedule ends when the budget does."""
        recent = sorted(times[2:] or times)
        per_step = recent[len(recent) // 2]
        left = max(0.0, self.budget_s - self.train_time)
        self.total_steps = self.step + int(left / per_step)   # 0 more once the budget is spent: the run ends

    def _interrupt(self, signum: int):
        self.save_last()
        name = signal.Signals(signum).name if signum else "stop request"
        raise TrainingInterrupted(f"stopped by {name} at epoch {self.epoch + 1}, step {self.step}; resumable state "
                                  f"saved in {self.out}. Continue with: repvgg seg train --output {self.out} --resume",
                                  signum or 2)

    def _end_epoch(self, train_loss: float, train_acc: float, epoch_s: float) -> None:
        row = {"epoch": self.epoch, "step": self.step, "lr": self.optimizer.param_groups[0]["lr"],
               "train_loss": train_loss, "train_acc": train_acc, "train_time_s": self.train_time}
        if self.val_ds is not None:
            loader = build_seg_loader(self.val_ds, 32, train=False)
            res = evaluate_segmenter(self.model, loader, self.info.num_classes, self.device)
            row.update(val_miou=res["miou"], val_pixel_acc=res["pixel_acc"])
        score = row.get("val_miou", float(self.epoch))
        if score > self.best:
            self.best, self.best_epoch = score, self.epoch
            meta = self._meta(epoch=str(self.epoch))
            if "val_miou" in row:
                meta["val_miou"] = f"{row['val_miou']:.4f}"
            save_checkpoint(self.model, self.out / "best.safetensors", metadata=meta)
        row["epoch_s"] = epoch_s
        self.save_last()
        self.metrics.add(row)
        val = f"  val mIoU {row['val_miou']:.2f}%" if "val_miou" in row else ""
        self.log(f"epoch {self.epoch} (step {self.step}/{self.total_steps})  loss {train_loss:.4f}  train pixel acc "
                 f"{train_acc:.2f}%{val}  [{epoch_s:.0f}s, training {self.train_time / 60:.1f} min]")

    # ------------------------------------------------------------------ the end
    def finish(self) -> dict:
        return finish_seg_run(self.out, self.test_ds, self.info, self.log, train_time_s=self.train_time)


def finish_seg_run(out: Path, test_ds, info, log=print, train_time_s: float | None = None) -> dict:
    """Fuse best.safetensors; score both forms on the test set; deploy.safetensors only if they agree."""
    best = out / "best.safetensors"
    meta = read_metadata(best)
    trained = load_segmenter(best)
    deployed = reparameterize(trained)
    loader = build_seg_loader(test_ds, 32, train=False)
    t = evaluate_segmenter(trained, loader, info.num_classes, keep_predictions=True, class_names=info.class_names)
    d = evaluate_segmenter(deployed, loader, info.num_classes, keep_predictions=True, class_names=info.class_names)
    agree = 100 * float((t["predictions"] == d["predictions"]).double().mean())
    ok = agree >= 99.99 and abs(t["miou"] - d["miou"]) <= 0.01
    summary = {"train_miou": t["miou"], "deploy_miou": d["miou"], "pixel_acc": d["pixel_acc"], "mean_acc": d["mean_acc"],
               "per_class_iou": d["per_class_iou"], "pixel_agreement_pct": agree, "fusion_ok": ok,
               "best_epoch": meta.get("epoch"), "val_miou": meta.get("val_miou"), "test_images": len(test_ds),
               "train_time_s": train_time_s}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    log(f"best weights: epoch {meta.get('epoch')}" + (f", picked on the validation split (val mIoU "
                                                      f"{float(meta['val_miou']):.2f}%)" if meta.get("val_miou") else ""))
    log(f"test mIoU: train-time {t['miou']:.2f}%  |  fused deploy {d['miou']:.2f}%  ({len(test_ds)} test images); "
        f"identical labels on {agree:.4f}% of the pixels")
    log(format_scores(d))
    from .viz import save_samples

    save_samples(out / "samples.png", test_ds, d["predictions"], info)
    if not ok:
        log("FUSION CHECK FAILED: the fused segmenter's labels differ beyond float ties; deploy.safetensors was not "
            f"written; please report this with {out}/summary.json")
        return summary
    save_checkpoint(deployed, out / "deploy.safetensors",
                    metadata={**{k: v for k, v in meta.items() if k not in ("format", "repvgg_version", "deployed")},
                              "segmenter": json.dumps({**json.loads(meta["segmenter"]), "deployed": True})})
    log(f"wrote {out}/deploy.safetensors (fused, no aux head), best.safetensors, last.*, metrics.csv/jsonl, "
        "curves.png, samples.png, train.log, summary.json")
    return summary


def train_segmenter(cfg: dict, output, *, resume=False, overwrite=False, quiet=False,
                    stop_at_step: int | None = None) -> dict:
    """Train with ``cfg`` (see prepare_seg_run) into ``output``; return the summary (test mIoU of both forms)."""
    trainer = SegTrainer(cfg, output, resume=resume, overwrite=overwrite, quiet=quiet)
    trainer.run(stop_at_step)
    return trainer.finish()

