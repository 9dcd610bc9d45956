"""Fuzz the NeRF scene loaders (:mod:`functa.data.scenes`) through :func:`functa.data.load_dataset`.

Each case writes a small valid dataset in a temporary directory -- Blender (``transforms_*.json`` + PNG
views), SRN (``rgb/``, ``pose/``, ``intrinsics.txt``) or a scene ``.npz`` (one scene or many, written with
``np.savez`` / ``np.savez_compressed``), 2-3 scenes x 3 views x 8x8 in one of the layouts the loaders accept
(one scene at the root, hashed scene folders, ``train/``/``test/`` folders) -- then applies 1-3 mutations:
bytes of a json / png / txt / npz truncated, flipped, replaced or appended; files deleted or replaced by
symlinks to ``/dev/zero`` or to a directory; JSON values of the wrong type (strings for numbers, nested
lists, huge numbers, ``NaN`` / ``Infinity`` literals, negative or zero ``camera_angle_x``, 3x4 or 5x5
matrices, empty frames, hostile file paths); PNG headers declaring 60000x60000 (decompression bomb) or
other sizes, modes and bit depths; ``.npy`` headers inside the zip edited to absurd shapes or other
dtypes (float images, object dtype, strings); mismatched view counts; very long file names.

Every case calls ``load_dataset(path, split)`` for split in train, test and all, under a per-case alarm
(``--time-limit``, default 10 s), with the array limit at ``--max-bytes`` (default 64 MiB) and the address
space capped (``--memory-limit``) so an unchecked allocation shows up as a MemoryError. Accepted outcomes:
a :class:`~functa.data.SceneDataset` with ``data`` (S, V, H, W, 3) uint8, ``poses`` (S, V, 4, 4) float32
finite, ``focal`` (S, V) float32 finite > 0, ``0 <= near < far``; or a :class:`~functa.errors.FunctaError`
whose message is one line and names a file under the case directory. Anything else is a failure.

    OMP_NUM_THREADS=1 taskset -c 0 python bench/fuzz_scenes.py --cases 2000 --seed 0 --kind all

Prints one JSON line: cases, loads, failures by exception type, slowest case seconds, first failures.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import resource
import shutil
import signal
import struct
import sys
import tempfile
import time
import traceback
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from functa.data import SceneDataset, load_dataset
from functa.data.safeio import array_limit
from functa.errors import FunctaError

KINDS = ("blender", "srn", "npz")
FIFO = False  # --special-files: named pipes, and the npz as a link to /dev/zero (known sniff_format hang / OOM)
V, SIZE = 3, 8
ANGLE = 0.6911112070083618


class Timeout(BaseException):
    pass


def _alarm(signum, frame):  # noqa: ARG001
    raise Timeout()


# ------------------------------------------------------------------------------------------- seeds


def rigid(theta: float, dist: float = 4.0) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    m = np.eye(4)
    m[:3, :3] = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
    m[:3, 3] = [dist * s, 0.0, dist * c]
    return m


def png_bytes(rng: random.Random, w: int = SIZE, h: int = SIZE, mode: str = "RGBA", fmt: str = "PNG") -> bytes:
    channels = {"RGBA": 4, "RGB": 3, "L": 1, "LA": 2}.get(mode, 3)
    a = np.frombuffer(rng.randbytes(w * h * channels), np.uint8).reshape(h, w, channels)
    im = Image.fromarray(a[..., 0] if channels == 1 else a, mode if mode in ("RGBA", "RGB", "L", "LA") else "RGB")
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_declaring(w: int, h: int, depth: int = 8, ctype: int = 6, idat: bytes | None = None) -> bytes:
    """A tiny PNG whose IHDR declares ``w`` x ``h`` (a decompression bomb when large)."""
    ihdr = struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, 0)
    body = zlib.compress(b"\0" * 4096, 9) if idat is None else idat
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def write_blender_scene(d: Path, rng: random.Random, n_views: int = V) -> None:
    d.mkdir(parents=True, exist_ok=True)
    files = rng.choice([["transforms_train.json"], ["transforms_train.json", "transforms_test.json"],
                        ["transforms.json"]])
    k = 0
    for name in files:
        sub = name[len("transforms_"):-5] if "_" in name else "views"
        (d / sub).mkdir(exist_ok=True)
        frames = []
        for _ in range(n_views if len(files) == 1 else (2 if name.endswith("train.json") else 1)):
            (d / sub / f"r_{k}.png").write_bytes(png_bytes(rng))
            frames.append({"file_path": f"./{sub}/r_{k}", "rotation": 0.1,
                           "transform_matrix": rigid(0.4 * k + 0.1).tolist()})
            k += 1
        doc = {"camera_angle_x": ANGLE, "frames": frames}
        if rng.random() < 0.3:
            doc.update(near=2.0, far=6.0)
        (d / name).write_text(json.dumps(doc, indent=1))


def write_srn_scene(d: Path, rng: random.Random, n_views: int = V) -> None:
    (d / "rgb").mkdir(parents=True, exist_ok=True)
    (d / "pose").mkdir(exist_ok=True)
    (d / "intrinsics.txt").write_text(rng.choice(["10. 4. 4. 0.\n0. 0. 0.\n1.\n8 8\n", "10. 4. 4. 0.\n"]))
    for i in range(n_views):
        (d / "rgb" / f"{i:06d}.png").write_bytes(png_bytes(rng, mode="RGB"))
        m = rigid(0.5 * i) @ np.diag([1.0, -1.0, -1.0, 1.0])
        (d / "pose" / f"{i:06d}.txt").write_text(" ".join(f"{x:.8f}" for x in m.reshape(-1)) + "\n")


def write_dirs(root: Path, rng: random.Random, write) -> Path:
    layout = rng.choice(["single", "flat", "split"])
    if layout == "single":
        write(root / "scene", rng)
        return root / "scene"
    if layout == "flat":
        for name in ("chair", "lego", "ficus"):
            write(root / "data" / name, rng)
    else:
        for name in ("a", "b"):
            write(root / "data" / "train" / name, rng)
        write(root / "data" / "test" / "c", rng)
    return root / "data"


def write_npz(root: Path, rng: random.Random) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    single = rng.random() < 0.5
    s = 1 if single else 4
    c = rng.choice([3, 4])
    images = np.frombuffer(rng.randbytes(s * V * SIZE * SIZE * c), np.uint8).reshape(s, V, SIZE, SIZE, c)
    poses = np.stack([np.stack([rigid(0.3 * j + i) for j in range(V)]) for i in range(s)]).astype(np.float32)
    arrays = {"images": images[0] if single else images, "poses": poses[0] if single else poses,
              "focal": np.float32(10.0) if rng.random() < 0.5 else np.full((s, V), 10.0, np.float32),
              "convention": np.array("opengl")}
    if not single:
        arrays["names"] = np.array([f"scene{i}" for i in range(s)])
    if rng.random() < 0.4:
        arrays.update(near=np.float32(2.0), far=np.float32(6.0))
    path = root / "scenes.npz"
    (np.savez_compressed if rng.random() < 0.3 else np.savez)(path, **arrays)
    return path


# --------------------------------------------------------------------------------------- mutations


HOSTILE_JSON = ['"0.5"', "[0.5]", "[[[[1]]]]", "1e400", "-1e400", "NaN", "Infinity", "-Infinity", "-0.5", "0",
                "0.0", "3.2", "1e308", "true", "null", "{}", '"x"', "123456789012345678901234567890", "-1"]


def _files(root: Path, suffixes: tuple[str, ...] = ()) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for f in filenames:
            p = Path(dirpath) / f
            if not p.is_symlink() and (not suffixes or p.suffix.lower() in suffixes):
                out.append(p)
    return sorted(out)


def _dirs(root: Path) -> list[Path]:
    return sorted(Path(dp) for dp, _, _ in os.walk(root))


def m_bytes(root: Path, rng: random.Random, desc: list[str]) -> None:
    files = _files(root)
    if not files:
        return
    f = rng.choice(files)
    data = bytearray(f.read_bytes())
    op = rng.choice(["truncate", "flip", "replace", "append", "empty", "random"])
    if op == "truncate" and data:
        data = data[: rng.randrange(len(data))]
    elif op == "flip" and data:
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
    elif op == "replace" and data:
        i = rng.randrange(len(data))
        n = rng.randint(1, 16)
        data[i : i + n] = rng.randbytes(n)
    elif op == "append":
        data += rng.randbytes(rng.randint(1, 64))
    elif op == "empty":
        data = bytearray()
    else:
        data = bytearray(rng.randbytes(rng.randint(0, 256)))
    f.write_bytes(bytes(data))
    desc.append(f"{op} {f.relative_to(root)}")


def m_fs(root: Path, rng: random.Random, desc: list[str]) -> None:
    files = _files(root)
    if not files:
        return
    if rng.random() < 0.1:  # a scene directory renamed to bytes that are not UTF-8
        dirs = [d for d in _dirs(root) if d.parent != root and d != root and d.name not in ("train", "test", "rgb", "pose")]
        if dirs:
            d = rng.choice(dirs)
            d.rename(d.with_name(os.fsdecode(b"sc\xff\xfe") + d.name))
            desc.append(f"non-UTF-8 name for {d.relative_to(root)}")
            return
    f = rng.choice(files)
    op = rng.choice(["delete", "zero-link", "dir-link", "dir", "long-name", "dangling"] + (["fifo"] if FIFO else []))
    if op == "zero-link" and f.suffix == ".npz" and not FIFO:
        op = "dangling"  # the npz as /dev/zero: read without end by the format sniffer (known, outside scenes.py)
    if op == "delete":
        f.unlink()
    elif op == "zero-link":
        f.unlink()
        f.symlink_to("/dev/zero")
    elif op == "dir-link":
        f.unlink()
        f.symlink_to(f.parent)
    elif op == "dir":
        f.unlink()
        f.mkdir()
    elif op == "dangling":
        f.unlink()
        f.symlink_to(root / "nowhere")
    elif op == "fifo":
        f.unlink()
        os.mkfifo(f)
    else:
        g = f.with_name("x" * 240 + f.suffix)
        if g != f:
            shutil.copy(f, g)
        desc.append(f"copy {f.relative_to(root)} as long name")
        return
    desc.append(f"{op} {f.relative_to(root)}")


def _json_set(doc, rng: random.Random):
    """A random hostile change to a transforms document; returns (doc or raw text, description)."""
    op = rng.randrange(12)
    frames = doc.get("frames") if isinstance(doc, dict) else None
    if op == 0:
        v = rng.choice(HOSTILE_JSON)
        return f"@{v}@", f"camera_angle_x={v}", ("camera_angle_x", v)
    if op == 1:
        key = rng.choice(["near", "far", "camera_convention"])
        v = rng.choice(HOSTILE_JSON + ['"opencv"', '"OPENCV"', '"foo"', "5.0", "100"])
        return f"@{v}@", f"{key}={v}", (key, v)
    if op == 2:
        v = rng.choice(["[]", '"frames"', "[[]]", "[1, 2]", "null", "{}", "[null]"])
        return None, f"frames={v}", ("frames", v)
    if op == 3 and frames:
        fr = rng.choice(frames)
        choice = rng.choice([[r[:3] for r in fr["transform_matrix"]], fr["transform_matrix"][:3],
                             [r + [0.0] for r in fr["transform_matrix"]] + [[0.0] * 5],
                             [[str(x) for x in r] for r in fr["transform_matrix"]], [[[0.0]] * 4] * 4,
                             "eye", [], (np.array(fr["transform_matrix"]) * 1e300).tolist(),
                             (np.array(fr["transform_matrix"]) * 2).tolist(), np.zeros((4, 4)).tolist()])
        fr["transform_matrix"] = choice
        return doc, f"transform_matrix={json.dumps(choice)[:60]}", None
    if op == 4 and frames:
        fr = rng.choice(frames)
        r, c = rng.randrange(4), rng.randrange(4)
        v = rng.choice(["NaN", "Infinity", "1e400", '"1"', "true", "null", "1e308", "[1]"])
        fr["transform_matrix"][r][c] = f"@{v}@"
        return doc, f"transform_matrix[{r}][{c}]={v}", None
    if op == 5 and frames:
        fr = rng.choice(frames)
        v = rng.choice(["", 5, None, ["a"], "/dev/zero", "../../../../../../etc/passwd", "x" * 300, "./",
                        ".", "train", "/", "./train/r_0.png/..", "\u0000", "a" * 5000, "./train/\udcff", "\ud800", "/dev/zero.png"])
        fr["file_path"] = v
        return doc, f"file_path={str(v)[:40]!r}", None
    if op == 6 and frames:
        v = rng.choice(["delete", "dup", "empty-dict", "list", "number", "many"])
        if v == "delete":
            frames.pop(rng.randrange(len(frames)))
        elif v == "dup":
            frames.append(frames[0])
        elif v == "empty-dict":
            frames.append({})
        elif v == "list":
            frames[0] = [1, 2]
        elif v == "number":
            frames[0] = 1
        else:
            doc["frames"] = frames * 2000
        return doc, f"frames {v}", None
    if op == 7:
        return "[" * 100000 + "]" * 100000, "deeply nested", None
    if op == 8:
        return rng.choice(['[]', '"x"', "1", "null", '{"camera_angle_x": 0.6}', "", "\xff\xfe", '{"frames": []}']), \
            "replaced document", None
    if op == 9 and isinstance(doc, dict):
        doc.pop(rng.choice(["camera_angle_x", "frames"]), None)
        return doc, "dropped key", None
    if op == 10 and frames:
        fr = rng.choice(frames)
        fr.pop(rng.choice(["file_path", "transform_matrix"]), None)
        return doc, "dropped frame key", None
    if isinstance(doc, dict):
        doc["camera_angle_x"] = rng.choice([1e-320, 3.14159, 3.1415926535, 1e-9, 2.0])
        return doc, f"camera_angle_x={doc['camera_angle_x']}", None
    return doc, "noop", None


def m_json(root: Path, rng: random.Random, desc: list[str]) -> None:
    files = _files(root, (".json",))
    if not files:
        return m_bytes(root, rng, desc)
    f = rng.choice(files)
    try:
        doc = json.loads(f.read_text())
    except Exception:  # an earlier mutation broke it
        doc = {}
    res, what, keyval = _json_set(doc, rng)
    if keyval is not None and isinstance(doc, dict):
        key, v = keyval
        doc[key] = "@PLACEHOLDER@"
        text = json.dumps(doc).replace('"@PLACEHOLDER@"', v)
    elif isinstance(res, str):
        text = res
    else:
        text = json.dumps(res).replace('"@', "").replace('@"', "")
    f.write_text(text, encoding="utf-8", errors="surrogateescape")
    desc.append(f"json {f.relative_to(root)}: {what}")


def m_png(root: Path, rng: random.Random, desc: list[str]) -> None:
    files = _files(root, (".png", ".jpg"))
    if not files:
        return m_bytes(root, rng, desc)
    f = rng.choice(files)
    op = rng.randrange(8)
    if op == 0:
        data, what = png_declaring(60000, 60000), "bomb 60000x60000"
    elif op == 1:
        w, h = rng.choice([(1 << 31) - 1, 0, 1, 9, 7, 65535]), rng.choice([(1 << 31) - 1, 0, 1, 8, 65535])
        data, what = png_declaring(w, h, idat=zlib.compress(b"\0" * 64)), f"declares {w}x{h}"
    elif op == 2:
        depth, ctype = rng.choice([(16, 2), (16, 6), (1, 0), (2, 3), (16, 0), (8, 3), (4, 4), (8, 1)])
        data, what = png_declaring(SIZE, SIZE, depth, ctype, idat=zlib.compress(b"\0" * 2048)), \
            f"depth {depth} ctype {ctype}"
    elif op == 3:
        w, h = rng.choice([(9, 8), (8, 9), (16, 16), (4, 4), (1, 1)])
        data, what = png_bytes(rng, w, h), f"size {w}x{h}"
    elif op == 4:
        im = Image.fromarray(np.full((SIZE, SIZE), rng.randrange(65535), np.uint16))
        buf = io.BytesIO()
        mode = rng.choice(["I;16", "I", "F", "P", "1", "CMYK", "PA"])
        if mode == "I":
            im = im.convert("I")
        elif mode == "F":
            im = im.convert("F")
            buf2 = io.BytesIO()
            im.save(buf2, "TIFF")
            f.write_bytes(buf2.getvalue())
            desc.append(f"png {f.relative_to(root)}: TIFF float")
            return
        elif mode == "P":
            im = Image.new("P", (SIZE, SIZE), 3)
            im.info["transparency"] = 3
        elif mode == "1":
            im = Image.new("1", (SIZE, SIZE), 1)
        elif mode == "CMYK":
            im = Image.new("CMYK", (SIZE, SIZE), (1, 2, 3, 4))
            im.save(buf, "JPEG")
            f.write_bytes(buf.getvalue())
            desc.append(f"png {f.relative_to(root)}: CMYK JPEG")
            return
        elif mode == "PA":
            im = Image.new("LA", (SIZE, SIZE), (3, 100))
        im.save(buf, "PNG", **({"transparency": 3} if mode == "P" else {}))
        data, what = buf.getvalue(), f"mode {mode}"
    elif op == 5:
        data, what = png_bytes(rng, fmt=rng.choice(["GIF", "BMP", "TIFF", "WEBP"]), mode="RGB"), "other format"
    elif op == 6:
        good = png_bytes(rng)
        data, what = good[: rng.randrange(8, len(good))], "truncated png"
    else:
        data, what = png_declaring(SIZE, SIZE, idat=zlib.compress(b"\0" * 10_000_000 if rng.random() < 0.1
                                                                     else b"\1" * 999)), "bad idat"
    f.write_bytes(data)
    desc.append(f"png {f.relative_to(root)}: {what}")


def m_txt(root: Path, rng: random.Random, desc: list[str]) -> None:
    files = _files(root, (".txt",))
    if not files:
        return m_bytes(root, rng, desc)
    f = rng.choice(files)
    if f.name == "intrinsics.txt":
        v = rng.choice(["", "\n\n", "nan 4 4 0\n", "inf 4 4 0", "-10 4 4 0", "0 4 4 0", "abc", "1e400 4 4 0",
                        "10 4 4 0\n0 0\n", "10 4 4 0\n8 8.5\n", "10 4 4 0\n1e400 8\n", "10 4 4 0\n1e300 1e300\n",
                        "10 4 4 0\n16 8\n", "10 4 4 0\n-8 8\n", "10 4 4 0\n4 4\n", "10\n", "1e-320 4 4 0",
                        "10 4 4 0\nnan 8\n", "\xff\xfe", "10 4 4 0\n8 8\n" * 100000, "10 4 4 0\n1 99999999999\n"])
    else:
        m = rigid(0.2).reshape(-1).tolist()
        v = rng.choice([" ".join(map(str, m[:15])), " ".join(map(str, m + [1.0])), " ".join(["nan"] * 16),
                        " ".join(["1e400"] * 16), " ".join(["1"] * 16), "", "x " * 16, " ".join(["0"] * 16),
                        " ".join(map(str, (np.array(m) * 1e300).tolist())), "\xff" * 16,
                        " ".join(map(str, m)) + "\n" * 2_000_000])
    f.write_text(v, encoding="utf-8", errors="surrogateescape")
    desc.append(f"txt {f.relative_to(root)}: {v[:40]!r}")


def m_views(root: Path, rng: random.Random, desc: list[str]) -> None:
    """Mismatched view counts / unmatched frames in SRN / Blender folders."""
    pngs = _files(root, (".png",))
    if not pngs:
        return m_bytes(root, rng, desc)
    f = rng.choice(pngs)
    op = rng.choice(["extra", "jpg-twin", "remove"])
    if op == "extra":
        g = f.with_name("999999.png")
        shutil.copy(f, g)
        if f.parent.name == "rgb":
            pose = next(iter(sorted((f.parent.parent / "pose").glob("*.txt"))), None)
            if pose is not None and rng.random() < 0.7:
                shutil.copy(pose, pose.with_name("999999.txt"))
    elif op == "jpg-twin":
        shutil.copy(f, f.with_suffix(".jpg"))
    else:
        f.unlink()
        if f.parent.name == "rgb":
            p = f.parent.parent / "pose" / (f.stem + ".txt")
            if p.exists():
                p.unlink()
    desc.append(f"views {op} {f.relative_to(root)}")


# ------------------------------------------------------------------------------------------ npz edits


def _npy(header: dict, body: bytes) -> bytes:
    text = repr(header).encode("latin1")
    pad = 64 - (10 + len(text) + 1) % 64
    text = text + b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + body


def _split_npy(data: bytes) -> tuple[dict, bytes]:
    import ast

    n = struct.unpack("<H", data[8:10])[0]
    return ast.literal_eval(data[10 : 10 + n].decode("latin1")), data[10 + n :]


def m_npz(root: Path, rng: random.Random, desc: list[str]) -> None:
    files = _files(root, (".npz",))
    if not files:
        return m_bytes(root, rng, desc)
    f = rng.choice(files)
    try:
        with zipfile.ZipFile(f) as z:
            members = {n: z.read(n) for n in z.namelist()}
            compressed = any(i.compress_type == zipfile.ZIP_DEFLATED for i in z.infolist())
    except Exception:
        return m_bytes(root, rng, desc)
    keys = sorted(members)
    key = rng.choice(keys)
    op = rng.randrange(7)
    what = ""
    try:
        header, body = _split_npy(members[key])
    except Exception:
        header, body = None, b""
    if op == 0 and header is not None:  # absurd declared shape, body kept
        shape = rng.choice([(1 << 40, 8, 8, 3), (3, 60000, 60000, 3), (2**62, 2**62), (-1, 8), (0, 8, 8, 3),
                            (1, 0, 8, 8, 3), (3, 8, 8, 3), (4, 3, 8, 8, 4), (3, 4, 4), (4, 3, 4, 4), (4, 3),
                            (4,), (), (3, 8, 8, 1), (1, 3, 8, 8, 3), (2, 3, 8, 8, 3), (1 << 20, 1 << 20, 1 << 20),
                            (4, 3, 3, 4), (3, 5, 5), (2, 8, 8, 3, 3, 3)])
        header["shape"] = shape
        members[key], what = _npy(header, body), f"shape {shape}"
    elif op == 1 and header is not None:
        descr = rng.choice(["<f4", "<f8", "|O", "<U10", "|S4", "<i8", "<c8", "<f2", "|b1", "|u1", ">f4", "<m8",
                            "[('a', '<f4')]", "<V4"])
        header["descr"] = eval(descr) if descr.startswith("[") else descr  # noqa: S307 -- a literal
        members[key], what = _npy(header, body), f"dtype {descr}"
    elif op == 2 and header is not None:
        header["fortran_order"] = True
        members[key], what = _npy(header, body), "fortran_order"
    elif op == 3:  # replace an array by another value
        val = rng.choice([np.float32(np.nan), np.float32(0.0), np.float32(-1.0), np.float32(np.inf), np.array([]),
                          np.array("opencv"), np.array("foo"), np.array(["a", "b"]), np.array(["x", "x", "x", "x"]),
                          np.zeros((4, 3, 4, 4), np.float32), np.full((4, 3, 4, 4), np.nan, np.float32),
                          np.zeros((3, 8, 8, 3), np.float32), np.array(5, np.int64), np.array(1e300),
                          np.array([1, 2], object), np.array(2.0 ** 100, np.float64), np.array(True),
                          np.broadcast_to(np.eye(4, dtype=np.float16), (4, 3, 4, 4)).copy()])
        buf = io.BytesIO()
        np.lib.format.write_array(buf, np.asarray(val), allow_pickle=True)
        members[key], what = buf.getvalue(), f"= {np.asarray(val).dtype} {np.asarray(val).shape}"
    elif op == 4:
        members.pop(key)
        what = "removed"
    elif op == 5:
        extra = rng.choice(["near", "far", "names", "convention", "images2"])
        val = rng.choice([np.float32(5.0), np.float32(1.0), np.float32(-3), np.array(["a"]), np.array(["s"] * 4),
                          np.array([[1.0]]), np.array("opencv")])
        buf = io.BytesIO()
        np.lib.format.write_array(buf, np.asarray(val))
        members[extra + ".npy"], what = buf.getvalue(), f"add {extra}={val!r}"[:60]
    else:
        members[key], what = members[key][: rng.randrange(max(1, len(members[key])))], "member truncated"
    with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED) as z:
        for n, data in members.items():
            z.writestr(n, data)
    desc.append(f"npz {f.relative_to(root)} {key}: {what}")


def m_zipdir(root: Path, rng: random.Random, desc: list[str]) -> None:
    """Corrupt the zip directory (sizes) of an npz."""
    files = _files(root, (".npz",))
    if not files:
        return m_bytes(root, rng, desc)
    f = rng.choice(files)
    data = bytearray(f.read_bytes())
    cd = data.rfind(b"PK\x01\x02")
    if cd < 0:
        return m_bytes(root, rng, desc)
    off = cd + rng.choice([20, 24, 10, 42])  # compressed size, file size, method, local header offset
    data[off : off + 4] = struct.pack("<I", rng.choice([0, 1, 0xFFFFFFFF, 1 << 30, 99]))
    f.write_bytes(bytes(data))
    desc.append(f"zipdir {f.relative_to(root)} @{off - cd}")


MUTATORS = {
    "blender": [m_bytes, m_fs, m_json, m_json, m_json, m_png, m_png, m_views],
    "srn": [m_bytes, m_fs, m_txt, m_txt, m_png, m_png, m_views, m_views],
    "npz": [m_bytes, m_npz, m_npz, m_npz, m_npz, m_zipdir, m_fs],
}


# ------------------------------------------------------------------------------------------- checks


def _no_scene_metadata(root: Path) -> bool:
    """No ``transforms*.json`` / ``intrinsics.txt`` entry is left (deleted): the folder is a plain image folder."""
    for dirpath, dirnames, filenames in os.walk(root):
        for n in filenames + dirnames:
            if n == "intrinsics.txt" or (n.startswith("transforms") and n.endswith(".json")):
                return False
    return True


def check_dataset(ds, root: Path, kind: str) -> None:
    if kind != "npz" and not isinstance(ds, SceneDataset) and _no_scene_metadata(root):
        return  # every camera file deleted: loading the views as an image folder is right
    assert isinstance(ds, SceneDataset), f"returned {type(ds).__name__}"
    d, p, f = ds.data, ds.poses, ds.focal
    assert d.ndim == 5 and d.shape[-1] == 3 and d.dtype == np.uint8, f"data {d.shape} {d.dtype}"
    s, v = d.shape[:2]
    assert s >= 1 and v >= 1 and d.shape[2] >= 1 and d.shape[3] >= 1, f"empty data {d.shape}"
    assert p.shape == (s, v, 4, 4) and p.dtype == np.float32 and np.isfinite(p).all(), f"poses {p.shape} {p.dtype}"
    assert f.shape == (s, v) and f.dtype == np.float32 and np.isfinite(f).all() and (f > 0).all(), "focal"
    assert 0 <= ds.near < ds.far < math.inf, f"near/far {ds.near} {ds.far}"
    assert len(ds.meta.get("names", [])) == s, "names"


def run_case(kind: str, seed: int, base: Path, time_limit: float) -> tuple[str | None, str, float, list[str]]:
    """(failure type or None, detail, seconds, mutations)."""
    rng = random.Random(seed)
    root = base / f"case{seed}"
    root.mkdir()
    if kind == "blender":
        path = write_dirs(root, rng, write_blender_scene)
    elif kind == "srn":
        path = write_dirs(root, rng, write_srn_scene)
    else:
        path = write_npz(root, rng)
    desc: list[str] = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        try:
            rng.choice(MUTATORS[kind])(root, rng, desc)
        except OSError as e:  # a mutation an earlier one made impossible (e.g. a file turned into a link)
            desc.append(f"mutation skipped ({e})")
    failure, detail = None, ""
    t0 = time.perf_counter()
    signal.setitimer(signal.ITIMER_REAL, time_limit)
    try:
        for split in ("train", "test", "all"):
            try:
                ds = load_dataset(path, split, progress=False)
                check_dataset(ds, root, kind)
            except FunctaError as e:
                msg = str(e)
                if "\n" in msg or not msg:
                    failure, detail = "multi-line-message", f"{split}: {msg[:300]!r}"
                    break
                if "out of memory" in msg or "directory too large" in msg:  # a MemoryError under the address cap
                    failure, detail = "MemoryError (as DataError)", f"{split}: {msg[:300]}"
                    break
                if str(root) not in msg:
                    failure, detail = "message-without-file", f"{split}: {msg[:300]}"
                    break
            except AssertionError as e:
                failure, detail = "bad-dataset", f"{split}: {e}"
                break
            except Timeout:
                raise
            except BaseException as e:  # noqa: BLE001 -- everything else is a failure
                tb = traceback.extract_tb(e.__traceback__)[-1]
                failure, detail = type(e).__name__, f"{split}: {str(e)[:200]} at {Path(tb.filename).name}:{tb.lineno}"
                break
    except Timeout:
        failure, detail = "timeout", f"over {time_limit} s"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    dt = time.perf_counter() - t0
    shutil.rmtree(root, ignore_errors=True)
    return failure, detail, dt, desc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kind", choices=[*KINDS, "all"], default="all")
    p.add_argument("--time-limit", type=float, default=10.0, help="seconds per case (all three splits)")
    p.add_argument("--max-bytes", default="64M", help="the array limit (FUNCTA_MAX_ARRAY_BYTES)")
    p.add_argument("--memory-limit", type=float, default=2048.0,
                   help="MiB of address space beyond what is mapped at start (an unchecked allocation fails)")
    p.add_argument("--special-files", action="store_true",
                   help="also named pipes and an npz linked to /dev/zero (known: sniff_format / safeio.Npz hang or "
                        "read without bound; outside scenes.py)")
    p.add_argument("--show", type=int, default=5, help="failing inputs described in the summary")
    args = p.parse_args()

    global FIFO
    FIFO = args.special_files
    os.environ["FUNCTA_MAX_ARRAY_BYTES"] = str(args.max_bytes)
    signal.signal(signal.SIGALRM, _alarm)
    with open("/proc/self/statm") as fh:
        mapped = int(fh.read().split()[0]) * resource.getpagesize()
    cap = mapped + int(args.memory_limit * (1 << 20))
    resource.setrlimit(resource.RLIMIT_AS, (cap, resource.getrlimit(resource.RLIMIT_AS)[1]))

    kinds = KINDS if args.kind == "all" else (args.kind,)
    failures: dict[str, int] = {}
    examples: list[dict] = []
    slowest = (0.0, None)
    per_kind = {k: 0 for k in kinds}
    with tempfile.TemporaryDirectory(prefix="fuzz_scenes_") as tmp, array_limit(args.max_bytes):
        for n in range(args.cases):
            kind = kinds[n % len(kinds)]
            case_seed = args.seed * 1_000_003 + n
            failure, detail, dt, desc = run_case(kind, case_seed, Path(tmp), args.time_limit)
            per_kind[kind] += 1
            if dt > slowest[0]:
                slowest = (dt, {"kind": kind, "seed": case_seed, "mutations": desc})
            if failure is not None:
                failures[failure] = failures.get(failure, 0) + 1
                if len(examples) < args.show:
                    examples.append({"kind": kind, "seed": case_seed, "failure": failure, "detail": detail,
                                     "mutations": desc})
            if (n + 1) % max(1, args.cases // 10) == 0:
                print(f"{n + 1}/{args.cases} cases, {sum(failures.values())} failures", file=sys.stderr, flush=True)
    print(json.dumps({"cases": args.cases, "kinds": per_kind, "seed": args.seed, "failures": sum(failures.values()),
                      "failures_by_type": failures, "slowest_case_s": round(slowest[0], 4),
                      "slowest_case": slowest[1], "first_failures": examples}), flush=True)


if __name__ == "__main__":
    main()
