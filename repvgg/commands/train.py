"""Verbs `train`, `eval` and `demo`."""
from __future__ import annotations

import argparse
import sys

from . import add_model_flags, model_overrides


def register(sub) -> None:
    p = sub.add_parser("train", help="train a RepVGG (recipes normal/heavy/small; torchrun for DDP)",
                       description="Train a RepVGG. Flags override the recipe; the resolved config is "
                                   "saved as OUTPUT/config.yaml. Under torchrun it runs DDP.")
    p.add_argument("--output", "-o", required=True, help="run folder (checkpoints, metrics, curves, logs)")
    p.add_argument("--recipe", default="normal", help="normal | heavy | small | path to a YAML file")
    p.add_argument("--model", help="model name, e.g. repvgg_a0, or a torchvision classifier tv:resnet18 / tv:vgg11_bn "
                   "(default: the recipe's)")
    p.add_argument("--repvggify", action="store_true", default=None,
                   help="with --model tv:NAME: train it with RepVGG branches on every 3x3 conv-BN pair (folded back "
                        "into the plain torchvision model at the end)")
    p.add_argument("--data", help="fashion-mnist | fashion-mnist-builtin | fmnist-items | cifar10 | cifar100 | "
                   "imagefolder:PATH")
    p.add_argument("--data-dir", help="where the dataset files are")
    p.add_argument("--block", help="block variant (see `repvgg.list_blocks()`), e.g. repvgg, plain")
    p.add_argument("--width", type=float, help="channel multiplier on the model's widths (0.5 = 1/4 compute)")
    p.add_argument("--depths", type=_depths, help="blocks per stage 1-4, e.g. 2,4,6,1, or 'model' for the "
                   "model's own (default: the recipe's; small: 1,2,4,1)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="per process; lr scales with the global batch")
    p.add_argument("--lr", type=float, help="learning rate per 256 images (scaled by global batch / 256)")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--custom-l2", action="store_true", default=None,
                   help="decay each block's equivalent fused kernel (identity branch included) instead of its "
                        "branch kernels, as the official code's custom L2")
    p.add_argument("--warmup-epochs", type=float)
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--mixup", type=float, help="mixup alpha (0 = off)")
    p.add_argument("--aug", choices=("simple", "autoaugment", "none"))
    p.add_argument("--image-size", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="cpu | cuda | auto")
    p.add_argument("--workers", type=int, help="DataLoader workers (ImageFolder data only)")
    p.add_argument("--threads", type=int, help="torch CPU threads (1 is best on a CPU busy with other jobs)")
    p.add_argument("--amp", nargs="?", const=True, default=None, choices=(True, "auto", "bf16", "fp16"),
                   help="mixed precision: bf16 on CPU, fp16 on CUDA (or name the dtype)")
    p.add_argument("--no-amp", dest="amp", action="store_const", const=False, help="fp32 training")
    p.add_argument("--grad-clip", type=float, help="clip the global gradient norm")
    bool_flags = {"small_input": "stride-1 stem for 28-32 px images", "ema": "EMA of the weights",
                  "channels_last": "channels_last memory format", "sync_bn": "SyncBatchNorm under DDP",
                  "grad_checkpointing": "activation checkpointing per block (big models)"}
    for key, text in bool_flags.items():
        p.add_argument("--" + key.replace("_", "-"), dest=key, action=argparse.BooleanOptionalAction,
                       default=None, help=text)
    p.add_argument("--val-split", type=float, help="fraction of the training set held out to pick the best epoch "
                   "(default 0.1; 0: none, the final epoch is kept)")
    p.add_argument("--test-every-epoch", action="store_true", default=None,
                   help="also report test top-1 each epoch (curves); never used to pick a checkpoint")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from last.*")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --output")
    p.add_argument("--stop-at-step", type=int, help="stop as on SIGINT after this global step (time-boxed "
                   "jobs on shared machines); continue later with --resume")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run_train)

    e = sub.add_parser("eval", help="top-1/top-5, per-class accuracy and a confusion-matrix PNG",
                       description="Evaluate a checkpoint on a dataset's test split.")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--data", required=True)
    e.add_argument("--data-dir")
    e.add_argument("--deploy", action="store_true", help="fuse the model first (evaluate the plain network)")
    e.add_argument("--image-size", type=int, help="default: the size the checkpoint was trained at")
    e.add_argument("--batch-size", type=int, default=512)
    e.add_argument("--device", default="cpu")
    e.add_argument("--threads", type=int, help="torch CPU threads (default: one per idle core)")
    e.add_argument("--output", help="where to write confusion.png (default: beside the checkpoint)")
    add_model_flags(e)
    e.set_defaults(func=run_eval)

    d = sub.add_parser("demo", help="train, fuse and compare a small RepVGG on built-in data (~3 min, CPU)",
                       description="Train a small RepVGG on the built-in Fashion-MNIST subset, evaluate it, "
                                   "re-parameterize it, and show that the plain model gives the same "
                                   "predictions, faster. No downloads, no arguments needed.")
    d.add_argument("--output", help="run folder (default runs/demo-<timestamp>)")
    d.add_argument("--epochs", type=int, default=None, help="default: the demo's budget")
    d.set_defaults(func=run_demo)


def _depths(text: str) -> list[int] | str:
    from ..train.config import MODEL_DEPTHS

    if text == MODEL_DEPTHS:
        return text
    try:
        return [int(d) for d in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"depths must be comma-separated block counts like 2,4,6,1 (or 'model'), "
                                         f"got {text!r}") from None


_OVERRIDE_KEYS = ("model", "data", "data_dir", "block", "width", "depths", "epochs", "batch_size", "lr", "weight_decay",
                  "warmup_epochs", "label_smoothing", "mixup", "aug", "image_size", "seed", "device",
                  "workers", "threads", "amp", "grad_clip", "small_input", "ema", "channels_last", "sync_bn",
                  "grad_checkpointing", "val_split", "test_every_epoch", "repvggify", "custom_l2")


def run_train(args) -> int:
    from ..train import prepare_run, train

    return run_training(args, "repvgg train", _OVERRIDE_KEYS, prepare_run, train)


def run_training(args, prog: str, keys, prepare, train_fn) -> int:
    """The shared shape of ``repvgg train`` and ``repvgg seg train``: resolve the run's config (checked
    before anything is written), train, turn an interrupt into its exit code and a failed fusion check
    into 1."""
    from ..train import TrainingInterrupted

    overrides = {k: getattr(args, k) for k in keys}
    cfg = prepare(args.output, args.recipe, overrides, resume=args.resume, overwrite=args.overwrite)
    try:
        result = train_fn(cfg, args.output, resume=args.resume, overwrite=args.overwrite, quiet=args.quiet,
                          stop_at_step=args.stop_at_step)
    except TrainingInterrupted as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return e.exit_code
    if not result.get("fusion_ok", True):
        problem = f" ({result['fusion_problem']})" if result.get("fusion_problem") else ""
        print(f"{prog}: the fusion check failed{problem}; see {args.output}/summary.json", file=sys.stderr)
        return 1
    return 0


def run_eval(args) -> int:
    from ..train.evalcmd import evaluate_checkpoint

    evaluate_checkpoint(args.checkpoint, args.data, data_dir=args.data_dir, deploy=args.deploy,
                        image_size=args.image_size, batch_size=args.batch_size, device=args.device,
                        output=args.output, threads=args.threads, **model_overrides(args))
    return 0


def run_demo(args) -> int:
    from ..train.demo import demo

    demo(args.output, epochs=args.epochs)
    return 0
