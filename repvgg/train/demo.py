"""`repvgg demo`: train a small RepVGG on the built-in data, fuse it, show nothing changed but speed.

The training is sized to a time budget on the machine it runs on: a few timed steps estimate
the cost per image, and the demo trains as many epochs (1-16) as fit in about 2 minutes with
their evaluations (see `plan`), so it ends in minutes on a 2-core laptop and does more on a
bigger machine.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

BUDGET_S = 120.0          # training + evaluation time the demo aims for (leaves room for a busy machine)
MAX_EPOCHS = 16


def _seconds_per_image(cfg: dict) -> tuple[float, str | bool]:
    """Training seconds per image and the precision to train in (`auto` settled by timing, see
    train.amp), from a few timed steps of a scratch model."""
    from ..factory import create_model
    from .amp import amp_dtype, probe_cpu_amp, time_train_steps
    from .config import model_shape_kwargs

    model = create_model(cfg["model"], num_classes=10, in_chans=1, **model_shape_kwargs(cfg))
    shape = (cfg["batch_size"], 1, 28, 28)
    if cfg["amp"] == "auto":
        dtype, _, per_image = probe_cpu_amp(model, shape, 10, channels_last=cfg["channels_last"])
        if per_image:
            return (per_image["bf16"], "bf16") if dtype is not None else (per_image["fp32"], False)
    dtype = amp_dtype(cfg["amp"], torch.device("cpu"))
    x, y = torch.randn(shape), torch.randint(0, 10, shape[:1])
    if cfg["channels_last"]:
        model, x = model.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    seconds = time_train_steps(model.train(), x, y, (dtype,), rounds=3)[dtype]
    return seconds / shape[0], (False if cfg["amp"] == "auto" else cfg["amp"])   # auto here: no bf16


def plan(per_image: float, n_train: int, n_test: int, n_val: int = 0, budget: float = BUDGET_S) -> tuple[int, int]:
    """(epochs, train images) that fit `budget` seconds of training plus evaluation.

    An eval pass costs about a third of a training pass per image; a run evaluates the
    validation split once per epoch and the test set three times at the end (the picked weights
    in both forms, the final epoch's). On a slow or busy machine where even one epoch does not
    fit, the demo trains on fewer images rather than overrun.
    """
    test_pass, val_pass = per_image * n_test / 3, per_image * n_val / 3
    epoch = per_image * n_train + val_pass
    epochs = int((budget - 3 * test_pass) // epoch)
    if epochs >= 1:
        return min(MAX_EPOCHS, epochs), n_train
    n = int(max(0.0, budget - 3 * test_pass - val_pass) / per_image) // 128 * 128
    return 1, min(n_train, max(1024, n))


def _time_forward(models: dict, x: torch.Tensor, repeats: int) -> dict:
    """Median seconds per forward, models interleaved so load changes hit both alike."""
    out = {k: [] for k in models}
    with torch.inference_mode():
        for m in models.values():
            m(x)                                   # warm-up
        for _ in range(repeats):
            for k, m in models.items():
                t = time.perf_counter()
                m(x)
                out[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in out.items()}


def demo(output=None, epochs: int | None = None, *, data: str = "fashion-mnist-builtin",
         overrides: dict | None = None) -> dict:
    """Run the demo; `data`/`overrides` exist for tests (tiny data), users need no arguments."""
    from ..rebuild import model_from_checkpoint
    from ..data import build_datasets
    from .config import resolve_config
    from .loop import train
    from ..threads import choose_threads
    from .run_folder import prepare_run

    t_start = time.perf_counter()
    out = Path(output or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    threads, why = choose_threads()      # once, before the probe: the trainer keeps this count
    torch.set_num_threads(threads)
    print(f"CPU threads: {why}")
    extra = dict(overrides or {})
    base = resolve_config("small", {"data": data, "threads": threads, **extra})
    model_desc = f" at {base['width']:g}x width" if base["width"] != 1 else ""
    model_desc += f", {sum(base['depths'])} blocks in 4 stages {tuple(base['depths'])}" if base["depths"] else ""
    print(f"RepVGG demo: train a multi-branch {base['model']}{model_desc} (recipe `small`) on the built-in "
          "Fashion-MNIST subset (6,000 train / 2,000 test images, 28x28, shipped in the package), fuse "
          "it into a plain 3x3-conv network, and check that nothing but the speed changes.\n")
    _, test_ds, info = build_datasets(data, base["data_dir"], base["image_size"])
    if epochs is None:
        per_image, extra["amp"] = _seconds_per_image(base)
        n_val = round(base["val_split"] * info.num_train)
        n_train = info.num_train - n_val         # the rest is held out to pick the best epoch
        epochs, n = plan(per_image, n_train, info.num_test, n_val)
        msg = f"training {epochs} epoch(s) on {n_train} images, {n_val} held out for validation"
        if n < n_train:
            extra["train_subset"] = n
            extra.setdefault("batch_size", 32)   # more, smaller steps: a few hundred images still learn
            msg = f"training {epochs} epoch(s) on {n} of the {n_train} training images (a slow or busy machine)"
        precision = "bf16" if extra["amp"] else "fp32"
        print(f"about {per_image * n_train:.0f}s per epoch on this machine ({torch.get_num_threads()} "
              f"thread(s), {precision}): {msg}\n")
    cfg = prepare_run(out, "small", {"data": data, "epochs": epochs, "threads": threads,
                                     "warmup_epochs": min(1, epochs / 4), **extra})
    summary = train(cfg, out)

    # side-by-side speed: the same weights, multi-branch vs fused plain, fp32 inference
    trained = model_from_checkpoint(out / "best.safetensors").eval()
    deployed = model_from_checkpoint(out / "deploy.safetensors").eval()
    x64 = torch.stack([test_ds[i][0] for i in range(64)])
    batch = _time_forward({"train": trained, "deploy": deployed}, x64, repeats=11)
    single = _time_forward({"train": trained, "deploy": deployed}, x64[:1], repeats=31)
    n_params = {k: sum(p.numel() for p in m.parameters()) for k, m in (("train", trained), ("deploy", deployed))}
    n_layers = {k: sum(isinstance(mod, torch.nn.Conv2d) for mod in m.modules())
                for k, m in (("train", trained), ("deploy", deployed))}

    print("\n=== result ===")
    print(f"weights of epoch {summary['best_epoch']}, picked on {summary['selection']}")
    print(f"test top-1 ({info.num_test:,} images): train-time {summary['train_top1']:.2f}%  ->  fused plain model "
          f"{summary['deploy_top1']:.2f}%;  identical predictions on {summary['agreement_pct']:.2f}% "
          f"(max logit difference {summary['max_logit_diff']:.1e})")
    print(f"{'':24}{'multi-branch (train)':>22}{'plain (deploy)':>16}{'speed-up':>10}")
    print(f"{'conv layers / params':24}{n_layers['train']:>12} / {n_params['train'] / 1e6:.2f}M"
          f"{n_layers['deploy']:>8} / {n_params['deploy'] / 1e6:.2f}M")
    for name, t in (("batch 64, ms (median 11)", batch), ("batch 1, ms (median 31)", single)):
        print(f"{name:24}{t['train'] * 1e3:>22.2f}{t['deploy'] * 1e3:>16.2f}{t['train'] / t['deploy']:>9.2f}x")
    print(f"\nfiles in {out}/:")
    print("  deploy.safetensors   fused plain model (load: repvgg.model_from_checkpoint)")
    print("  best.safetensors     train-time weights of the epoch picked on the validation split;  last.*  "
          "resumable state (--resume)")
    print("  curves.png  metrics.csv  metrics.jsonl  train.log  confusion.png  config.yaml  summary.json")
    print(f"next: repvgg eval --checkpoint {out}/deploy.safetensors --data {data}")
    print(f"demo finished in {(time.perf_counter() - t_start) / 60:.1f} min")
    return {**summary, "speed_batch64": batch, "speed_batch1": single, "output": str(out)}
