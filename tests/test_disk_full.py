"""A disk that fills up gives one line naming the path and exit code 2; earlier artefacts survive.

The commands run in a subprocess whose file-size limit (``RLIMIT_FSIZE``, with ``SIGXFSZ``
ignored) makes every write fail as on a full disk, without needing a small file system. A real
``ENOSPC`` goes through the same code (``functa.atomic.storage_errors``); it is checked on a small
tmpfs where the test runs as root.
"""

import errno
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from functa.atomic import atomic_write_bytes
from functa.cli import main
from functa.errors import StorageError

from test_cli import image_folder

FAST = ["--set", "field.width=16", "--set", "field.depth=3", "--set", "field.latent_dim=8",
        "--set", "train.batch_size=4", "--set", "train.eval_items=4", "--set", "train.save_every=2",
        "--set", "train.eval_every=2"]
LIMITED = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
           "limit = int(sys.argv[1]); resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)); "
           "from functa.cli import main; sys.exit(main(sys.argv[2:]))")


def run_full_disk(*args: str, limit: int = 0) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([sys.executable, "-c", LIMITED, str(limit), "--quiet", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def digest(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def assert_one_line(proc: subprocess.CompletedProcess, command: str, path: Path) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith(f"functa {command}: error: "), proc.stderr
    assert str(path) in lines[0] and "cannot write" in lines[0], lines[0]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("disk_full")
    image_folder(root / "imgs", n=8, size=8)
    assert main(["--quiet", "fit", str(root / "imgs"), "-o", str(root / "run"), "--steps", "2", *FAST]) == 0
    assert main(["--quiet", "codec", "build", "-m", str(root / "run"), "--data", str(root / "imgs"),
                 "-o", str(root / "codec"), "--bits", "5"]) == 0
    assert main(["--quiet", "compress", str(root / "imgs" / "test" / "class0" / "0.png"), "-m", str(root / "codec"),
                 "-o", str(root / "a.fta"), "--steps", "2"]) == 0
    return root


def test_fit_new_run(made, tmp_path):
    proc = run_full_disk("fit", str(made / "imgs"), "-o", str(tmp_path / "run"), "--steps", "2", *FAST)
    assert_one_line(proc, "fit", tmp_path / "run")
    assert not [p for p in (tmp_path / "run").rglob("*") if p.is_file() and p.stat().st_size == 0]


def test_fit_resume_keeps_the_last_checkpoint(made):
    before = digest(made / "run")
    proc = run_full_disk("fit", str(made / "imgs"), "-o", str(made / "run"), "--steps", "4", *FAST)
    assert_one_line(proc, "fit", made / "run")
    assert digest(made / "run") == before  # every earlier file intact, no stray temporary files


def test_encode(made, tmp_path):
    out = tmp_path / "x.functaset"
    proc = run_full_disk("encode", str(made / "imgs"), "-m", str(made / "run"), "-o", str(out))
    assert_one_line(proc, "encode", out)


def test_codec_build_leaves_no_empty_weights(made, tmp_path):
    out = tmp_path / "codec"
    proc = run_full_disk("codec", "build", "-m", str(made / "run"), "--data", str(made / "imgs"), "-o", str(out),
                         "--bits", "5")
    assert_one_line(proc, "codec", out)
    assert not [p for p in out.rglob("*") if p.is_file() and p.stat().st_size == 0]


def test_compress_and_decompress_keep_existing_outputs(made, tmp_path):
    fta = tmp_path / "b.fta"
    fta.write_bytes(b"old")
    proc = run_full_disk("compress", str(made / "imgs" / "test" / "class1" / "1.png"), "-m", str(made / "codec"),
                         "-o", str(fta), "--steps", "2")
    assert_one_line(proc, "compress", fta)
    assert fta.read_bytes() == b"old"
    png = tmp_path / "back.png"
    png.write_bytes(b"old")
    proc = run_full_disk("decompress", str(made / "a.fta"), "-m", str(made / "codec"), "-o", str(png))
    assert_one_line(proc, "decompress", png)
    assert png.read_bytes() == b"old"


@pytest.mark.skipif(os.geteuid() != 0 or not sys.platform.startswith("linux"), reason="mounting a tmpfs needs root")
def test_real_enospc_on_a_small_tmpfs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        atomic_write_bytes(mnt / "keep.bin", b"k" * 100)
        with pytest.raises(StorageError, match=r"big\.bin: cannot write: no space left on device") as info:
            atomic_write_bytes(mnt / "big.bin", b"x" * 1_000_000)
        assert info.value.errno == errno.ENOSPC
        assert sorted(p.name for p in mnt.iterdir()) == ["keep.bin"]  # the temporary file is gone, keep.bin intact
        assert (mnt / "keep.bin").read_bytes() == b"k" * 100
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
