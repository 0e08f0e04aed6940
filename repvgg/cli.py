"""The ``repvgg`` command. Verbs live in repvgg/commands/ and are discovered, not listed here."""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import warnings

from . import commands
from .blocks import NotConvertibleError
from .optional import MissingExtraError

# Errors that mean "your input is wrong": shown as one clear line, not a traceback.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, FileExistsError, IsADirectoryError,
               PermissionError, NotConvertibleError, MissingExtraError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="repvgg", description="RepVGG: train multi-branch, deploy plain.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"{commands.__name__}.{info.name}").register(sub)
    return parser


def _notes_as_lines(verb: str) -> None:
    """Our own warnings (a checkpoint's model guessed from shapes...) print as one readable line."""
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if category.__module__.startswith("repvgg"):
            print(f"repvgg {verb}: note: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    verb = " ".join(v for v in (args.command, getattr(args, "seg_command", None)) if v)
    _notes_as_lines(verb)
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as e:
        if os.environ.get("REPVGG_DEBUG"):
            raise
        print(f"repvgg {verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"repvgg {verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
