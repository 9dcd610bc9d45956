"""The library's errors: one hierarchy under :class:`FunctaError` (the lowest layer of the package).

Every error caused by what a user gives functa (a file, a config, a full disk, an output another
run is writing) is a :class:`FunctaError`; its message names the file or setting and the problem
in one line. The command line prints it as ``functa COMMAND: error: MESSAGE`` and exits with
code 2. Anything else that escapes is a bug in functa (exit code 1 with a traceback).

The classes also derive from the built-in exception that describes them best (``ValueError``,
``OSError``, ``FloatingPointError``), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = ["ArtefactError", "CodecError", "ConfigError", "DataError", "DivergenceError", "FunctaError",
           "LockError", "StorageError"]


class FunctaError(Exception):
    """Base class: bad input, a bad artefact, a full disk or a locked output (CLI exit code 2)."""


class DataError(FunctaError, ValueError):
    """A dataset file is missing, malformed, too large or in an unsupported format.

    The message always names the offending file and the problem.
    """


class ArtefactError(FunctaError, ValueError):
    """A file produced by functa is missing, corrupt or does not match what uses it."""


class CodecError(FunctaError, ValueError):
    """A compressed file cannot be decoded by this codec (corrupt, truncated, too large or made by another)."""


class ConfigError(FunctaError, ValueError):
    """A configuration value is of the wrong type or out of its allowed range."""


class LockError(FunctaError):
    """An output (run directory, functaset, codec) is being written by another process."""


class StorageError(FunctaError, OSError):
    """A file could not be written (disk full, read-only file system, permissions)."""


class DivergenceError(FunctaError, FloatingPointError):
    """Training diverged (a non-finite loss, or a validation metric far below its best)."""
