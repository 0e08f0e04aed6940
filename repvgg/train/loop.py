"""The training loop: one function, `train(cfg, output)`, from one CPU to torchrun.

The run folder (prepare_run, finish_run) is in .run_folder, signal handling in .interrupt.

Nothing is lost: `last.*` is written every epoch (and on SIGINT/SIGTERM after the current
step), `best.safetensors` on improvement, all atomically; `--resume` continues bit-for-bit
(same batches, same augmentation, same RNG states). At the end the best weights are fused
into `deploy.safetensors`, and the train-time and deploy models are evaluated side by side on
the full test set; a difference beyond floating-point ties raises.
"""
from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checkpoint import load_checkpoint, save_checkpoint
from ..cpu_backend import TrainingKernels, cpu_training_backend
from ..data import build_datasets, build_loader, split_validation, train_subset
from ..evaluate import evaluate
from ..factory import create_model
from ..threads import set_threads
from . import distributed as D
from .amp import amp_dtype, probe_cpu_amp, settle_auto
from .config import AUGMENTATION_KEYS, augmentation_kwargs, model_kwargs, save_config
from .custom_l2 import covered_kernels, custom_l2, custom_l2_blocks
from .ema import ModelEma
from .grad_ckpt import GradCheckpointed
from .interrupt import StopFlag, TrainingInterrupted
from .metrics import MetricsLog
from .optim import build_optimizer, build_scheduler, scaled_lr
from .run_folder import clear_run, finish_run, load_last
from .state import rng_state, save_state, seed_everything, set_rng_state

_PRECISION = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}


def resolve_device(name: str, d: D.Dist) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available")
        return torch.device("cuda", d.local_rank if d.enabled else torch.cuda.current_device())
    if name != "cpu":
        raise ValueError(f"--device must be cpu, cuda or auto, got {name!r}")
    return torch.device("cpu")


def _meta(cfg: dict, info, **extra) -> dict:
    return {"dataset": info.name, "class_names": info.class_names, "image_size": info.image_size,
            "mean": list(info.mean), "std": list(info.std), "recipe": cfg.get("recipe"),
            "train_aug": {k: cfg.get(k) for k in AUGMENTATION_KEYS},
            # which training images were held out: later choices (INT8 layers to keep in float) use them too
            "val_split": {"fraction": cfg.get("val_split") or 0.0, "seed": cfg.get("seed")}, **extra}


class Trainer:
    """State of one run; `run()` trains, `finish()` fuses and checks the deploy model."""

    def __init__(self, cfg: dict, output, *, resume=False, overwrite=False, quiet=False):
        self.cfg, self.out, self.quiet = cfg, Path(output), quiet
        self.dist = D.setup("cuda" if cfg["device"].startswith("cuda") or (
            cfg["device"] == "auto" and torch.cuda.is_available()) else "cpu")
        # before anything is timed (the bf16 probe): oversubscribed threads run up to 10x slower
        self._threads_note = set_threads(cfg.get("threads"), processes=self.dist.world_size)
        self.device = resolve_device(cfg["device"], self.dist)
        if self.dist.enabled and self.device.type == "cpu" and cfg["amp"] not in (False, None, "auto"):
            # bf16 autocast under CPU DDP (gloo) gave intermittent NaN losses with torch 2.x (same
            # seed: sometimes fine, sometimes NaN); single-process bf16 and fp32 DDP are fine
            raise ValueError(f"--amp {cfg['amp']} under CPU DDP (torchrun, gloo) gave NaN losses in our tests; "
                             "train CPU DDP in fp32 (--no-amp) or bf16 in one process")
        if cfg["sync_bn"] and self.dist.enabled and self.device.type != "cuda":
            raise ValueError("sync_bn needs CUDA devices: torch's SyncBatchNorm has no CPU implementation; "
                             "on CPU each process keeps its own BN statistics (set sync_bn: false)")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        main = self.dist.is_main
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            if overwrite and not resume:
                clear_run(self.out)
            save_config(cfg, self.out / "config.yaml")
        D.barrier(self.dist)

        seed_everything(cfg["seed"], cfg["deterministic"])
        self.train_ds, self.test_ds, self.info = build_datasets(
            cfg["data"], cfg["data_dir"], cfg["image_size"], **augmentation_kwargs(cfg))
        self.val_ds = None
        if cfg["val_split"]:      # held out before any subset: the split is the same at any train_subset
            self.train_ds, self.val_ds = split_validation(self.train_ds, self.test_ds, cfg["val_split"], cfg["seed"])
        if cfg.get("train_subset"):
            self.train_ds = train_subset(self.train_ds, int(cfg["train_subset"]), cfg["seed"])
        self.info.num_train = len(self.train_ds)
        r, w = self.dist.rank, self.dist.world_size
        self.train_loader = build_loader(self.train_ds, cfg["batch_size"], train=True, seed=cfg["seed"],
                                         rank=r, world_size=w, num_workers=cfg["workers"])
        eval_on = {"val": self.val_ds, "test": self.test_ds if cfg["test_every_epoch"] else None}
        self.eval_loaders = {k: build_loader(ds, 512, train=False, rank=r, world_size=w, num_workers=cfg["workers"])
                             for k, ds in eval_on.items() if ds is not None}
        self.steps_per_epoch = len(self.train_loader)
        if self.steps_per_epoch == 0:
            raise ValueError(f"{self.info.num_train} training images give no full batch of "
                             f"{cfg['batch_size']} x {w} rank(s); lower --batch-size")

        self.model = create_model(cfg["model"], num_classes=self.info.num_classes, in_chans=self.info.in_chans,
                                  **model_kwargs(cfg)).to(self.device)
        # on the device before the optimizer exists: a resumed optimizer state follows its params there
        if w > 1:
            torch.manual_seed(cfg["seed"] + r)     # per-rank dropout/mixup streams (DDP syncs weights)
        self.global_batch = cfg["batch_size"] * w
        self.l2_blocks = custom_l2_blocks(self.model) if cfg["custom_l2"] else []
        if cfg["custom_l2"] and not self.l2_blocks:
            raise ValueError("--custom-l2 regularizes RepVGG blocks in train form (3x3 conv+BN, 1x1 conv+BN, identity "
                             f"BN); {cfg['model']} with block={cfg['block']!r} has none")
        self.optimizer = build_optimizer(self.model, cfg, self.global_batch, covered_kernels(self.l2_blocks))
        self.scheduler = build_scheduler(self.optimizer, cfg, self.steps_per_epoch)
        self.amp, self._amp_note = self._resolve_amp(resume)
        if self.amp is not None and self.dist.enabled and self.device.type == "cpu":
            if self.dist.is_main:    # `auto` only: an explicit dtype was refused above
                print("note: amp auto trains in fp32 under CPU DDP (gloo): bf16 gave NaN losses there", file=sys.stderr)
            self.amp = None
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        self.ema = ModelEma(self.model, cfg["ema_decay"]) if cfg["ema"] else None
        self.epoch, self.epoch_step, self.step, self.best, self.elapsed = 0, 0, 0, -1.0, 0.0
        self.best_epoch = 0
        if resume:
            self._load_last()
        self.model.to(self.device)
        if self.ema is not None:
            self.ema.to(self.device)
        if cfg["channels_last"]:
            self.model.to(memory_format=torch.channels_last)
            if self.ema is not None:      # same layout: the EMA update and its evaluation run faster
                self.ema.module.to(memory_format=torch.channels_last)
        net = GradCheckpointed(self.model) if cfg["grad_checkpointing"] else self.model
        if self.dist.enabled:
            if cfg["sync_bn"]:
                net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
            net = nn.parallel.DistributedDataParallel(
                net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.net = net
        self.mixup = None
        if cfg["mixup"] > 0:
            from torchvision.transforms import v2
            self.mixup = v2.MixUp(alpha=cfg["mixup"], num_classes=self.info.num_classes)
        self.log_file = self.out / "train.log"
        self.metrics = MetricsLog(self.out, resume_epoch=self.epoch if resume else None) if main else None

    def _resolve_amp(self, resume: bool):
        """The autocast dtype; `auto` on a CPU is settled by timing (see .amp) and saved."""
        cfg = self.cfg
        probe = (cfg["amp"] == "auto" and self.device.type == "cpu" and not self.dist.enabled
                 and not resume)          # an old run saved as `auto` resumes with what it used
        if not probe:
            return amp_dtype(cfg["amp"], self.device), ""
        size = self.info.image_size
        dtype, speedup, _ = probe_cpu_amp(self.model, (cfg["batch_size"], self.info.in_chans, size, size),
                                          self.info.num_classes, channels_last=cfg["channels_last"])
        note = settle_auto(cfg, dtype, speedup)
        if self.dist.is_main:
            save_config(cfg, self.out / "config.yaml")
        return dtype, note

    # ------------------------------------------------------------------ state
    def _load_last(self) -> None:
        st = load_last(self.model, self.out)
        self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        self.scaler.load_state_dict(st["scaler"])
        if self.ema is not None:
            load_checkpoint(self.ema.module, self.out / "last_ema.safetensors")
            self.ema.n_averaged.fill_(int(st["ema_n"]))
        self.epoch, self.epoch_step, self.step = st["epoch"], st["epoch_step"], st["step"]
        self.best, self.best_epoch, self.elapsed = st["best"], st["best_epoch"], st["elapsed"]
        world = st.get("world_size", 1)
        if world != self.dist.world_size:
            raise ValueError(f"the run was trained on {world} process(es); resume it with the same number "
                             f"(now {self.dist.world_size}) to keep its batches")
        # rank-specific RNG states
        set_rng_state(st["rng"][min(self.dist.rank, len(st["rng"]) - 1)])

    def save_last(self) -> None:
        """Weights (safetensors) first, then the state that names their step: a torn pair is detected."""
        rngs = [rng_state()]
        if self.dist.enabled:
            gathered = [None] * self.dist.world_size
            torch.distributed.all_gather_object(gathered, rngs[0])
            rngs = gathered
        if not self.dist.is_main:
            return
        meta = _meta(self.cfg, self.info, step=str(self.step), epoch=str(self.epoch))
        save_checkpoint(self.model, self.out / "last.safetensors", metadata=meta)
        if self.ema is not None:
            save_checkpoint(self.ema.module, self.out / "last_ema.safetensors", metadata=meta)
        save_state(self.out / "last.state.pt", optimizer=self.optimizer.state_dict(),
                   scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict(),
                   ema_n=int(self.ema.n_averaged) if self.ema is not None else 0,
                   rng=rngs, epoch=self.epoch, epoch_step=self.epoch_step, step=self.step,
                   best=self.best, best_epoch=self.best_epoch, elapsed=self.elapsed,
                   world_size=self.dist.world_size, config=dict(self.cfg))

    def log(self, msg: str) -> None:
        if not self.dist.is_main:
            return
        if not self.quiet:
            print(msg, flush=True)
        with open(self.log_file, "a") as f:
            f.write(msg + "\n")

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    # ------------------------------------------------------------------ training
    def run(self, stop_at_step: int | None = None) -> dict:
        cfg = self.cfg
        with StopFlag() as stop, cpu_training_backend(self.device, self.log) as kernels:
            self._log_start()
            while self.epoch < cfg["epochs"]:
                self._train_epoch(stop, kernels, stop_at_step)
        best_val = self.best if self.val_ds is not None else None
        return {"best_val_top1": best_val, "best_epoch": self.best_epoch, "elapsed_s": self.elapsed}

    def _log_start(self) -> None:
        cfg = self.cfg
        if self.epoch == 0 and self.epoch_step == 0:
            plain_tv = cfg["model"].startswith("tv:") and not cfg.get("repvggify")
            kind = "torchvision, as is" if plain_tv else f"{cfg['block']} blocks"
            self.log(f"training {cfg['model']} ({kind}) on {self.info.name} "
                     f"[{self.info.origin}: {self.info.num_train} train / {self.info.num_test} test, "
                     f"{self.info.image_size}px, {self.info.in_chans} ch] for {cfg['epochs']} epochs, "
                     f"{self.dist.world_size} x batch {cfg['batch_size']}, lr "
                     f"{scaled_lr(cfg['lr'], self.global_batch):.4g}, precision {_PRECISION[self.amp]}, "
                     f"device {self.device}")
            if self._amp_note:
                self.log(self._amp_note)
            self.log(self._selection_note())
        else:
            self.log(f"resuming {self.out} at epoch {self.epoch + 1}, step {self.step}")
        self.log(f"CPU threads per process: {self._threads_note}")

    def _selection_note(self) -> str:
        if self.val_ds is None:
            return ("model selection: none (val_split 0): best.safetensors is the final epoch's weights; "
                    "the test set is only used for the final report")
        return (f"model selection: on a validation split of {len(self.val_ds)} images held out of the training set "
                f"(val_split {self.cfg['val_split']:g}, stratified, seed {self.cfg['seed']}); the test set "
                f"({self.info.num_test} images) is never used to pick a checkpoint")

    def _interrupt(self, signum: int):
        self.save_last()
        name = signal.Signals(signum).name if signum else "stop request"
        raise TrainingInterrupted(
            f"stopped by {name} at epoch {self.epoch + 1}, step {self.step}; resumable state saved in "
            f"{self.out}. Continue with: repvgg train --output {self.out} --resume", signum or 2)

    def _train_epoch(self, stop: StopFlag, kernels: TrainingKernels, stop_at_step: int | None) -> None:
        from tqdm import tqdm

        cfg, dev = self.cfg, self.device
        self.net.train()
        self.train_loader.set_epoch(self.epoch)
        skip, t0 = self.epoch_step, time.perf_counter()
        self._t_epoch = t0
        loss_sum = torch.zeros((), dtype=torch.float64)
        correct, seen = 0, 0
        bar = tqdm(total=self.steps_per_epoch, initial=skip, desc=f"epoch {self.epoch + 1}/{cfg['epochs']}",
                   disable=(None if self.dist.is_main and not self.quiet else True), leave=False,
                   dynamic_ncols=True, file=sys.stderr)
        for i, (x, y) in enumerate(self.train_loader):
            if i < skip:                      # resuming mid-epoch: replay the loader to the same batch
                continue
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            if cfg["channels_last"]:
                x = x.contiguous(memory_format=torch.channels_last)
            target = y
            if self.mixup is not None:
                x, target = self.mixup(x, y)
            with torch.autocast(dev.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
                out = self.net(x)
                loss = F.cross_entropy(out.float(), target, label_smoothing=cfg["label_smoothing"])
                if self.l2_blocks:     # decay on the fused kernel (see .custom_l2), instead of on each branch
                    loss = loss + 0.5 * cfg["weight_decay"] * custom_l2(self.l2_blocks).float()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {self.step}: lower --lr, "
                                         f"or use --amp bf16 instead of fp16")
            self.optimizer.zero_grad(set_to_none=True)
            with kernels.backward():
                self.scaler.scale(loss).backward()
            if cfg["grad_clip"]:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg["grad_clip"])
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            self.step += 1
            self.epoch_step = i + 1
            loss_sum += loss.detach().double().cpu() * len(y)
            correct += int((out.argmax(1) == y).sum())
            seen += len(y)
            dt = time.perf_counter() - t0
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss_sum) / seen:.3f}", acc=f"{100 * correct / seen:.1f}",
                            img_s=f"{seen * self.dist.world_size / dt:.0f}")
            want_stop = bool(stop.signum) or (stop_at_step is not None and self.step >= stop_at_step)
            if D.any_rank(want_stop, self.dist, dev) and self.epoch_step < self.steps_per_epoch:
                bar.close()
                self.elapsed += time.perf_counter() - t0
                self._interrupt(stop.signum)
        bar.close()
        train_time = time.perf_counter() - t0
        self.epoch += 1
        self.epoch_step = 0
        self._end_epoch(loss_sum, correct, seen, train_time)
        want_stop = bool(stop.signum) or (stop_at_step is not None and self.step >= stop_at_step)
        if D.any_rank(want_stop, self.dist, dev) and self.epoch < cfg["epochs"]:
            self._interrupt(stop.signum)

    def _reduce(self, t: torch.Tensor) -> torch.Tensor:
        return D.all_reduce_sum(t.to(self.device), self.dist).cpu()

    def _end_epoch(self, loss_sum, correct, seen, train_time) -> None:
        cfg = self.cfg
        counts = self._reduce(torch.tensor([float(loss_sum), correct, seen], dtype=torch.float64))
        row = {"epoch": self.epoch, "step": self.step, "lr": self.optimizer.param_groups[0]["lr"],
               "train_loss": float(counts[0] / counts[2]), "train_acc": float(100 * counts[1] / counts[2]),
               "img_per_s": float(counts[2]) / max(train_time, 1e-9)}
        if self.epoch % cfg["eval_every"] == 0 or self.epoch == cfg["epochs"]:
            for split, loader in self.eval_loaders.items():
                res = evaluate(self.eval_model, loader, self.info.num_classes, self.device,
                               reduce=self._reduce if self.dist.enabled else None)
                row.update({f"{split}_loss": res["loss"], f"{split}_top1": res["top1"], f"{split}_top5": res["top5"]})
            # selected on the validation split; without one, the latest epoch is the best by definition
            score = row.get("val_top1", float(self.epoch))
            if score > self.best:
                self.best, self.best_epoch = score, self.epoch
                if self.dist.is_main:
                    meta = _meta(cfg, self.info, epoch=str(self.epoch), ema=json.dumps(self.ema is not None))
                    if "val_top1" in row:
                        meta["val_top1"] = f"{row['val_top1']:.4f}"
                    save_checkpoint(self.eval_model, self.out / "best.safetensors", metadata=meta)
        row["epoch_s"] = time.perf_counter() - self._t_epoch
        self.elapsed += row["epoch_s"]
        row["elapsed_s"] = self.elapsed
        self.save_last()
        if self.dist.is_main:
            self.metrics.add(row)
            msg = (f"epoch {self.epoch}/{cfg['epochs']}  loss {row['train_loss']:.4f}  "
                   f"train acc {row['train_acc']:.2f}%  {row['img_per_s']:.0f} img/s  lr {row['lr']:.4g}")
            for split in ("val", "test"):
                if f"{split}_top1" in row:
                    msg += f"  {split} top-1 {row[f'{split}_top1']:.2f}%"
            self.log(msg + f"  [{row['epoch_s']:.0f}s, total {self.elapsed / 60:.1f} min]")

    # ------------------------------------------------------------------ the end
    def finish(self) -> dict:
        """Rank 0: best weights -> fused deploy checkpoint; train-time and deploy top-1 must agree."""
        D.barrier(self.dist)
        summary = {}
        if self.dist.is_main:
            final = self.out / ("last_ema.safetensors" if self.ema is not None else "last.safetensors")
            summary = finish_run(self.out, self.test_ds, self.info, self.log, self.cfg["workers"], final=final)
        D.barrier(self.dist)
        D.teardown(self.dist)
        return summary


def train(cfg: dict, output, *, resume=False, overwrite=False, quiet=False,
          stop_at_step: int | None = None) -> dict:
    """Train with `cfg` (see prepare_run) into `output`; return a summary (best/deploy top-1...).

    stop_at_step: behave as if signalled at that global step (tests, time budgets): save a
    resumable state and raise TrainingInterrupted.
    """
    trainer = Trainer(cfg, output, resume=resume, overwrite=overwrite, quiet=quiet)
    try:
        result = trainer.run(stop_at_step)
    except BaseException:
        D.teardown(trainer.dist)
        raise
    result.update(trainer.finish())
    return result


__all__ = ["train", "Trainer", "resolve_device"]
