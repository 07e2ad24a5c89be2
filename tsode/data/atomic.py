"""Atomic file writes: write a temporary file next to the destination, then rename it.

A reader never sees a half-written file, and an error (or Ctrl-C) while writing leaves the
previous file -- or no file -- behind, never a truncated one. Used for caches, forecast
outputs and saved models.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in ``dest``'s directory; on success rename it onto ``dest``.

    The temporary name keeps ``dest``'s suffix (so writers that pick a format from it work).
    On any exception the temporary file is removed and ``dest`` is untouched.

        with atomic_path("out/forecast.parquet") as tmp:
            frame.to_parquet(tmp)
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=f".tmp{dest.suffix}", dir=dest.parent)
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
    try:
        yield tmp
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(dest: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``dest`` atomically; returns ``dest`` as a Path."""
    with atomic_path(dest) as tmp:
        tmp.write_text(text)
    return Path(dest)
