"""Writing a results .md: the generated part is replaced, the hand-written analysis below it is kept."""
from __future__ import annotations

from pathlib import Path


def write_keeping_story(path: Path, lines: list[str]) -> str:
    """Write ``lines`` to ``path``; a ``## ...`` section already below the generated table survives."""
    story = path.read_text().split("\n## ", 1) if path.is_file() else []
    if len(story) == 2:
        lines = lines + ["", "## " + story[1].rstrip("\n")]
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text
