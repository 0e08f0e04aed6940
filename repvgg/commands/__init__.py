"""CLI verbs. Each module here defines ``register(subparsers)``; cli.py discovers them.

A verb is argument parsing plus one call into the library, so everything it does can also be
done from Python.
"""
from __future__ import annotations

import argparse

# create_model kwargs a user may give for a checkpoint; a file without repvgg metadata needs them
# for what its weight shapes cannot tell (a stride-1 stem, dilation).
MODEL_FLAGS = ("model", "num_classes", "in_chans", "small_input", "output_stride")


def add_model_flags(p: argparse.ArgumentParser) -> None:
    """The build flags of ``create_model`` for checkpoints without metadata (e.g. a plain state_dict)."""
    g = p.add_argument_group("model (default: the checkpoint's metadata, else guessed from its shapes and said so)")
    g.add_argument("--model", help="zoo model name, e.g. repvgg_a0")
    g.add_argument("--num-classes", type=int, help="classifier outputs")
    g.add_argument("--in-chans", type=int, help="input channels")
    g.add_argument("--small-input", action="store_true", default=None, help="stride-1 stem (28-32 px images)")
    g.add_argument("--output-stride", type=int, choices=(8, 16, 32), help="dilated backbone")


def model_overrides(args: argparse.Namespace) -> dict:
    """The model flags the user gave, as ``create_model`` kwargs (``--model`` becomes ``name``)."""
    given = {k: getattr(args, k, None) for k in MODEL_FLAGS}
    given["name"] = given.pop("model")
    return {k: v for k, v in given.items() if v is not None}


def add_force_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="replace the output file if it exists (even an input)")
