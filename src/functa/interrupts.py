"""Stopping long work cleanly: Ctrl-C (SIGINT) and SIGTERM end a run between steps, never inside one.

:func:`whole_step` holds both signals back while a training step and its bookkeeping run and raises
``KeyboardInterrupt`` once the step is complete, so the checkpoint a trainer writes on the way out is
one an uninterrupted run also passes through (and a resumed run is bit-identical to it).
:func:`terminate_as_interrupt` makes SIGTERM (what ``kill``, job schedulers and ``torchrun`` send)
raise ``KeyboardInterrupt`` like Ctrl-C, so the same save-and-exit path handles both. Both act in the
main thread only (Python delivers signals there); elsewhere they do nothing.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

__all__ = ["terminate_as_interrupt", "whole_step"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def terminate_as_interrupt() -> None:
    """From now on SIGTERM raises ``KeyboardInterrupt`` (as SIGINT does)."""
    if _main_thread():
        signal.signal(signal.SIGTERM, _raise_interrupt)


@contextmanager
def whole_step() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back until the block is done, then raise ``KeyboardInterrupt`` if one came."""
    if not _main_thread():
        yield
        return
    pending: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: pending.append(signum)) for s in _SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if pending:
        raise KeyboardInterrupt
