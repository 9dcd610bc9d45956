"""Explicit checks of settings (types, ranges, choices): a small validator with no dependency.

Every check raises :class:`~functa.errors.ConfigError` with a one-line message that names the
setting, the value and what is allowed, e.g.
``field.width = 1000000.0 is out of range (allowed: an integer in [1, 8192])``. Loaders that read a
setting from a file put the file in front (:func:`in_file`).

Config dataclasses call :func:`check_fields` from ``__post_init__`` with one spec per field::

    check_fields(self, "field", width=Int(1, 8192), w0=Real(0, 1e4, lo_open=True),
                 latent_dim=Int(1, 65536, optional=True), bias_init=Choice("zeros", "uniform"))

A spec checks the type and the range and returns the normalised value (an integral float such as
``1e3`` becomes the int ``1000``; a list becomes a tuple where the field is a tuple), which is
stored back on the (possibly frozen) dataclass.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable, Sequence
from typing import Any

from .errors import ConfigError

__all__ = ["Bool", "Choice", "Int", "IntSeq", "MAX_GRID_POINTS", "MAX_INNER_STEPS", "MAX_PARAMETERS", "Real", "RealPair", "Text",
           "check_fields", "check_total", "in_file"]

# Products that determine memory. A network of MAX_PARAMETERS float32 weights takes 512 MiB (its
# training state about four times as much); a grid of MAX_GRID_POINTS points takes 1-1.5 GiB of
# coordinates. Both are far above anything the library's presets or the papers use.
MAX_PARAMETERS = 2**27
MAX_GRID_POINTS = 2**27
MAX_INNER_STEPS = 10_000  # inner-loop steps of meta-learning (encode-time steps are given per command)

Spec = Callable[[Any, str], Any]


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fail(name: str, value: Any, allowed: str, problem: str = "is invalid") -> ConfigError:
    return ConfigError(f"{name} = {_show(value)} {problem} (allowed: {allowed})")


def _interval(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> str:
    def fmt(v: float) -> str:
        if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) < 1e15):
            return f"{int(v):,}" if abs(v) >= 10_000 else str(int(v))
        return f"{v:g}"

    return f"{'(' if lo_open else '['}{fmt(lo)}, {fmt(hi)}{')' if hi_open else ']'}"


class Int:
    """An integer in ``[lo, hi]`` (integral floats such as ``1e3`` are accepted and made ints)."""

    def __init__(self, lo: int, hi: int, *, optional: bool = False) -> None:
        self.lo, self.hi, self.optional = lo, hi, optional

    @property
    def allowed(self) -> str:
        return f"an integer in {_interval(self.lo, self.hi)}" + (" or null" if self.optional else "")

    def __call__(self, value: Any, name: str) -> int | None:
        if value is None and self.optional:
            return None
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise _fail(name, value, self.allowed, "is not an integer")
        if not isinstance(value, numbers.Integral):
            v = float(value)
            if not math.isfinite(v) or not v.is_integer():
                raise _fail(name, value, self.allowed, "is not an integer")
            if not self.lo <= v <= self.hi:
                raise _fail(name, value, self.allowed, "is out of range")
            return int(v)
        if not self.lo <= value <= self.hi:
            raise _fail(name, value, self.allowed, "is out of range")
        return int(value)


class Real:
    """A finite number in ``[lo, hi]`` (``lo_open`` / ``hi_open``: the bound itself is excluded)."""

    def __init__(self, lo: float = -math.inf, hi: float = math.inf, *, lo_open: bool = False, hi_open: bool = False,
                 optional: bool = False) -> None:
        self.lo, self.hi, self.lo_open, self.hi_open, self.optional = lo, hi, lo_open, hi_open, optional

    @property
    def allowed(self) -> str:
        if math.isinf(self.lo) and math.isinf(self.hi):
            text = "a finite number"
        elif math.isinf(self.hi):
            text = f"a finite number {'>' if self.lo_open else '>='} {self.lo:g}"
        else:
            text = f"a finite number in {_interval(self.lo, self.hi, self.lo_open, self.hi_open)}"
        return text + (" or null" if self.optional else "")

    def __call__(self, value: Any, name: str) -> float | None:
        if value is None and self.optional:
            return None
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise _fail(name, value, self.allowed, "is not a number")
        v = float(value)
        if not math.isfinite(v):
            raise _fail(name, value, self.allowed, "is not finite")
        if v < self.lo or v > self.hi or (self.lo_open and v == self.lo) or (self.hi_open and v == self.hi):
            raise _fail(name, value, self.allowed, "is out of range")
        return v


class Bool:
    """``true`` or ``false`` (not ``0`` / ``1`` or strings)."""

    def __init__(self, *, optional: bool = False) -> None:
        self.optional = optional

    def __call__(self, value: Any, name: str) -> bool | None:
        if value is None and self.optional:
            return None
        if not isinstance(value, bool) and type(value).__name__ != "bool_":  # numpy.bool_ too
            raise _fail(name, value, "true or false" + (" or null" if self.optional else ""), "is not a boolean")
        return bool(value)


class Choice:
    """One of the given strings."""

    def __init__(self, *options: str, optional: bool = False) -> None:
        self.options, self.optional = options, optional

    def __call__(self, value: Any, name: str) -> str | None:
        if value is None and self.optional:
            return None
        if not isinstance(value, str) or value not in self.options:
            allowed = "one of " + ", ".join(repr(o) for o in self.options) + (" or null" if self.optional else "")
            raise _fail(name, value, allowed)
        return value


class Text:
    """A string of at most ``max_len`` characters."""

    def __init__(self, *, max_len: int = 4096, optional: bool = False) -> None:
        self.max_len, self.optional = max_len, optional

    def __call__(self, value: Any, name: str) -> str | None:
        if value is None and self.optional:
            return None
        if not isinstance(value, str) or len(value) > self.max_len:
            raise _fail(name, value, f"a string of at most {self.max_len} characters" +
                        (" or null" if self.optional else ""))
        return value


class IntSeq:
    """A list of ``min_len..max_len`` integers in ``[lo, hi]`` (returned as a tuple, or a list with ``as_list``)."""

    def __init__(self, lo: int, hi: int, *, min_len: int = 1, max_len: int = 64, optional: bool = False,
                 as_list: bool = False) -> None:
        self.item, self.min_len, self.max_len, self.optional, self.as_list = Int(lo, hi), min_len, max_len, optional, as_list

    def __call__(self, value: Any, name: str) -> Sequence[int] | None:
        if value is None and self.optional:
            return None
        allowed = (f"a list of {self.min_len} to {self.max_len} integers in {_interval(self.item.lo, self.item.hi)}"
                   + (" or null" if self.optional else ""))
        if isinstance(value, (str, bytes, dict)) or not isinstance(value, Sequence):
            raise _fail(name, value, allowed, "is not a list")
        if not self.min_len <= len(value) <= self.max_len:
            raise _fail(name, value, allowed, "has the wrong length")
        items = [self.item(v, f"{name}[{i}]") for i, v in enumerate(value)]
        return items if self.as_list else tuple(items)


class RealPair:
    """Two finite numbers ``(a, b)`` in ``[lo, hi]`` with ``a <= b`` (a tuple)."""

    def __init__(self, lo: float, hi: float, *, optional: bool = False) -> None:
        self.item, self.optional = Real(lo, hi), optional

    def __call__(self, value: Any, name: str) -> tuple[float, float] | None:
        if value is None and self.optional:
            return None
        allowed = (f"two finite numbers [a, b] in {_interval(self.item.lo, self.item.hi)} with a <= b"
                   + (" or null" if self.optional else ""))
        if isinstance(value, (str, bytes, dict)) or not isinstance(value, Sequence) or len(value) != 2:
            raise _fail(name, value, allowed, "is not a pair")
        a, b = (self.item(v, f"{name}[{i}]") for i, v in enumerate(value))
        if a > b:
            raise _fail(name, value, allowed, "is not ordered")
        return a, b


def check_fields(obj: Any, section: str, **specs: Spec) -> None:
    """Check (and normalise in place) the fields of a dataclass ``obj``; names are ``section.field``."""
    prefix = f"{section}." if section else ""
    for name, spec in specs.items():
        object.__setattr__(obj, name, spec(getattr(obj, name), prefix + name))


def check_total(what: str, value: int, limit: int, detail: str, unit: str = "parameters") -> None:
    """Refuse a product (parameters, grid points) above ``limit``: ``detail`` names what it is made of,
    e.g. ``check_total("field", n, MAX_PARAMETERS, "width 8192 x depth 64")``."""
    if value > limit:
        raise ConfigError(f"{what}: {detail} means {value:,} {unit}, more than the {limit:,} allowed")


def in_file(path: str | os.PathLike, error: Exception) -> ConfigError:
    """``error`` (a settings problem) as a :class:`ConfigError` naming the file it was read from."""
    text = " ".join(str(error).split())
    prefix = f"{path}: "
    return ConfigError(text if text.startswith(prefix) else prefix + text)
