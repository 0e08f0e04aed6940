"""Verbs `export`, `quantize` and `prune`: thin wrappers over repvgg.deploy."""
from __future__ import annotations

from pathlib import Path

from ..checkpoint import CHECKPOINT_SUFFIXES
from ..fileio import check_output_path
from . import add_force_flag, add_model_flags, model_overrides


def _common(p, out_help: str) -> None:
    p.add_argument("--checkpoint", required=True,
                   help="a .safetensors/.pth checkpoint (train-time files are fused first)")
    p.add_argument("--out", help=out_help)
    add_model_flags(p)
    add_force_flag(p)


def _load(args):
    from ..deploy.common import load_model

    return load_model(args.checkpoint, **model_overrides(args))


def _output(args, suffixes: tuple[str, ...]) -> Path:
    """--out (default: the checkpoint's name with the first suffix), checked before any work is done."""
    out = Path(args.out) if args.out else _default_out(args.checkpoint, suffixes[0])
    return check_output_path(out, [args.checkpoint], force=args.force, suffixes=suffixes, what="--out")


def register(sub) -> None:
    from ..deploy.export import DEFAULT_OPSET, FORMATS, ONNX_OPSETS, TOLERANCE
    from ..deploy.repair import REPAIRS

    e = sub.add_parser("export", help="export a fused model to ONNX / TorchScript / torch.export, verified",
                       description="Export a RepVGG as its plain deploy network and check the file against "
                                   "PyTorch on random and real images; fails (writing nothing) above tolerance.")
    _common(e, "output file (default: the checkpoint's name with .onnx/.ts.pt/.pt2)")
    e.add_argument("--format", default="onnx", help=f"one of: {', '.join(FORMATS)} (default onnx)")
    e.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help=f"ONNX opset {ONNX_OPSETS[0]}-{ONNX_OPSETS[-1]} (default {DEFAULT_OPSET})")
    e.add_argument("--dynamic-batch", action="store_true", help="a batch dimension of any size")
    e.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"),
                   help="input size (default: the training size in the checkpoint, else 28/224)")
    e.add_argument("--tolerance", type=float, default=TOLERANCE, help="max relative error vs PyTorch")
    e.set_defaults(func=run_export)

    q = sub.add_parser("quantize", help="INT8 model (onnxruntime QDQ or PyTorch PT2E), fp32 vs INT8 top-1 and speed",
                       description="Post-training INT8 quantization calibrated on training images, then fp32 vs "
                                   "INT8 top-1 on the test split and CPU speed side by side (onnxruntime for "
                                   "--method ort, fp32 torch.compile vs INT8 lowered to oneDNN kernels for "
                                   "--method torch).")
    _common(q, "INT8 file (default: CHECKPOINT.int8.onnx; --method torch: CHECKPOINT.int8.safetensors)")
    q.add_argument("--data", required=True,
                   help="fashion-mnist | fashion-mnist-builtin | fmnist-items | cifar10 | cifar100 | imagefolder:PATH")
    q.add_argument("--data-dir")
    q.add_argument("--image-size", type=int, help="resize the data (default: the checkpoint's training size)")
    q.add_argument("--calib-batches", type=int, default=8, help="training batches for calibration (default 8)")
    q.add_argument("--batch-size", type=int, default=64, help="calibration / evaluation / timing batch")
    q.add_argument("--method", default="ort", help="ort (onnxruntime static QDQ) | torch (PT2E with the X86 "
                                                  "Inductor quantizer, needs torchao: pip install 'repvgg[int8]') | "
                                                  "qat (quantization-aware fine-tuning, then onnxruntime QDQ)")
    q.add_argument("--qat-on", choices=("train", "fused"), help="--method qat: train the branches of the train-time "
                   "form through their fake-quantized fused kernel (default for a train-time checkpoint), or the fused "
                   "convs directly (default for a fused one)")
    q.add_argument("--epochs", type=int, default=1, help="--method qat: fine-tuning epochs (default 1)")
    q.add_argument("--lr", type=float, default=0.01, help="--method qat: peak lr of the one-cycle fine-tune")
    q.add_argument("--calibrate", help="--method ort: minmax (default) | percentile | entropy; "
                                       "--method torch uses the quantizer's histogram observers")
    q.add_argument("--fp32-out", help="also keep the verified fp32 .onnx here")
    q.add_argument("--sensitivity", action="store_true",
                   help="--method ort: quantize one layer at a time, print the top-1 drop per layer (worst first) and "
                        "write OUT.sensitivity.csv/.png; then top-1 and speed with the K worst kept in float, K = 0..n; "
                        "measured on the validation images the checkpoint's training held out, never the test set")
    q.add_argument("--keep-fp32", help="--method ort: leave layers in float: K (the K most sensitive, measured "
                                       "first), auto (the fewest within 0.1 points of fp32 on validation) or "
                                       "comma-separated layer names (e.g. stem.fused,head.fc)")
    q.add_argument("--per-tensor", action="store_true",
                   help="--method ort: one symmetric scale per weight tensor (as TensorRT / many NPUs) instead of per "
                        "output channel")
    q.add_argument("--eval-images", type=int, help="evaluate on the first N test images (default: all)")
    q.add_argument("--repeats", type=int, default=20, help="timing repeats (median)")
    q.set_defaults(func=run_quantize)

    r = sub.add_parser("prune", help="L1 structured channel pruning of the fused plain model (+ fine-tune)",
                       description="Remove the lowest-L1 filters of every prunable fused conv (and the matching "
                                   "inputs of the next conv / classifier); report params, MACs, CPU speed and "
                                   "top-1 before/after pruning and after fine-tuning.")
    _common(r, "pruned checkpoint (.safetensors/.pth); widths are stored in its metadata")
    r.add_argument("--ratio", type=float, required=True, help="fraction of filters removed per layer, in (0, 1)")
    r.add_argument("--multiple-of", type=int, default=8,
                   help="round kept widths to a multiple of this (8: fastest CPU kernels; 1: exactly the ratio)")
    r.add_argument("--data", help="dataset for top-1 and fine-tuning (needed with --finetune-epochs)")
    r.add_argument("--data-dir")
    r.add_argument("--image-size", type=int, help="resize the data (default: the checkpoint's training size)")
    r.add_argument("--finetune-epochs", type=int, default=0)
    r.add_argument("--repair", choices=list(REPAIRS), default="reconstruct",
                   help="before fine-tuning: refit each conv by least squares to the unpruned model's outputs "
                        "(reconstruct) or only match per-channel mean/std (recalibrate)")
    r.add_argument("--calib-images", type=int,
                   help="training images for the repair after pruning (with --data; 0 = no repair; default 2048 "
                        "up to 64 px, 256 above: the repair holds both models' activations of all of them)")
    r.add_argument("--lr", type=float, default=0.05, help="fine-tuning peak learning rate (one-cycle)")
    r.add_argument("--distill", action="store_true", help="fine-tune towards the unpruned model's outputs as well")
    r.add_argument("--feature-weight", type=float, default=0.0,
                   help="with --distill: weight of a per-layer loss towards the unpruned model's kept channels "
                        "(1.0: +0.10..+0.19 points over --distill alone, 30%% pruned, 10 epochs, Fashion-MNIST)")
    r.add_argument("--batch-size", type=int, default=128)
    r.add_argument("--eval-images", type=int, help="evaluate on the first N test images (default: all)")
    r.set_defaults(func=run_prune)


def _default_out(ckpt: str, suffix: str) -> Path:
    p = Path(ckpt)
    return p.with_name(p.stem + suffix)


def run_export(args) -> int:
    from ..deploy.export import check_format, check_opset, export_model
    from ..optional import require

    check_format(args.format)  # before loading anything: bad flags fail fast
    if args.format == "onnx":
        check_opset(args.opset)
        require("onnx"), require("onnxscript"), require("onnxruntime")
    suffixes = {"onnx": (".onnx",), "torchscript": (".ts.pt", ".pt"), "pt2": (".pt2",)}[args.format]
    out = _output(args, suffixes)
    model = _load(args)
    report = export_model(model, out, args.format, opset=args.opset, dynamic_batch=args.dynamic_batch,
                          image_size=args.image_size, tol=args.tolerance)
    print(report.summary())
    return 0


def _test_loader(test_ds, batch_size: int, limit: int | None):
    from torch.utils.data import Subset

    from ..data import build_loader

    if limit:
        if hasattr(test_ds, "images"):  # in-memory: slice it, keeping the fast loader
            import copy

            test_ds = copy.copy(test_ds)
            test_ds.images, test_ds.targets = test_ds.images[:limit], test_ds.targets[:limit]
        else:
            test_ds = Subset(test_ds, range(min(limit, len(test_ds))))
            from torch.utils.data import DataLoader

            return DataLoader(test_ds, batch_size)
    return build_loader(test_ds, batch_size, train=False)


def _datasets(args, model):
    from ..data import build_datasets
    from ..train.config import training_augmentation

    meta = getattr(model, "checkpoint_meta", {})
    size = args.image_size or meta.get("image_size")
    train_ds, test_ds, info = build_datasets(args.data, args.data_dir, int(size) if size else None,
                                             **training_augmentation(meta))  # a fine-tune sees what training saw
    if info.in_chans != model.in_chans:
        raise ValueError(f"channel mismatch: the model takes {model.in_chans}-channel images but {args.data} "
                         f"has {info.in_chans}")
    n_cls = model.head.fc.out_features if hasattr(model.head.fc, "out_features") else 0
    if n_cls != info.num_classes:
        raise ValueError(f"label-count mismatch: the model has {n_cls} classes but {args.data} has {info.num_classes}")
    return train_ds, test_ds, info


def run_quantize(args) -> int:
    from ..deploy.quantize import CALIBRATION, METHODS, calibration_batches, compare, quantize_model
    from ..optional import require

    if args.method not in METHODS + ("qat",):
        raise ValueError(f"unknown --method {args.method!r}; supported: {', '.join(METHODS + ('qat',))}")
    if args.method != "qat" and args.qat_on is not None:
        raise ValueError("--qat-on applies to --method qat only")
    if args.method == "torch":
        from ..deploy.quantize_pt2e import require_torchao

        require_torchao()
        for flag, value in (("--calibrate", args.calibrate), ("--fp32-out", args.fp32_out),
                            ("--per-tensor", args.per_tensor or None), ("--keep-fp32", args.keep_fp32),
                            ("--sensitivity", args.sensitivity or None)):
            if value is not None:
                raise ValueError(f"{flag} applies to --method ort only")
    else:
        require("onnx"), require("onnxscript"), require("onnxruntime")
    calibrate = args.calibrate or "minmax"
    if calibrate not in CALIBRATION:
        raise ValueError(f"unknown --calibrate {calibrate!r}; supported: {', '.join(CALIBRATION)}")
    if args.calib_batches < 1:
        raise ValueError(f"--calib-batches must be >= 1, got {args.calib_batches}")
    out = _output(args, (".int8.safetensors", ".safetensors") if args.method == "torch" else (".int8.onnx", ".onnx"))
    if args.fp32_out:
        check_output_path(args.fp32_out, [args.checkpoint, out], force=args.force, suffixes=(".onnx",),
                          what="--fp32-out")
    model = _load_for_qat(args) if args.method == "qat" else _load(args)
    trained_at = getattr(model, "checkpoint_meta", {}).get("image_size")
    if args.image_size and trained_at and int(trained_at) != args.image_size:
        raise ValueError(f"calibration size mismatch: --image-size {args.image_size} but {args.checkpoint} was trained "
                         f"on {trained_at} px images; INT8 ranges calibrated at another size do not hold at the size "
                         f"the model runs at (omit --image-size, or give {trained_at})")
    train_ds, test_ds, info = _datasets(args, model)
    calib_ds = train_ds
    if args.sensitivity:       # calibrate on the images not used to rank layers
        from ..deploy.sensitivity import held_out_split

        calib_ds = held_out_split(train_ds, test_ds, getattr(model, "checkpoint_meta", {}))[0]
    calib = calibration_batches(calib_ds, args.batch_size, args.calib_batches)
    if args.method == "qat":
        from ..deploy.qat import qat_finetune

        meta = model.checkpoint_meta
        model, qat_ranges = qat_finetune(model, train_ds, args.epochs, per_channel=not args.per_tensor, lr=args.lr)
        model.checkpoint_meta = meta
    test_loader = _test_loader(test_ds, args.batch_size, args.eval_images)
    if args.method == "torch":
        from ..deploy.quantize_pt2e import compare_pt2e

        report = quantize_model(model, out, calib, method="torch")
        res = compare_pt2e(model, out, calib[0], test_loader, repeats=args.repeats)
    else:
        import tempfile

        keep = _keep_fp32(args, model, calib, train_ds, test_ds, out)
        with tempfile.TemporaryDirectory() as tmp:
            fp32 = Path(args.fp32_out) if args.fp32_out else Path(tmp) / "fp32.onnx"
            report = quantize_model(model, out, calib, method="ort", calibrate=calibrate, fp32_out=fp32,
                                    per_channel=not args.per_tensor, keep_fp32=keep,
                                    input_ranges=qat_ranges if args.method == "qat" else None)
            res = compare(fp32, out, test_loader, bench_batch=calib[0], repeats=args.repeats)
        if keep:
            print(f"kept in float: {', '.join(keep)}")
    report.fp32_top1, report.int8_top1 = res["fp32_top1"], res["int8_top1"]
    report.fp32_ms, report.int8_ms, report.batch_size = res.get("fp32_ms"), res.get("int8_ms"), len(calib[0])
    print(report.summary())
    if args.method == "qat":
        print(f"QAT: the input ranges of {len(qat_ranges)} convs are the ones QAT trained with (the rest calibrated); "
              "fp32 above is the fine-tuned model")
    return 0


def _load_for_qat(args):
    """The model QAT trains: the train-time form if the file holds it (unless --qat-on fused), else fused."""
    from ..checkpoint import read_metadata
    from ..rebuild import model_from_checkpoint

    model = model_from_checkpoint(args.checkpoint, **model_overrides(args))
    train_form = not getattr(model, "is_deployed", True)
    on = args.qat_on or ("train" if train_form else "fused")
    if on == "train" and not train_form:
        raise ValueError(f"--qat-on train needs a train-time checkpoint; {args.checkpoint} holds the fused form, "
                         "whose 3x3 convs cannot be split back into branches (use --qat-on fused, or give best.safetensors)")
    if on == "fused":
        return _load(args)
    model.checkpoint_meta = read_metadata(args.checkpoint)
    return model.eval()


def _keep_fp32(args, model, calib, train_ds, test_ds, out: Path) -> list[str]:
    """The layers to leave in float: named, or the K most sensitive / ``auto`` (measured with --sensitivity
    on the validation images training held out: ranking layers and choosing K are selections)."""
    from ..deploy.quantize import check_layers, layer_names

    spec = (args.keep_fp32 or "").strip()
    if spec and not spec.isdigit() and spec != "auto":     # checked before any quantization runs
        return check_layers([s.strip() for s in spec.split(",") if s.strip()], layer_names(model))
    if not args.sensitivity:
        if spec:
            raise ValueError(f"--keep-fp32 {spec} keeps the most sensitive layers: add --sensitivity to measure "
                             "them, or name the layers")
        return []
    from ..deploy.sensitivity import (choose_keep_k, held_out_split, keep_fp32_curve, layer_sensitivity,
                                      write_sensitivity)

    _, val_ds, note = held_out_split(train_ds, test_ds, getattr(model, "checkpoint_meta", {}))
    val_loader = _test_loader(val_ds, args.batch_size, None)
    per_channel = not args.per_tensor
    print(f"layers ranked and K chosen on {len(val_ds)} validation images: {note}; the test set only scores "
          "the file written")
    print("per-layer sensitivity (each layer alone in INT8, validation top-1):")
    rows = layer_sensitivity(model, calib, val_loader, per_channel=per_channel)
    ranking = [r["layer"] for r in rows]
    curve = keep_fp32_curve(model, calib, val_loader, ranking, calib[0], per_channel=per_channel, repeats=5)
    print("with the K most sensitive layers left in float:  K  validation top-1  ORT speed-up vs fp32")
    for c in curve:
        print(f"  {c['keep_fp32']:>2}  {c['int8_top1']:.2f}%  {c['speedup']:.2f}x")
    base = out.name.split(".")[0]
    csv_path, png_path = out.with_name(base + ".sensitivity.csv"), out.with_name(base + ".sensitivity.png")
    weights = "per-channel" if per_channel else "per-tensor"
    write_sensitivity(rows, curve, csv_path, png_path, f"INT8 sensitivity per layer ({weights} weights), "
                      f"{Path(args.checkpoint).name}, {len(calib)} calibration batches of {len(calib[0])}")
    print(f"wrote {csv_path} and {png_path}")
    if spec == "auto":
        k = choose_keep_k(curve, curve[0]["fp32_top1"])
        print(f"--keep-fp32 auto: K = {k} (the fewest float layers within 0.1 points of fp32 on validation, "
              "else the best)")
        return ranking[:k]
    return ranking[:int(spec)] if spec else []


def run_prune(args) -> int:
    import torch

    from ..complexity import count_macs, count_params
    from ..deploy.common import default_image_size, time_interleaved, top1
    from ..deploy.finetune import finetune
    from ..deploy.prune import check_prune_args, prune_model, save_pruned
    from ..deploy.quantize import calibration_images
    from ..deploy.repair import repair

    check_prune_args(args.ratio, args.multiple_of)  # before anything is loaded
    if args.finetune_epochs and not args.data:
        raise ValueError("--finetune-epochs needs --data (the training images)")
    if args.feature_weight < 0 or (args.feature_weight > 0 and not args.distill):
        raise ValueError(f"--feature-weight must be >= 0 and needs --distill (the unpruned model is the "
                         f"teacher), got {args.feature_weight}")
    if not args.out:
        raise ValueError("--out is required: where to write the pruned checkpoint")
    _output(args, CHECKPOINT_SUFFIXES["safetensors"] + CHECKPOINT_SUFFIXES["pth"])
    model = _load(args)
    data = _datasets(args, model) if args.data else None
    result = prune_model(model, args.ratio, multiple_of=args.multiple_of)
    pruned = result.model
    if data:
        size = (data[2].image_size,) * 2
    else:
        size = (args.image_size,) * 2 if args.image_size else default_image_size(model)
    shape = (1, model.in_chans, *size)
    rows = [("params", count_params(model), count_params(pruned)),
            ("MACs", count_macs(model, shape), count_macs(pruned, shape))]
    x = torch.randn(args.batch_size, *shape[1:])
    with torch.no_grad():
        t = time_interleaved({"before": lambda: model(x), "after": lambda: pruned(x)}, repeats=10)
    rows.append((f"CPU ms/batch {args.batch_size}", t["before"] * 1e3, t["after"] * 1e3))
    if data:
        loader = _test_loader(data[1], 256, args.eval_images)
        rows.append(("top-1 %", top1(model, loader), top1(pruned, loader)))
        calib = args.calib_images if args.calib_images is not None else 2048 if max(size) <= 64 else 256
        if calib > 0:
            repair(pruned, model, calibration_images(data[0], calib, args.batch_size), args.repair)
            rows.append((f"top-1 % after {args.repair} ({calib} img)", None, top1(pruned, loader)))
        if args.finetune_epochs:
            finetune(pruned, data[0], args.finetune_epochs, lr=args.lr, batch_size=args.batch_size,
                     teacher=model if args.distill else None, feature_weight=args.feature_weight)
            rows.append(("top-1 % after fine-tune", None, top1(pruned, loader)))
    save_pruned(pruned, args.out, metadata={"prune_ratio": args.ratio, "finetune_epochs": args.finetune_epochs,
                                            "image_size": size[0]})
    print(f"pruned {args.ratio:.0%} of filters per prunable layer ({len(result.skipped)} layers left alone); "
          f"widths {result.widths}")
    for name, before, after in rows:
        b = "" if before is None else f"{before:,.2f}" if isinstance(before, float) else f"{before:,}"
        a = f"{after:,.2f}" if isinstance(after, float) else f"{after:,}"
        print(f"  {name:<28} before {b:>14}   after {a:>14}")
    print(f"  CPU speed-up {t['before'] / t['after']:.2f}x; wrote {args.out}")
    return 0
