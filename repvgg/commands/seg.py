"""Verb `seg`: train, eval, predict and bench PSPNet segmenters (paper Sect. 4.3)."""
from __future__ import annotations

import json
from pathlib import Path

from . import add_force_flag

_TRAIN_KEYS = ("model", "data", "data_dir", "num_classes", "head_channels", "backbone_checkpoint", "epochs",
               "time_budget_min", "batch_size", "lr", "crop_size", "val_split", "seed", "device", "workers",
               "threads", "amp", "block")


def register(sub) -> None:
    seg = sub.add_parser("seg", help="semantic segmentation: PSPNet on dilated RepVGG (train/eval/predict/bench)",
                         description="PSPNet segmenters on dilated RepVGG (and ResNet baselines): train on "
                                     "fmnist-scenes (built in), Cityscapes or a folder of image/mask pairs.")
    verbs = seg.add_subparsers(dest="seg_command", required=True, metavar="VERB")

    t = verbs.add_parser("train", help="train a segmenter; writes last, best and fused deploy checkpoints")
    t.add_argument("--output", "-o", required=True, help="run folder")
    t.add_argument("--recipe", default="scenes", help="scenes | cityscapes | path to a YAML file")
    t.add_argument("--model", help="segmenter, e.g. pspnet_repvgg_a0, pspnet_repvgg_b1g2_fast, pspnet_resnet18")
    t.add_argument("--data", choices=("fmnist-scenes", "cityscapes", "folder"))
    t.add_argument("--data-dir", help="Cityscapes root or folder dataset root (train/ and val/ with images/, masks/)")
    t.add_argument("--num-classes", type=int, help="folder data without a classes.txt")
    t.add_argument("--head-channels", type=int, help="PSP head width (paper: 512)")
    t.add_argument("--block", help="RepVGG backbones' train-time block variant (repvgg.list_blocks(); default repvgg); "
                                   "the fused segmenter is the same plain network")
    t.add_argument("--backbone-checkpoint", help="a classification checkpoint to start the backbone from")
    t.add_argument("--epochs", type=int)
    t.add_argument("--time-budget-min", type=float, help="train for this many minutes of steps (poly lr fitted to it)")
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float, help="poly schedule's base lr")
    t.add_argument("--crop-size", type=int)
    t.add_argument("--val-split", type=float, help="fraction of the training set held out to pick the best epoch")
    t.add_argument("--seed", type=int)
    t.add_argument("--device", help="cpu | cuda | auto")
    t.add_argument("--workers", type=int)
    t.add_argument("--threads", type=int)
    t.add_argument("--amp", nargs="?", const=True, default=None, choices=(True, "auto", "bf16", "fp16"),
                   help="mixed precision: bf16 on CPU, bf16/fp16 on CUDA, or name the dtype; auto (the scenes recipe) "
                        "times bf16 against fp32 on a CPU and keeps the faster")
    t.add_argument("--no-amp", dest="amp", action="store_const", const=False, help="fp32 training")
    t.add_argument("--resume", action="store_true", help="continue the run in --output")
    t.add_argument("--overwrite", action="store_true", help="replace the run in --output")
    t.add_argument("--stop-at-step", type=int, help="stop as on SIGTERM after this step; continue with --resume")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=run_train)

    e = verbs.add_parser("eval", help="mIoU, pixel accuracy and per-class IoU on a test set")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--data", default=None, help="default: the data the checkpoint was trained on")
    e.add_argument("--data-dir")
    e.add_argument("--num-classes", type=int)
    e.add_argument("--deploy", action="store_true", help="fuse first (evaluate the plain network)")
    e.add_argument("--window", type=int, help="sliding-window inference with this tile size (px)")
    e.add_argument("--device", default="cpu")
    e.add_argument("--threads", type=int)
    e.set_defaults(func=run_eval)

    p = verbs.add_parser("predict", help="colour-overlay and mask PNGs for images")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--output", "-o", required=True, help="folder for NAME_overlay.png and NAME_mask.png")
    p.add_argument("--window", type=int, help="sliding-window inference with this tile size (px)")
    p.add_argument("--threads", type=int)
    add_force_flag(p)
    p.set_defaults(func=run_predict)

    b = verbs.add_parser("bench", help="segmenters' speed side by side (deploy forms), params and MACs")
    b.add_argument("models", nargs="*", default=["pspnet_repvgg_a0", "pspnet_resnet18"])
    b.add_argument("--size", type=int, default=512)
    b.add_argument("--batch-size", type=int, default=1)
    b.add_argument("--classes", type=int, default=19)
    b.add_argument("--head-channels", type=int, default=512, help="PSP head width (paper: 512)")
    b.add_argument("--repeats", type=int, default=5)
    b.add_argument("--device", default="cpu")
    b.add_argument("--threads", type=int)
    b.add_argument("--runtime", nargs="+", choices=("torch", "winograd", "onnxruntime"), default=["torch"],
                   help="one or more, timed interleaved: PyTorch eager; PyTorch with eligible 3x3 convs run as Winograd by NNPACK where "
                        "measured faster (CPU); or each deploy form exported to ONNX and run by onnxruntime (CPU)")
    b.set_defaults(func=run_bench)


def run_train(args) -> int:
    from ..seg.train import prepare_seg_run, train_segmenter
    from .train import run_training

    return run_training(args, "repvgg seg train", _TRAIN_KEYS, prepare_seg_run, train_segmenter)


def run_eval(args) -> int:
    from ..checkpoint import read_metadata
    from ..seg import load_segmenter
    from ..seg.data import build_seg_datasets, build_seg_loader
    from ..seg.metrics import evaluate_segmenter, format_scores
    from ..threads import set_threads

    set_threads(args.threads)
    model = load_segmenter(args.checkpoint, deploy=args.deploy).to(args.device)
    meta = read_metadata(args.checkpoint)
    data = args.data or meta.get("dataset")
    if data is None:
        raise ValueError("--data: the checkpoint does not say what it was trained on")
    scenes = json.loads(meta.get("scenes") or "null") if data == "fmnist-scenes" else None
    _, test, info = build_seg_datasets(data, args.data_dir, num_classes=args.num_classes, scenes=scenes)
    if info.num_classes != model.spec["num_classes"]:
        raise ValueError(f"{args.checkpoint} predicts {model.spec['num_classes']} classes, {data} has {info.num_classes}")
    res = evaluate_segmenter(model, build_seg_loader(test, 8, train=False), info.num_classes, args.device,
                             window=args.window, class_names=info.class_names)
    form = "fused deploy" if args.deploy or model.spec.get("deployed") else "train-time"
    print(f"{args.checkpoint} ({form} form) on {info.name} test ({len(test)} images)")
    print(format_scores(res))
    return 0


def run_predict(args) -> int:
    from ..seg.predict import predict_files
    from ..threads import set_threads

    set_threads(args.threads)
    for line in predict_files(args.checkpoint, [Path(p) for p in args.images], Path(args.output),
                              window=args.window, force=args.force):
        print(line)
    return 0


def run_bench(args) -> int:
    from ..seg import list_segmenters
    from ..seg.bench import compare_speed, format_rows
    from ..threads import set_threads

    unknown = [m for m in args.models if m not in list_segmenters()]
    if unknown:
        raise ValueError(f"unknown segmenter(s) {unknown}; e.g. pspnet_repvgg_a0, pspnet_resnet18")
    note = set_threads(args.threads)
    rows = compare_speed(args.models, size=args.size, batch=args.batch_size, classes=args.classes,
                         repeats=args.repeats, device=args.device, head_channels=args.head_channels,
                         runtime=tuple(args.runtime), threads=args.threads)
    print(f"{args.size}x{args.size}, batch {args.batch_size}, fp32, deploy forms, head {args.head_channels} ch, "
          f"{args.device}, {' + '.join(args.runtime)}; threads: {note}")
    print(format_rows(rows, args.batch_size))
    return 0
