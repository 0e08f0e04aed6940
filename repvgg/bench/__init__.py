"""Benchmarks as the paper ran them: throughput protocol, FLOPs / Wino MULs, memory, baselines,
the conv ceiling, and result files. ``repvgg bench`` is a thin layer over :func:`run_bench`."""
from .baselines import BASELINES, create_baseline, fuse_conv_bn
from .counting import complexity, count_macs, count_params, count_wino_muls
from .models import ModelSpec, make_spec
from .paper import PAPER
from .report import markdown_table, write_results
from .run import make_specs, run_bench
from .timing import Protocol, time_interleaved

__all__ = [
    "BASELINES", "create_baseline", "fuse_conv_bn", "complexity", "count_macs", "count_params",
    "count_wino_muls", "ModelSpec", "make_spec", "PAPER", "markdown_table", "write_results",
    "make_specs", "run_bench", "Protocol", "time_interleaved",
]
