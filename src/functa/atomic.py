"""Atomic file writes: the lowest layer of the package (every module that writes files uses it).

A write goes to a temporary file ``.NAME.XXXX.tmp`` in the destination's directory, is flushed to
disk, and is renamed over the destination, so a reader (or a run resumed after a kill) sees either
the old file or the new one, never a mix. Files get the usual ``0o666 & ~umask`` mode (not
:func:`tempfile.mkstemp`'s 0o600), so shared artefacts stay readable by the group the umask allows.
A full disk or a read-only directory raises :class:`~functa.errors.StorageError` naming the path.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from .errors import StorageError

__all__ = ["atomic_copy", "atomic_stream", "atomic_write", "atomic_write_bytes", "file_mode", "storage_errors"]

TMP_SUFFIX = ".tmp"


def file_mode() -> int:
    """``0o666`` with the process umask applied (the mode :func:`open` would give a new file)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def storage_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn an ``OSError`` raised while writing ``path`` into a :class:`StorageError` naming it."""
    try:
        yield
    except StorageError:
        raise
    except OSError as e:
        reason = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                  errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                  errno.EPERM: "permission denied", errno.EFBIG: "file size limit exceeded"}.get(e.errno, e.strerror or str(e))
        error = StorageError(f"{path}: cannot write: {reason}")
        error.errno = e.errno
        raise error from None


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` to create a temporary file, then rename it to ``path`` atomically.

    On any failure the temporary file is removed and ``path`` is left as it was; ``OSError``\\ s
    become :class:`StorageError`. Missing parent directories are created. Returns ``path``.
    """
    path = Path(path)
    with storage_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
        os.close(fd)
        try:
            write(tmp)
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.chmod(tmp, file_mode())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`). Returns ``path``."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            handle.write(data)

    return atomic_write(path, write)


def atomic_stream(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(handle)`` on a binary file handle, then rename the file to ``path`` atomically.

    For writers that take a file object: ``atomic_stream(p, lambda f: np.savez(f, values=a))``,
    ``atomic_stream(p, lambda f: image.save(f, format="PNG"))``.
    """

    def to_file(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            write(handle)

    return atomic_write(path, to_file)


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy the file ``src`` to ``dst`` atomically (a full disk never leaves a truncated ``dst``)."""
    return atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))
