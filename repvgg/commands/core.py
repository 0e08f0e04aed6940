"""`repvgg list`, `repvgg info NAME`, `repvgg convert IN OUT`: the zoo and its checkpoints."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..archs import ARCHS, canonical_name
from ..checkpoint import CHECKPOINT_SUFFIXES, format_from_suffix
from ..fileio import check_output_path
from ..convert import TOLERANCE, convert_checkpoint
from ..complexity import count_macs, count_params
from ..factory import create_model, list_models
from ..hub import PRETRAINED_FILES
from . import add_force_flag, add_model_flags, model_overrides


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list the model zoo", description="List the models (shell pattern or substring).")
    p.add_argument("pattern", nargs="?", help='e.g. "b1*" or "g4"')
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("info", help="params and multiply-adds of a model, train-time and deploy form")
    p.add_argument("name", help='zoo model, e.g. repvgg_a0 or "RepVGG-A0"')
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--in-chans", type=int, default=3)
    p.add_argument("--small-input", action="store_true", help="stride-1 stem (28-32 px images)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "convert", help="fuse a train-time checkpoint into a deploy checkpoint",
        description="Fuse a train-time checkpoint (repvgg, official, timm or mmpretrain naming; .pth or "
        ".safetensors) into the deploy form: one 3x3 conv per block.",
    )
    p.add_argument("src", metavar="IN")
    p.add_argument("dst", metavar="OUT", help=".safetensors or .pth (for ONNX/TorchScript use `repvgg export`)")
    add_model_flags(p)
    add_force_flag(p)
    p.add_argument("--verify", action="store_true",
                   help="compare both forms on random input (float64 and float32); write nothing above tolerance")
    p.add_argument("--verify-size", type=int, default=64, help="image size of the random verification input")
    p.add_argument("--format", choices=["safetensors", "pth"], help="default: from OUT's extension")
    p.add_argument("--to", default="repvgg", choices=("repvgg", "official", "timm", "mmpretrain"),
                   help="key naming of OUT: ours, or the official release's / timm's / mmpretrain's, so their "
                        "code loads it (strict); only zoo shapes with the paper's block")
    p.add_argument("--form", default="deploy", choices=("deploy", "train"),
                   help="deploy: fuse (default); train: keep the branches (to go on training elsewhere)")
    p.set_defaults(func=cmd_convert)


def cmd_list(args) -> int:
    pattern = args.pattern and canonical_name_fragment(args.pattern)   # paper spellings: "RepVGG-B1*"
    if pattern and not any(c in pattern for c in "*?["):
        pattern = f"*{pattern}*"
    names = list_models(pattern)
    if not names:
        print(f"no model matches {args.pattern!r}; models: {', '.join(list_models())}", file=sys.stderr)
        return 1
    print(f"{'model':<13} {'depths':<14} {'widths':<26} {'groups':>6} {'SE':>3} {'top-1':>6}  pretrained")
    for name in names:
        a = ARCHS[name]
        top1 = f"{a.top1:.2f}" if a.top1 else "-"
        print(f"{name:<13} {str(a.depths):<14} {str((a.stem_width, *a.widths)):<26} {a.groups:>6} "
              f"{'yes' if a.se else 'no':>3} {top1:>6}  {'yes' if name in PRETRAINED_FILES else 'no'}")
    return 0


def canonical_name_fragment(text: str) -> str:
    return text.strip().lower().replace("-", "_")


def cmd_info(args) -> int:
    name = canonical_name(args.name)
    for flag, value, low in (("--image-size", args.image_size, 1), ("--num-classes", args.num_classes, 0),
                             ("--in-chans", args.in_chans, 1)):
        if value < low:
            raise ValueError(f"{flag} must be >= {low}, got {value}")
    shape = (1, args.in_chans, args.image_size, args.image_size)
    print(f"{name}: {args.num_classes} classes, input {tuple(shape[1:])}")
    print(f"{'form':<7} {'params (M)':>11} {'MACs (G)':>10}")
    for deploy in (False, True):
        with torch.device("meta"):  # shapes only: nothing allocated, instant even for B3
            model = create_model(name, num_classes=args.num_classes, in_chans=args.in_chans, deploy=deploy,
                                 small_input=args.small_input)
        print(f"{'deploy' if deploy else 'train':<7} {count_params(model) / 1e6:>11.3f} "
              f"{count_macs(model, shape) / 1e9:>10.3f}")
    print("MACs = multiply-adds of convs and linears (FLOPs are about twice that)")
    return 0


def cmd_convert(args) -> int:
    fmt = args.format or format_from_suffix(Path(args.dst))
    if fmt is None:
        raise ValueError(f"{args.dst}: convert writes a checkpoint, .safetensors or .pth; for ONNX or TorchScript "
                         "use `repvgg export`")
    check_output_path(args.dst, [args.src], force=args.force, suffixes=CHECKPOINT_SUFFIXES[fmt], what="OUT")
    overrides = model_overrides(args)
    report = convert_checkpoint(
        args.src, args.dst, model=overrides.pop("name", None), verify=args.verify, fmt=fmt,
        image_size=args.verify_size, to=args.to, form=args.form, **overrides,
    )
    print(f"{args.src}: {report['model']} (from {report['model_from']}), {report['naming']} naming")
    if report.get("already_deployed"):
        print("already in deploy form: rewritten in repvgg naming, nothing to fuse or verify")
    for dtype, (abs_err, rel_err) in report["errors"].items():
        tol = TOLERANCE[getattr(torch, dtype)]
        verdict = "ok" if rel_err <= tol else "FAIL"
        print(f"verify {dtype}: max abs error {abs_err:.3e}, relative {rel_err:.3e} (tolerance {tol:.0e}) {verdict}")
    if not report["ok"]:
        print(f"repvgg convert: verification failed; {args.dst} not written", file=sys.stderr)
        return 1
    naming = "" if args.to == "repvgg" else f", {args.to} naming"
    print(f"wrote {args.dst} ({args.form} form{naming})")
    return 0
