"""Corrupt *grid* functasets (spatial functa: latents ``(n, *grid, c)``; patch by patch ``(n, P, *grid, c)``)
are refused with one-line errors naming the file and the problem, before anything is allocated from a
size the files do not hold, and the commands that read functasets exit with code 2 (issue: "Corrupt
grid functasets", an acceptance check for spatial functa).

Every case starts from a genuine functaset: a tiny ``functa fit --field spatial --steps 2`` and
``functa encode`` (module-scoped), copied and then corrupted. The vector cases are in
``tests/test_hostile_artefacts.py`` and ``tests/test_artefacts.py``; these are the grid ones.

The reader also refuses non-finite latents (NaN or inf under a forged hash), ``functa info`` checks every
chunk before it describes a functaset, and a functaset of no items is refused by the commands that train
on or render its latents.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from functa.cli import main
from functa.errors import ArtefactError
from functa.functaset import Functaset

BENCH = Path(__file__).resolve().parents[1] / "bench"
FIT = ["--set", "field.channels=3", "--set", "field.width=8", "--set", "field.depth=3", "--set", "train.batch_size=4",
       "--set", "train.eval_items=2"]
TRAIN = ["--set", "train.steps=2", "--set", "train.batch_size=4", "--set", "train.warmup_steps=1"]
TRANSFORMER = ["--set", "transformer.width=8", "--set", "transformer.heads=2", "--set", "transformer.depth=1"]


def _images(root: Path, n: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):  # two classes (sub-folders)
        (root / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / "ab"[i % 2] / f"{i}.png")
    return root


def _fit_encode(data: Path, run: Path, fs: Path, *extra: str) -> str:
    assert main(["--quiet", "fit", str(data), "-o", str(run), "--field", "spatial", "--steps", "2", *FIT, *extra]) == 0
    assert main(["--quiet", "encode", str(data), "-m", str(run), "-o", str(fs), "--split", "all",
                 "--chunk-size", "4"]) == 0
    return json.loads((run / "config.json").read_text())["sha256"]


@pytest.fixture(scope="module")
def grids(tmp_path_factory):
    """Two genuine spatial runs on 6 images of 8 x 8 (grid 2: latents (2, 2, 3); grid 4: (4, 4, 3)) and
    their functasets, 2 chunks each (4 + 2 rows)."""
    root = tmp_path_factory.mktemp("grids")
    data = _images(root / "imgs", 6, 8)
    sha2 = _fit_encode(data, root / "run2", root / "fs2", "--set", "field.grid=2")
    sha4 = _fit_encode(data, root / "run4", root / "fs4", "--set", "field.grid=4")
    return SimpleNamespace(root=root, run2=root / "run2", fs2=root / "fs2", sha2=sha2, run4=root / "run4",
                           fs4=root / "fs4", sha4=sha4, latents=Functaset(root / "fs2").arrays()["latents"])


@pytest.fixture(scope="module")
def patched(tmp_path_factory):
    """A spatial run meta-learned on 8 x 8 patches (``data.patch``) and 12 x 12 items encoded patch by patch:
    latents (4, 2, 2, 3) and a ``header.patches`` block."""
    root = tmp_path_factory.mktemp("patched")
    data = _images(root / "imgs", 6, 12)
    _fit_encode(data, root / "run", root / "fs", "--set", "field.grid=2", "--set", "data.patch=[8,8]")
    return root / "fs"


@pytest.fixture(scope="module")
def fuzz():
    sys.path.insert(0, str(BENCH))
    try:
        import fuzz as driver
        import fuzz_functaset as targets
        yield SimpleNamespace(driver=driver, targets=targets)
    finally:
        sys.path.remove(str(BENCH))


# ---------------------------------------------------------------------------- helpers


def _copy(genuine: Path, dest: Path) -> Path:
    shutil.copytree(genuine, dest)
    return dest


def _edit_manifest(fs: Path, edit) -> Path:
    m = json.loads((fs / "manifest.json").read_text())
    edit(m)
    (fs / "manifest.json").write_text(json.dumps(m))
    return fs


def _header(**values):
    return lambda m: m["header"].update(values)


def _rehash(fs: Path) -> Path:
    """Make the manifest's chunk hashes those of the files again (a consistent, forged functaset)."""
    def edit(m):
        for ch in m["chunks"]:
            ch["sha256"] = hashlib.sha256((fs / ch["file"]).read_bytes()).hexdigest()
    return _edit_manifest(fs, edit)


def _declare_latents(chunk: Path, shape: list[int]) -> None:
    """Rewrite the shape that the safetensors header of ``chunk`` declares for ``latents`` (bytes unchanged)."""
    raw = chunk.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header["latents"]["shape"] = shape
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    chunk.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])


def _one_line(error: Exception, *words: str) -> str:
    text = str(error)
    assert "\n" not in text and len(text) < 400, text
    for w in words:
        assert w in text, (w, text)
    return text


def _cli_error(capsys, argv: list[str], *words: str) -> str:
    """``functa ARGV`` exits with code 2 and one stderr line ``functa COMMAND: error: ...`` holding ``words``."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    command = argv[1] if argv[0] == "--quiet" else argv[0]
    assert err.count("\n") == 0 and err.startswith(f"functa {command}: error:"), err
    for w in words:
        assert w in err, (w, err)
    return err


def test_the_genuine_grid_functasets_open(grids, capsys):
    """The starting point of every case below is accepted: grids (2, 2, 3) and (4, 4, 3) in 2 chunks."""
    for fs, shape in ((grids.fs2, (2, 2, 3)), (grids.fs4, (4, 4, 3))):
        opened = Functaset(fs)
        assert opened.latent_shape == shape and len(opened.manifest["chunks"]) == 2
        latents = opened.arrays()["latents"]
        assert tuple(latents.shape) == (6, *shape) and torch.isfinite(latents).all()
        assert main(["info", str(fs)]) == 0
    assert grids.sha2 != grids.sha4


# ---------------------------------------------------------------------------- 1. latent_shape vs the chunks


@pytest.mark.parametrize("shape, dim, words", [
    ([4, 4, 3], 48, ["(4, 2, 2, 3)", "(4, 4, 4, 3)"]),  # a bigger grid than the chunks hold
    ([4, 1, 3], 12, ["(4, 2, 2, 3)", "(4, 4, 1, 3)"]),  # the same number of values, other axes
    ([3, 2, 2], 12, ["(4, 2, 2, 3)", "(4, 3, 2, 2)"]),  # the axes permuted
    ([12], 12, ["(4, 2, 2, 3)", "(4, 12)"]),  # the grid claimed to be a vector
    ([2, 2, 3, 1], 12, ["(4, 2, 2, 3)", "(4, 2, 2, 3, 1)"]),  # an extra axis of 1
])
def test_latent_shape_that_the_chunks_do_not_hold(grids, tmp_path, shape, dim, words):
    fs = _edit_manifest(_copy(grids.fs2, tmp_path / "fs"), _header(latent_shape=shape, latent_dim=dim))
    with pytest.raises(ArtefactError) as e:
        Functaset(fs)
    _one_line(e.value, str(fs / "chunk-000000.safetensors"), "latents are F32 of shape", "the manifest declares",
              *words)


def test_latent_shape_that_disagrees_with_latent_dim(grids, tmp_path):
    fs = _edit_manifest(_copy(grids.fs2, tmp_path / "fs"), _header(latent_shape=[4, 4, 3]))  # latent_dim still 12
    with pytest.raises(ArtefactError) as e:
        Functaset(fs)
    _one_line(e.value, str(fs / "manifest.json"), "header.latent_shape [4, 4, 3]", "latent_dim = 12")


# ---------------------------------------------------------------------------- 2. hostile latent_shape


@pytest.mark.parametrize("shape, dim, words", [
    ([0, 2, 3], 12, ["header.latent_shape[0] = 0", "out of range"]),
    ([2, 0, 3], 0, ["header.latent_dim = 0", "out of range"]),
    ([-2, -2, 3], 12, ["header.latent_shape[0] = -2", "out of range"]),
    ([2, 2.5, 3], 15, ["header.latent_shape[1] = 2.5", "not an integer"]),
    ([2, "2", 3], 12, ["header.latent_shape[1] = '2'", "not an integer"]),
    ([True, 2, 6], 12, ["header.latent_shape[0] = True", "not an integer"]),
    ([[2], 2, 3], 12, ["header.latent_shape[0] = [2]", "not an integer"]),
    ([2, 2, float("nan")], 12, ["header.latent_shape[2] = nan", "not an integer"]),
    ([2, 2, 1e308], 12, ["header.latent_shape[2] = 1e+308", "out of range"]),
    ([], 12, ["header.latent_shape = []", "wrong length"]),
    ([1] * 8 + [2, 6], 12, ["header.latent_shape", "wrong length", "1 to 8"]),  # too many axes
    ("2,2,3", 12, ["header.latent_shape = '2,2,3'", "not a list"]),
    ({"grid": [2, 2]}, 12, ["header.latent_shape", "not a list"]),
    (None, 12, ["header.latent_shape = None", "not a list"]),
    ([2**24, 2**24, 3], 12, ["[16777216, 16777216, 3]", "latent_dim = 12"]),  # an enormous product ...
    ([2**24, 2**24, 3], 3 * 2**48, ["header.latent_dim = 844424930131968", "out of range"]),  # ... declared
    ([2**31, 2**31], 2**24, ["header.latent_shape[0] = 2147483648", "out of range"]),  # an axis too long
])
def test_hostile_latent_shape_is_refused(grids, tmp_path, shape, dim, words):
    fs = _edit_manifest(_copy(grids.fs2, tmp_path / "fs"), _header(latent_shape=shape, latent_dim=dim))
    t0 = time.perf_counter()
    with pytest.raises(ArtefactError) as e:
        Functaset(fs)
    assert time.perf_counter() - t0 < 1.0
    _one_line(e.value, str(fs / "manifest.json"), *words)


def test_largest_allowed_grid_is_refused_from_the_chunk_headers_before_allocating(grids, tmp_path, fuzz):
    """``latent_shape [4096, 4096, 1]`` (2**24 values, the most one latent may have) passes the schema; 4 rows
    of it would be 256 MiB. The chunk headers hold (2, 2, 3): refused before anything is read or allocated."""
    fs = _edit_manifest(_copy(grids.fs2, tmp_path / "fs"), _header(latent_shape=[4096, 4096, 1], latent_dim=2**24))
    sampler = fuzz.driver._RssSampler()
    try:
        start = sampler.mark()
        t0 = time.perf_counter()
        with pytest.raises(ArtefactError) as e:
            Functaset(fs, verify=False).arrays()
        elapsed, growth = time.perf_counter() - t0, sampler.peak - start
    finally:
        sampler.stop()
    _one_line(e.value, "chunk-000000.safetensors", "(4, 2, 2, 3)", "(4, 4096, 4096, 1)")
    assert elapsed < 1.0 and growth < 50 * 2**20, (elapsed, growth)


# ---------------------------------------------------------------------------- 3. chunk headers, truncation


@pytest.mark.parametrize("forged", [False, True], ids=["stale-hash", "rehashed"])
def test_chunk_header_declaring_another_grid(grids, tmp_path, forged):
    """The safetensors header of a chunk declares (4, 2, 3, 2) latents (the same bytes, so it parses) against
    the manifest's (2, 2, 3): refused when the functaset is opened, whether or not the hash was forged too."""
    fs = _copy(grids.fs2, tmp_path / "fs")
    _declare_latents(fs / "chunk-000000.safetensors", [4, 2, 3, 2])
    if forged:
        _rehash(fs)
    for verify in (True, False):
        with pytest.raises(ArtefactError) as e:
            Functaset(fs, verify=verify)
        _one_line(e.value, str(fs / "chunk-000000.safetensors"), "latents are F32 of shape (4, 2, 3, 2)",
                  "(4, 2, 2, 3)")


def test_chunk_rewritten_with_another_grid(grids, tmp_path):
    """A genuine safetensors chunk of (4, 4, 4, 3) latents with its hash in the manifest: the shape check
    alone refuses it."""
    fs = _copy(grids.fs2, tmp_path / "fs")
    chunk = fs / "chunk-000000.safetensors"
    tensors = load_file(chunk)
    tensors["latents"] = torch.zeros(4, 4, 4, 3)
    save_file(tensors, chunk)
    _rehash(fs)
    with pytest.raises(ArtefactError) as e:
        Functaset(fs)
    _one_line(e.value, str(chunk), "(4, 4, 4, 3)", "(4, 2, 2, 3)")


@pytest.mark.parametrize("shape", [[4, 4, 4, 3], [4, 2**20, 2**20, 3]])
def test_chunk_header_declaring_more_bytes_than_the_file_holds(grids, tmp_path, shape):
    """A header claiming a bigger (or enormous) grid than the data section holds: unreadable, refused from
    the header without allocating, with or without a forged hash."""
    fs = _copy(grids.fs2, tmp_path / "fs")
    _declare_latents(fs / "chunk-000001.safetensors", shape)
    t0 = time.perf_counter()
    with pytest.raises(ArtefactError) as e:
        Functaset(fs)
    _one_line(e.value, str(fs / "chunk-000001.safetensors"), "checksum mismatch")
    _rehash(fs)
    with pytest.raises(ArtefactError) as e:
        Functaset(fs)
    assert time.perf_counter() - t0 < 1.0
    _one_line(e.value, str(fs / "chunk-000001.safetensors"), "unreadable chunk")


@pytest.mark.parametrize("keep", [0, 8, 60, "data", -4])
def test_truncated_grid_chunk(grids, tmp_path, keep):
    """Chunk 1 cut to nothing, to 8 bytes (the header length only), inside its header, inside its latent
    data (the header intact) or 4 bytes short: refused on opening (the hash by default; without hashes
    the header check), and intact chunk 0 stays readable from the same functaset."""
    fs = _copy(grids.fs2, tmp_path / "fs")
    chunk = fs / "chunk-000001.safetensors"
    raw = chunk.read_bytes()
    if keep == "data":
        keep = 8 + struct.unpack("<Q", raw[:8])[0] + 20  # 5 floats into the data section
    chunk.write_bytes(raw[:keep])
    with pytest.raises(ArtefactError) as e:
        Functaset(fs)
    _one_line(e.value, str(chunk), "checksum mismatch (corrupt chunk)")
    with pytest.raises(ArtefactError) as e:
        Functaset(fs, verify=False)
    _one_line(e.value, str(chunk), "unreadable chunk")


# ---------------------------------------------------------------------------- patch grids


@pytest.mark.parametrize("edit, words", [
    (lambda p: p.update(num_patches=5), ["have 4 patches", "num_patches = 5", "latent_shape = [4, 2, 2, 3]"]),
    (lambda p: p.update(patch=[4, 4]), ["patches of [4, 4] have 9 patches", "num_patches = 4"]),
    (lambda p: p.update(item_grid=[0, 12]), ["header.patches.item_grid[0] = 0", "out of range"]),
    (lambda p: p.update(item_grid=[2**27, 2**27]), ["header.patches", "points, more than the"]),
    (lambda p: p.update(item_grid=[12, 12, 12, 12]), ["header.patches.item_grid", "wrong length"]),
    (lambda p: p.update(patch=[8]), ["header.patches.patch = [8]", "wrong length"]),
    (lambda p: p.update(num_patches="4"), ["header.patches.num_patches = '4'", "not an integer"]),
    (lambda p: p.pop("item_grid"), ["header.patches.item_grid = None", "not a list"]),
])
def test_patches_block_of_a_patch_grid_functaset(patched, tmp_path, edit, words):
    assert Functaset(patched).latent_shape == (4, 2, 2, 3)
    fs = _edit_manifest(_copy(patched, tmp_path / "fs"), lambda m: edit(m["header"]["patches"]))
    with pytest.raises(ArtefactError) as e:
        Functaset(fs)
    _one_line(e.value, str(fs / "manifest.json"), *words)


def test_patch_count_that_the_latent_shape_does_not_have(patched, tmp_path):
    fs = _edit_manifest(_copy(patched, tmp_path / "fs"), _header(latent_shape=[6, 2, 2, 3], latent_dim=72))
    with pytest.raises(ArtefactError) as e:
        Functaset(fs)
    _one_line(e.value, str(fs / "manifest.json"), "have 4 patches", "latent_shape = [6, 2, 2, 3]")
    fs = _edit_manifest(_copy(patched, tmp_path / "fs2"), lambda m: m["header"].pop("patches"))  # patches dropped
    Functaset(fs)  # a plain (4, 2, 2, 3) grid functaset: consistent, so accepted; render would not stitch it


# ---------------------------------------------------------------------------- 4. another base network


def test_grid_functaset_with_a_base_network_of_another_grid(grids, capsys):
    """Latents (2, 2, 3) of run2 used with run4 (grid 4: (4, 4, 3)) are refused by hash, naming both."""
    with pytest.raises(ArtefactError) as e:
        Functaset(grids.fs2).check_base_network(grids.sha4)
    _one_line(e.value, str(grids.fs2), "encoded with base network", grids.sha2[:12], grids.sha4[:12])
    words = ("encoded with base network", grids.sha2[:12], grids.sha4[:12], "only meaningful with the network")
    out = grids.root / "out"
    _cli_error(capsys, ["--quiet", "render", "-m", str(grids.run4), "--functaset", str(grids.fs2), "--indices", "0:2",
                        "-o", str(out / "render")], str(grids.fs2), *words)
    _cli_error(capsys, ["--quiet", "codec", "build", "-m", str(grids.run4), "--functaset", str(grids.fs2),
                        "-o", str(out / "codec")], str(grids.fs2), *words)
    _cli_error(capsys, ["--quiet", "classify", "train", str(grids.fs4), "--test", str(grids.fs2),
                        "-o", str(out / "classify"), *TRAIN, *TRANSFORMER], str(grids.fs2), *words)
    assert not (out / "render" / "renders.npz").exists() and not (out / "classify" / "metrics.json").exists()


def test_forged_base_network_hash_with_another_grid(grids, tmp_path, capsys):
    """A manifest that claims run4's hash for run2's (2, 2, 3) latents passes the hash check; the grid shapes
    are still compared where the latents meet the network (render, classify --test), and the commands exit 2
    saying so (the messages name the shapes, not the functaset: the check is in the callers)."""
    forged = _edit_manifest(_copy(grids.fs2, tmp_path / "forged"),
                            lambda m: m["header"]["base_network"].update(sha256=grids.sha4))
    Functaset(forged).check_base_network(grids.sha4)
    _cli_error(capsys, ["--quiet", "render", "-m", str(grids.run4), "--functaset", str(forged), "--indices", "0:2",
                        "-o", str(tmp_path / "render")], "expected latent grids (B, 4, 4, 3)", "got (2, 2, 2, 3)")
    # codec build codes the latents cell by cell (a canvas layout of (cells, channels) rows), so run4 takes
    # (2, 2, 3) grids as small canvases of 3 channels: not refused, but never a traceback either
    capsys.readouterr()
    assert main(["--quiet", "codec", "build", "-m", str(grids.run4), "--functaset", str(forged),
                 "-o", str(tmp_path / "codec")]) in (0, 2)
    _cli_error(capsys, ["--quiet", "classify", "train", str(grids.fs4), "--test", str(forged),
                        "-o", str(tmp_path / "classify"), *TRAIN, *TRANSFORMER], "latents have 12 dimensions", "48")


# ---------------------------------------------------------------------------- 5. NaN / inf latents


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_latents_written_into_a_grid_chunk_fail_its_hash(grids, tmp_path, capsys, value):
    fs = _copy(grids.fs2, tmp_path / "fs")
    chunk = fs / "chunk-000000.safetensors"
    tensors = load_file(chunk)
    tensors["latents"][1, 0, 1, 2] = value
    save_file(tensors, chunk)
    opened = Functaset(fs)  # the header is intact: the hash is checked when the chunk is read
    assert torch.equal(opened[4][0], grids.latents[4])  # chunk 1 is intact
    for read in (opened.arrays, lambda: opened.take([1]), lambda: opened[0]):
        with pytest.raises(ArtefactError) as e:
            read()
        _one_line(e.value, str(chunk), "checksum mismatch (corrupt chunk)")
    _cli_error(capsys, ["--quiet", "classify", "train", str(fs), "-o", str(tmp_path / "c"), *TRAIN, *TRANSFORMER],
               str(chunk), "checksum mismatch")


def test_non_finite_latents_under_a_forged_hash_are_refused_by_the_reader(grids, tmp_path, capsys):
    """With the hashes forged too, the reader itself refuses NaN latents (naming the chunk), so every
    command that reads the functaset, ``render`` and ``info`` included, ends with code 2 and one line."""
    fs = _copy(grids.fs2, tmp_path / "fs")
    chunk = fs / "chunk-000000.safetensors"
    tensors = load_file(chunk)
    tensors["latents"][1, 0, 1, 2] = float("nan")
    save_file(tensors, chunk)
    _rehash(fs)
    with pytest.raises(ArtefactError, match="chunk-000000.safetensors: non-finite latents"):
        Functaset(fs).arrays()
    for argv in (["classify", "train", str(fs), "-o", str(tmp_path / "c"), *TRAIN, *TRANSFORMER],
                 ["diffusion", "train", str(fs), "-o", str(tmp_path / "d"), *TRAIN],
                 ["codec", "build", "-m", str(grids.run2), "--functaset", str(fs), "-o", str(tmp_path / "k")],
                 ["render", "-m", str(grids.run2), "--functaset", str(fs), "--indices", "0:2", "-o", str(tmp_path / "r")],
                 ["info", str(fs)]):
        _cli_error(capsys, ["--quiet", *argv], "non-finite latents")


# ---------------------------------------------------------------------------- 6. the command line

CORRUPT = {  # name: (how to corrupt a copy of fs2, words of the error, the file it names)
    "bigger-grid": (lambda fs: _edit_manifest(fs, _header(latent_shape=[4, 4, 3], latent_dim=48)),
                    ["(4, 4, 4, 3)"], "chunk-000000.safetensors"),
    "other-axes": (lambda fs: _edit_manifest(fs, _header(latent_shape=[4, 1, 3])), ["(4, 4, 1, 3)"],
                   "chunk-000000.safetensors"),
    "zero-axis": (lambda fs: _edit_manifest(fs, _header(latent_shape=[2, 0, 3])), ["latent_shape[1] = 0"],
                  "manifest.json"),
    "negative-axis": (lambda fs: _edit_manifest(fs, _header(latent_shape=[-2, -2, 3])), ["latent_shape[0] = -2"],
                      "manifest.json"),
    "non-integer-axis": (lambda fs: _edit_manifest(fs, _header(latent_shape=[2, 2.5, 3], latent_dim=15)),
                         ["latent_shape[1] = 2.5"], "manifest.json"),
    "too-many-axes": (lambda fs: _edit_manifest(fs, _header(latent_shape=[1] * 8 + [2, 6])), ["wrong length"],
                      "manifest.json"),
    "enormous": (lambda fs: _edit_manifest(fs, _header(latent_shape=[2**24, 2**24, 3], latent_dim=3 * 2**48)),
                 ["header.latent_dim", "out of range"], "manifest.json"),
    "chunk-header": (lambda fs: _declare_latents(fs / "chunk-000000.safetensors", [4, 2, 3, 2]), ["(4, 2, 3, 2)"],
                     "chunk-000000.safetensors"),
    "truncated": (lambda fs: (fs / "chunk-000001.safetensors").write_bytes(
        (fs / "chunk-000001.safetensors").read_bytes()[:100]), ["checksum mismatch"], "chunk-000001.safetensors"),
}


def _corrupt(grids, tmp_path, name) -> tuple[Path, list[str]]:
    edit, words, file = CORRUPT[name]
    fs = _copy(grids.fs2, tmp_path / name)
    edit(fs)
    return fs, [str(fs / file), *words]


@pytest.mark.parametrize("command", ["classify", "diffusion", "render", "codec"])
@pytest.mark.parametrize("name", sorted(CORRUPT))
def test_commands_exit_2_on_a_corrupt_grid_functaset(grids, tmp_path, capsys, name, command):
    fs, words = _corrupt(grids, tmp_path, name)
    out = tmp_path / "out"
    argv = {"classify": ["classify", "train", str(fs), "-o", str(out), *TRAIN, *TRANSFORMER],
            "diffusion": ["diffusion", "train", str(fs), "-o", str(out), *TRAIN],
            "render": ["render", "-m", str(grids.run2), "--functaset", str(fs), "--indices", "0:2", "-o", str(out)],
            "codec": ["codec", "build", "-m", str(grids.run2), "--functaset", str(fs), "-o", str(out)]}[command]
    _cli_error(capsys, ["--quiet", *argv], *words)
    assert not any(out.glob("**/*.npz")) and not any(out.glob("**/metrics.json"))


@pytest.mark.parametrize("name", sorted(CORRUPT))
def test_info_exits_2_on_a_corrupt_grid_functaset(grids, tmp_path, capsys, name):
    fs, words = _corrupt(grids, tmp_path, name)
    _cli_error(capsys, ["info", str(fs)], *words)


# ---------------------------------------------------------------------------- empty grid functasets


def _empty(grids, tmp_path) -> Path:
    fs = _edit_manifest(_copy(grids.fs2, tmp_path / "empty"),
                        lambda m: m.update(total=0, count=0, chunks=[], complete=True))
    for chunk in fs.glob("chunk-*"):
        chunk.unlink()
    return fs


def test_empty_grid_functaset_keeps_its_latent_shape(grids, tmp_path, capsys):
    """A complete functaset of no items (a manifest listing no chunks) reads as (0, 2, 2, 3) latents, as does
    ``take([])`` of a full one (both were 1-d ``(0,)`` before): shapes stay those the manifest declares."""
    opened = Functaset(_empty(grids, tmp_path))
    assert len(opened) == 0 and opened.latent_shape == (2, 2, 3)
    for got in (opened.arrays(), opened.take([]), Functaset(grids.fs2).take([])):
        assert tuple(got["latents"].shape) == (0, 2, 2, 3) and got["latents"].dtype == torch.float32
        assert got["labels"].dtype == torch.int64 and tuple(got["labels"].shape) == (0,)
        assert set(got) == set(opened.columns)
    _cli_error(capsys, ["--quiet", "codec", "build", "-m", str(grids.run2), "--functaset", str(opened.path),
                        "-o", str(tmp_path / "codec")], "(0, ")  # no latents to fit a quantiser to


@pytest.mark.parametrize("command", ["classify", "diffusion", "render"])
def test_empty_grid_functaset_is_refused_by_the_commands(grids, tmp_path, capsys, command):
    fs, out = _empty(grids, tmp_path), tmp_path / "out"
    argv = {"classify": ["classify", "train", str(fs), "-o", str(out), *TRAIN, *TRANSFORMER],
            "diffusion": ["diffusion", "train", str(fs), "-o", str(out), *TRAIN],
            "render": ["render", "-m", str(grids.run2), "--functaset", str(fs), "-o", str(out)]}[command]
    _cli_error(capsys, ["--quiet", *argv])


# ---------------------------------------------------------------------------- fuzzing


@pytest.mark.parametrize("patches", [False, True], ids=["grid", "patches"])
def test_fuzz_grid_functasets(fuzz, tmp_path, patches):
    """A bounded run of the grid targets of ``bench/fuzz_functaset.py``: nothing escapes but the library's
    errors, nothing is slow or large, and what loads is the seed's data in the seed's grid shape."""
    target = fuzz.targets.GridFunctasetTarget(patches=patches)
    report = fuzz.driver.run(target, 600, seed=5, time_limit_s=2.0, memory_limit_mb=200.0, workdir=tmp_path)
    summary = {k: v for k, v in report.as_dict().items() if k != "examples"}
    assert report.count == 600 and not report.failures, (summary, report.examples[:3])
    assert report.over_time == 0 and report.over_memory == 0, summary
    assert report.passed_ok > 0 and report.passed_library_error > 0, summary
