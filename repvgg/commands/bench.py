"""``repvgg bench``: throughput, params, FLOPs, Wino MULs and memory of RepVGG against baselines."""
from __future__ import annotations

import datetime
from pathlib import Path

DEFAULT_MODELS = "repvgg_a0,repvgg_b0,resnet18"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="time models with the paper's protocol (interleaved repeats), write table/CSV/JSON/plot",
        description="Warm up, time N batches with synchronisation, repeat (interleaving the models), report "
                    "the median images/s with params, FLOPs, Wino MULs, peak memory and the paper's top-1.",
    )
    p.add_argument("--models", default=DEFAULT_MODELS,
                   help="comma-separated: RepVGG names, torchvision baselines (conv-BN fused), timm:<repvgg name>")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--channels-last", action="store_true")
    treat = p.add_mutually_exclusive_group()
    treat.add_argument("--compile", action="store_true", help="torch.compile each model (inductor freezing)")
    treat.add_argument("--optimize", action="store_true", help="time repvgg.optimize_for_inference of each model")
    p.add_argument("--form", default="both", choices=("train", "deploy", "both"),
                   help="RepVGG form(s) to time; baselines are always conv-BN fused")
    p.add_argument("--warmup", type=int, help="warm-up batches per model (default: 50 on GPU, 3 on CPU)")
    p.add_argument("--iters", type=int, help="timed batches per repeat (default: 50 on GPU, 3 on CPU)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--ceiling", action="store_true",
                   help="also time each deploy model's convs alone, layer by layer, and report the fraction")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: one per idle core)")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory column")
    p.add_argument("--out", default=None,
                   help="results stem (default benchmarks/results/bench_<device>_<UTC time>); '' writes nothing")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..bench import Protocol, make_specs, markdown_table, run_bench, write_results
    from ..bench.timing import DEFAULT_ITERS, DEFAULT_WARMUP

    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    if kind == "cpu":
        from ..threads import set_threads

        print(f"threads: {set_threads(args.threads)}")
    protocol = Protocol(
        DEFAULT_WARMUP[kind] if args.warmup is None else args.warmup,
        DEFAULT_ITERS[kind] if args.iters is None else args.iters,
        args.repeats,
    )
    treatment = "compile" if args.compile else "optimized" if args.optimize else "eager"
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    if any(n.startswith("timm:") for n in names):
        from ..optional import require

        require("timm")       # before anything is built or timed
    specs = make_specs(names, args.form, args.dtype, args.channels_last, treatment)
    result = run_bench(specs, args.batch_size, args.image_size, args.device, protocol,
                       ceiling=args.ceiling, memory=args.memory)
    print(markdown_table(result["rows"]))
    s = result["settings"]
    print(f"\nwarm-up {s['warmup_batches']} batches, {s['timed_batches']} timed batches x {s['repeats']} "
          f"interleaved repeats, batch {s['batch_size']} at {s['image_size']} px on {result['environment']['device']}"
          f"; load average {s['loadavg_before']} -> {s['loadavg_after']}. Paper columns are the paper's numbers.")
    if args.out is None:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d_%H%M%S")
        args.out = str(Path("benchmarks/results") / f"bench_{kind}_{stamp}")
    if args.out:     # '' writes nothing (Path('') would be '.')
        for path in write_results(args.out, result, title=f"RepVGG zoo vs baselines ({result['environment']['device']})"):
            print(f"wrote {path}")
    return 0
