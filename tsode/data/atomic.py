"""Atomic file writes: write a temporary file next to the destination, then rename it.

A reader never sees a half-written file, and an error (or Ctrl-C) while writing leaves the
previous file -- or no file -- behind, never a truncated one. Used for caches, forecast
outputs and saved models. :func:`atomic_directory` does the same for a set of files (a saved
forecaster): they replace the previous set as one unit.
"""

from __future__ import annotations

import errno
import os
import shutil
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


#: ``renameat2`` flag: exchange two paths atomically (Linux >= 3.15, most local filesystems)
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap the directories ``a`` and ``b`` (``renameat2(RENAME_EXCHANGE)``);
    False where the platform or filesystem cannot."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _swap_into_place(tmp: Path, dest: Path) -> None:
    """Make directory ``tmp`` become ``dest``, replacing any previous ``dest`` as a whole."""
    while True:
        try:
            os.rename(tmp, dest)  # no dest (or an empty one): one rename
            return
        except OSError as err:
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EISDIR, errno.ENOTDIR,
                                 errno.EACCES, errno.EPERM):
                raise
            if not dest.is_dir():
                raise
        if _exchange(tmp, dest):  # readers see the old or the new directory, never a mix
            shutil.rmtree(tmp, ignore_errors=True)  # now holds the old content
            return
        # fallback (no atomic exchange): move the old directory aside, then rename; readers
        # may briefly find no directory, never a mix; a concurrent writer makes us retry
        aside = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old", dir=dest.parent))
        try:
            os.rename(dest, aside / "old")
        except FileNotFoundError:
            pass
        finally:
            shutil.rmtree(aside, ignore_errors=True)


@contextmanager
def atomic_directory(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a new temporary directory next to ``dest``; on success it replaces ``dest`` as a
    whole (an atomic directory exchange on Linux, else move-aside + rename).

    The files written into it appear together: a reader that opens ``dest`` sees the complete
    previous or the complete new set, never a mix of two writers. On any exception the
    temporary directory is removed and ``dest`` is untouched.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; give the usual permissions
    try:
        yield tmp
        _swap_into_place(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
