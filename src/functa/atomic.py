"""Atomic file writes: the lowest layer of the package (every module that writes files uses it).

A write goes to a temporary file ``.NAME.XXXX.tmp`` in the destination's directory, is flushed to
disk, and is renamed over the destination, so a reader (or a run resumed after a kill) sees either
the old file or the new one, never a mix. Files get the usual ``0o666 & ~umask`` mode (not
:func:`tempfile.mkstemp`'s 0o600), so shared artefacts stay readable by the group the umask allows.
A full disk or a read-only directory raises :class:`~functa.errors.StorageError` naming the path.

An output that a command writes over several files (a run directory, a functaset, a codec, a
model directory) is guarded by :func:`output_lock`: an advisory ``flock`` on ``OUT/.functa.lock``,
released by the kernel when the process exits or is killed, so a second writer fails with
:class:`~functa.errors.LockError` and a killed run never leaves a stale lock. Taking the lock
also removes the ``.NAME.XXXXXXXX.tmp`` files that killed writers left behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from .errors import LockError, StorageError

try:  # POSIX; elsewhere outputs are not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

__all__ = ["LOCK_FILE", "atomic_copy", "atomic_stream", "atomic_write", "atomic_write_bytes", "file_mode",
           "output_lock", "remove_stale_tmp", "storage_errors"]

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


# ---------------------------------------------------------------------------- stale temporary files

LOCK_FILE = ".functa.lock"
# tempfile.mkstemp names: PREFIX + 8 characters of [a-z0-9_] + SUFFIX; ours are ".NAME." + that + ".tmp"
_TMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}" + re.escape(TMP_SUFFIX) + r"$")


def remove_stale_tmp(directory: str | os.PathLike, depth: int = 1) -> list[Path]:
    """Delete the temporary files (``.NAME.XXXXXXXX.tmp``) of killed writers in ``directory`` and in
    its sub-directories down to ``depth`` levels; returns the removed paths.

    Only safe while holding the directory's :func:`output_lock` (a live writer's temporary file
    would be removed otherwise), which is where it is called.
    """
    removed: list[Path] = []
    directory = Path(directory)
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                if depth > 0:
                    removed += remove_stale_tmp(entry.path, depth - 1)
            elif _TMP_NAME.match(entry.name) and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:  # vanished meanwhile, or not ours to remove: leave it
            pass
    return removed


# ---------------------------------------------------------------------------- advisory output locks

_held: dict[str, list] = {}  # real path -> [fd, depth]: locks this process holds (re-entrant)
_held_guard = threading.Lock()


def _holder_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    return text if text.isdigit() else "unknown"


def _acquire(directory: Path) -> int | None:
    with storage_errors(directory):
        fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            pid = _holder_pid(fd)
            os.close(fd)
            raise LockError(f"{directory} is being written by another functa process (pid {pid})") from None
        os.close(fd)  # a file system without flock (ENOLCK, EOPNOTSUPP): write unlocked, as before
        return None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:  # the pid is only for the message of a second writer
        pass
    return fd


@contextlib.contextmanager
def output_lock(directory: str | os.PathLike, clean: bool = True) -> Iterator[Path]:
    """Hold the advisory write lock of the output ``directory`` (created if missing) for the block.

    A second process asking for it raises :class:`~functa.errors.LockError` ("``DIR`` is being
    written by another functa process (pid N)") at once instead of waiting. The lock is an
    ``flock`` on ``DIR/.functa.lock``, so the kernel releases it when the holder exits or is killed:
    there is never a stale lock to delete. Re-entrant within a process (a library call that locks
    inside a command that already holds the lock just proceeds). With ``clean`` the temporary files
    of killed writers (``.NAME.XXXXXXXX.tmp``) in ``DIR`` and its sub-directories are removed once
    the lock is taken. Without ``fcntl`` (Windows) or on a file system without ``flock`` nothing is
    locked. A directory the lock created is removed again if nothing but the lock file is in it when
    the lock is released (a command that failed before writing leaves no empty output behind).
    Yields ``directory`` as a :class:`~pathlib.Path`.
    """
    directory = Path(directory)
    created = not directory.exists()
    with storage_errors(directory):
        directory.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover
        yield directory
        return
    key = os.path.realpath(directory)
    with _held_guard:
        entry = _held.get(key)
        if entry is not None:
            entry[1] += 1
    if entry is None:
        fd = _acquire(directory)
        with _held_guard:
            entry = _held[key] = [fd, 1]
        if clean:
            remove_stale_tmp(directory)
    try:
        yield directory
    finally:
        with _held_guard:
            entry[1] -= 1
            last = entry[1] == 0
            if last:
                del _held[key]
        if last and entry[0] is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(entry[0], 0)
                if created and os.listdir(directory) == [LOCK_FILE]:
                    os.unlink(directory / LOCK_FILE)
                    os.rmdir(directory)
            os.close(entry[0])  # closing the last descriptor releases the flock

