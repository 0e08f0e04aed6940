"""Writing files safely: atomically, with the user's umask, and never over something we should not.

Every file the package writes (checkpoints, ONNX, PNG, CSV, YAML, JSON) goes through
:func:`atomic_output`: a temp file beside the target, renamed into place only when the writer
succeeded, so a crash never leaves a half-written file where a good one was. ``mkstemp`` creates
its file with mode 0600; the rename would carry that over, and a serving container or a colleague
could not read the result. The temp file therefore gets the mode an ordinary ``open(path, "w")``
would give (0666 minus the umask) before it is renamed.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it: set and restore at once
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; it replaces ``path`` only if the block succeeds.

    The temp file keeps ``path``'s suffix (some writers insist on their extension) and ends with
    the mode ``open()`` would give a new file. On any error it is removed.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; give a file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.tmp-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)``, then move the finished file to ``path`` (see :func:`atomic_output`)."""
    with atomic_output(path) as tmp:
        write(str(tmp))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def atomic_savefig(fig, path: str | os.PathLike, **kwargs) -> Path:
    """``fig.savefig`` through :func:`atomic_output` (the format follows ``path``'s suffix)."""
    with atomic_output(path) as tmp:
        fig.savefig(tmp, **kwargs)
    return Path(path)


def check_output_path(out: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), *, force: bool = False,
                      suffixes: Iterable[str] | None = None, what: str = "output") -> Path:
    """Refuse an output that would destroy an input or an existing file, or whose suffix lies.

    A command writes ``out``; ``inputs`` are the files it reads. Without ``force`` an ``out`` that
    is one of the inputs, or any existing file (one the command may not have created), is refused.
    ``suffixes`` lists the extensions that match the format written (a ``.onnx`` name on a
    safetensors file misleads every tool that opens it); a mismatch is refused even with ``force``.
    """
    out = Path(out)
    if out.is_dir():
        raise IsADirectoryError(f"{what} {out} is a directory; give a file name")
    if suffixes is not None:
        allowed = tuple(s.lower() for s in suffixes)
        if not out.name.lower().endswith(allowed):
            raise ValueError(f"{what} {out}: the extension does not match the format written; use "
                             f"{' or '.join(allowed)}")
    if not force:
        for src in inputs:
            if out.exists() and Path(src).exists() and out.resolve() == Path(src).resolve():
                raise FileExistsError(f"{what} {out} is the input file; writing it would replace the input. "
                                      "Choose another output (or pass --force to replace it)")
        if out.exists():
            raise FileExistsError(f"{what} {out} already exists; choose another name or pass --force to replace it")
    return out
