"""Writing a results .md (the generated part is replaced, the hand-written analysis below it is kept)
and the command line that produced it."""
from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path


def this_command() -> str:
    """The command line that ran this script, quoted so that it can be pasted back into a shell; a run
    under `nice` says so (its niceness is read, not assumed)."""
    niceness = os.nice(0)
    return (f"nice -n {niceness} " if niceness > 0 else "") + "python " + shlex.join(sys.argv)


def write_keeping_story(path: Path, lines: list[str]) -> str:
    """Write ``lines`` to ``path``; a ``## ...`` section already below the generated table survives."""
    story = path.read_text().split("\n## ", 1) if path.is_file() else []
    if len(story) == 2:
        lines = lines + ["", "## " + story[1].rstrip("\n")]
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text
