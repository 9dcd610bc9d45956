"""Shared pytest fixtures."""

import importlib.util
import sys
from pathlib import Path

import pytest

# Let the test suite run from a plain checkout (src layout) when functa is not pip-installed.
_SRC = Path(__file__).resolve().parents[1] / "src"
if importlib.util.find_spec("functa") is None and _SRC.is_dir():
    sys.path.insert(0, str(_SRC))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real shared datasets (``<workspace>/shared/data``); tests using it are skipped when it is absent."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"shared datasets not found at {path}")
    return path
