"""Fuzz functa's readers with mutated artefacts: ``.fta`` files, functasets and base networks.

Each *target* (``bench/fuzz_<name>.py``, module attribute ``TARGET``) builds one small, valid
artefact (a file or a directory) and says how a user's command reads it. The driver then, for
``--count`` inputs drawn from ``--seed``, copies the artefact, mutates one of its files (bit flips,
byte overwrites with boundary values, truncation, extension, block duplication or deletion, and
for JSON files: replacing values with other types, huge numbers, deep nesting or hostile paths),
and reads it back. An input *passes* when reading either succeeds or raises the library's own
error (:class:`functa.errors.FunctaError`); anything else is a failure. Every input is timed, and
a sampling thread records how far the resident set grows while it is read.

Usage::

    python bench/fuzz.py --target fta --count 100000 --seed 0
    python bench/fuzz.py --target functaset --target model --count 10000 --seed 1

The last line of output is one JSON object per run: counts of inputs, passes, failures by
exception type (with the first few failing inputs saved under ``--keep``), inputs over the time
and memory limits, the slowest input and the largest RSS growth. The test suite runs a few
thousand inputs of each target (``tests/test_hostile_artefacts.py``, ``tests/codec/test_hostile_fta.py``).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

sys.path.insert(0, str(Path(__file__).resolve().parent))

from functa.errors import FunctaError  # noqa: E402

TARGET_NAMES = ("fta", "functaset", "model")
BOUNDARY_INTS = [0, 1, 2, 7, 8, 15, 16, 31, 32, 63, 64, 127, 128, 255, 256, 2**15 - 1, 2**15, 2**16 - 1, 2**16,
                 2**20, 2**24, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40, 2**53, 2**63 - 1, -1, -(2**31)]
JSON_VALUES = [None, True, False, 0, -1, 1, 2**31, 2**63, 1e308, -1e308, float("nan"), "", "x", "../../etc/passwd",
               "/etc/passwd", [], {}, [[[[[]]]]], [0] * 64, {"a": {"b": {"c": {}}}}, 1e6, 1e5, 0.5, "nan"]


class Target(Protocol):
    """What the driver needs of a fuzz target."""

    name: str

    def make_seed(self, workdir: Path) -> Path:
        """Create one valid artefact under ``workdir`` (a file or a directory) and return its path."""

    def load(self, path: Path) -> None:
        """Read the artefact at ``path`` as a user's command would (raises on bad input)."""


def load_target(name: str) -> Target:
    return importlib.import_module(f"fuzz_{name}").TARGET


# --------------------------------------------------------------------------- mutations


def _mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.choice([1, 1, 1, 2, 3, 8])):
        op = rng.randrange(8)
        if not b:
            b = bytearray(rng.randbytes(rng.randrange(1, 64)))
            continue
        i = rng.randrange(len(b))
        if op == 0:  # bit flip
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1:  # random byte
            b[i] = rng.randrange(256)
        elif op == 2:  # boundary integer, little or big endian, 1/2/4/8 bytes
            width = rng.choice([1, 2, 4, 8])
            value = rng.choice(BOUNDARY_INTS) % (1 << (8 * width))
            b[i:i + width] = value.to_bytes(width, rng.choice(["little", "big"]))
        elif op == 3:  # truncate
            del b[rng.randrange(len(b)):]
        elif op == 4:  # extend with random or repeated bytes
            tail = rng.randbytes(rng.randrange(1, 256)) if rng.random() < 0.5 else bytes([rng.randrange(256)]) * rng.randrange(1, 4096)
            b[i:i] = tail
        elif op == 5:  # duplicate a block
            j = rng.randrange(i, min(len(b), i + 256) + 1)
            b[j:j] = b[i:j]
        elif op == 6:  # delete a block
            del b[i:i + rng.randrange(1, 64)]
        else:  # overwrite a block with zeros or 0xff
            b[i:i + rng.randrange(1, 16)] = bytes([rng.choice([0, 255])]) * rng.randrange(1, 16)
    return bytes(b)


def _json_paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _json_paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:16]):
            yield from _json_paths(v, prefix + (i,))


def _mutate_json(data: bytes, rng: random.Random) -> bytes:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return _mutate_bytes(data, rng)
    for _ in range(rng.choice([1, 1, 2, 3])):
        paths = list(_json_paths(obj))
        path = rng.choice(paths)
        if not path:
            obj = copy.deepcopy(rng.choice(JSON_VALUES)) if rng.random() < 0.2 else obj
            continue
        parent = obj
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        op = rng.randrange(5)
        if op == 0 and isinstance(parent, dict):
            del parent[key]
        elif op == 1 and isinstance(parent[key], (int, float)) and not isinstance(parent[key], bool):
            parent[key] = rng.choice([parent[key] * rng.choice([-1, 2, 1000, 10**9]), parent[key] + rng.choice([-1, 1]),
                                      rng.choice(BOUNDARY_INTS)])
        elif op == 2 and isinstance(parent[key], list) and parent[key]:
            parent[key] = parent[key] * rng.choice([0, 2]) if rng.random() < 0.5 else parent[key][:-1]
        else:
            parent[key] = copy.deepcopy(rng.choice(JSON_VALUES))  # a copy: later mutations must not alias it
    return json.dumps(obj).encode()


def mutate(seed: Path, out: Path, rng: random.Random) -> str:
    """Copy the artefact ``seed`` to ``out`` and mutate one of its files; returns that file's name."""
    if seed.is_dir():
        shutil.copytree(seed, out)
        files = sorted(p for p in out.rglob("*") if p.is_file())
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(seed, out)
        files = [out]
    victim = rng.choice(files)
    data = victim.read_bytes()
    is_json = victim.suffix == ".json"
    new = _mutate_json(data, rng) if is_json and rng.random() < 0.7 else _mutate_bytes(data, rng)
    if rng.random() < 0.02 and len(files) > 1:  # occasionally remove the file, or replace it by a directory
        victim.unlink()
        if rng.random() < 0.5:
            victim.mkdir()
    else:
        victim.write_bytes(new)
    return str(victim.relative_to(out)) if seed.is_dir() else victim.name


# --------------------------------------------------------------------------- driver


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _RssSampler:
    """Samples the resident set every ``interval`` seconds; ``peak_since(mark)`` is the growth since ``mark()``."""

    def __init__(self, interval: float = 0.005):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval)

    def mark(self) -> int:
        base = _rss_bytes()
        self.peak = base
        return base

    def stop(self):
        self._stop.set()
        self._thread.join()


@dataclass
class Report:
    target: str
    count: int = 0
    passed_ok: int = 0
    passed_library_error: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    over_time: int = 0
    over_memory: int = 0
    slowest_s: float = 0.0
    largest_rss_growth_mb: float = 0.0
    examples: list[dict] = field(default_factory=list)
    wall_s: float = 0.0

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["failed"] = sum(self.failures.values())
        return d


def run(target: Target, count: int, seed: int, *, time_limit_s: float = 1.0, memory_limit_mb: float = 500.0,
        keep: Path | None = None, workdir: Path | None = None, progress: Callable[[int], None] | None = None) -> Report:
    """Fuzz ``target`` with ``count`` mutated inputs; see the module docstring."""
    tmp_root = Path(tempfile.mkdtemp(prefix=f"functa-fuzz-{target.name}-", dir=workdir))
    report = Report(target.name)
    sampler = _RssSampler()
    t_start = time.perf_counter()
    try:
        seed_path = target.make_seed(tmp_root / "seed")
        rng = random.Random(seed)
        for i in range(count):
            case = tmp_root / f"case{'' if seed_path.is_dir() else seed_path.suffix}"
            if seed_path.is_dir():
                case = tmp_root / "case"
            victim = mutate(seed_path, case, rng)
            base = sampler.mark()
            t0 = time.perf_counter()
            error = None
            try:
                target.load(case)
                report.passed_ok += 1
            except FunctaError:
                report.passed_library_error += 1
            except Exception as e:  # noqa: BLE001 - counting what escapes is the point
                error = e
            elapsed = time.perf_counter() - t0
            growth = max(0, sampler.peak - base) / 2**20
            report.count += 1
            report.slowest_s = max(report.slowest_s, elapsed)
            report.largest_rss_growth_mb = max(report.largest_rss_growth_mb, growth)
            bad = []
            if error is not None:
                kind = type(error).__name__
                report.failures[kind] = report.failures.get(kind, 0) + 1
                bad.append(f"{kind}: {str(error)[:200]}")
            if elapsed > time_limit_s:
                report.over_time += 1
                bad.append(f"took {elapsed:.2f} s")
            if growth > memory_limit_mb:
                report.over_memory += 1
                bad.append(f"RSS grew {growth:.0f} MB")
            if bad and len(report.examples) < 20:
                example = {"index": i, "file": victim, "problems": bad}
                if error is not None:
                    example["traceback"] = "".join(traceback.format_exception(error)[-3:])[-1500:]
                if keep is not None:
                    dest = keep / target.name / f"input{i}"
                    shutil.rmtree(dest, ignore_errors=True)
                    (shutil.copytree if case.is_dir() else lambda a, b: (b.parent.mkdir(parents=True, exist_ok=True),
                                                                        shutil.copyfile(a, b)))(case, dest)
                    example["saved"] = str(dest)
                report.examples.append(example)
            shutil.rmtree(case, ignore_errors=True) if case.is_dir() else case.unlink(missing_ok=True)
            if progress is not None:
                progress(i + 1)
    finally:
        sampler.stop()
        report.wall_s = time.perf_counter() - t_start
        shutil.rmtree(tmp_root, ignore_errors=True)
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", action="append", choices=TARGET_NAMES, required=True)
    p.add_argument("--count", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-limit", type=float, default=1.0, help="seconds per input counted as too slow")
    p.add_argument("--memory-limit", type=float, default=500.0, help="MB of RSS growth per input counted as too much")
    p.add_argument("--keep", type=Path, default=None, help="save failing inputs under this directory")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    for name in args.target:
        step = max(1, args.count // 20)
        report = run(load_target(name), args.count, args.seed, time_limit_s=args.time_limit,
                     memory_limit_mb=args.memory_limit, keep=args.keep,
                     progress=lambda n: print(f"{name}: {n}/{args.count}", file=sys.stderr, flush=True) if n % step == 0 else None)
        print(json.dumps(report.as_dict()), flush=True)


if __name__ == "__main__":
    main()
