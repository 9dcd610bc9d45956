"""Imports go one way: fields/data/viz -> io -> fitting -> modalities/functaset -> tasks/codec -> pipeline -> downstream/compression -> cli."""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "functa"
RANK = {"errors": -2, "validation": -1, "atomic": -1, "interrupts": -1, "data": 0, "fields": 0, "device": 0, "distributed": 0, "viz": 0, "io": 1, "optim": 1, "fitting": 2, "modalities": 3, "functaset": 3, "config": 3,
        "tasks": 4, "codec": 4, "pipeline": 5, "downstream": 6, "compression": 6, "scenes": 6, "gasp": 6, "demo": 7, "cli": 8, "__main__": 9}


def _unit(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    unit = _unit(path)
    depth = len(path.relative_to(PKG).parts) - 1
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module and node.module.startswith("functa."):
                yield node.module.split(".")[1]
            elif node.level > 0:
                if node.level - 1 >= depth:
                    target = (node.module or "").split(".")[0]
                    if target:
                        yield target
                    else:
                        yield from (a.name for a in node.names)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("functa."):
                    yield a.name.split(".")[1]


FILES = sorted(p for p in PKG.rglob("*.py") if p.name != "__init__.py" or p.parent != PKG)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PKG)))
def test_no_upward_imports(path):
    unit = _unit(path)
    if unit not in RANK:
        pytest.fail(f"{unit} has no layer in RANK; add it")
    for target in _imports(path):
        if target == unit or target not in RANK:
            continue
        assert RANK[target] < RANK[unit], f"{path.relative_to(PKG)} imports functa.{target} (layer {RANK[target]} >= {RANK[unit]})"
