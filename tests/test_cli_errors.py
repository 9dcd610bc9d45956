"""One error hierarchy: every FunctaError (and OSError) is one line on stderr with exit code 2."""

import errno

import pytest

import functa.cli as cli
from functa import errors
from functa.atomic import storage_errors

KINDS = [errors.DataError("data/x.npz: member 'a' declares 8 TB"), errors.ArtefactError("run/config.json: not JSON"),
         errors.CodecError("a.fta: truncated"), errors.ConfigError("field.width=1000000 is above 8192"),
         errors.LockError("out.functaset is being written by another functa process (pid 7)"),
         errors.DivergenceError("meta-learning diverged at step 5: ..."),
         FileNotFoundError(errno.ENOENT, "No such file or directory", "missing.png"),
         PermissionError(errno.EACCES, "Permission denied", "/root/x"),
         ValueError("bad value\nsecond line")]


@pytest.mark.parametrize("error", KINDS, ids=lambda e: type(e).__name__)
def test_library_errors_are_one_line_and_exit_2(monkeypatch, capsys, error):
    def fail(args):
        raise error

    monkeypatch.setattr(cli, "_run", fail)
    assert cli.main(["eval", "data", "-m", "run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("functa eval: error: ")
    if isinstance(error, OSError):
        assert error.filename in err and error.strerror in err
    else:
        assert " ".join(str(error).split()) in err


def test_every_library_error_derives_from_functa_error():
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.FunctaError)
    assert issubclass(errors.StorageError, OSError) and issubclass(errors.DataError, ValueError)


def test_storage_errors_name_the_path():
    with pytest.raises(errors.StorageError, match=r"^out/model.safetensors: cannot write: no space left on device$"):
        with storage_errors("out/model.safetensors"):
            raise OSError(errno.ENOSPC, "No space left on device")


def test_memory_error_is_a_message(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_run", lambda args: (_ for _ in ()).throw(MemoryError()))
    assert cli.main(["eval", "data", "-m", "run"]) == 2
    assert "out of memory" in capsys.readouterr().err


def test_a_bug_is_not_hidden(monkeypatch):
    monkeypatch.setattr(cli, "_run", lambda args: (_ for _ in ()).throw(KeyError("bug")))
    with pytest.raises(KeyError):  # a genuine bug keeps its traceback (exit code 1 from Python)
        cli.main(["eval", "data", "-m", "run"])
