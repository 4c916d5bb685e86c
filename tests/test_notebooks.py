"""Notebook hygiene: every notebook is a lesson, committed clean, with prose before each code cell."""
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NBS = sorted(p for p in (ROOT / "nbs").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def _cells(nb_path):
    return json.loads(nb_path.read_text(encoding="utf-8"))["cells"]


def _src(cell):
    return "".join(cell["source"])


def _exempt(cell):
    s = _src(cell).lstrip()
    return s.startswith("#| default_exp") or s.startswith("#| hide")


def test_there_are_notebooks():
    assert len(NBS) >= 4, NBS


@pytest.mark.parametrize("nb", NBS, ids=lambda p: p.name)
def test_every_code_cell_has_prose_before_it(nb):
    cells = _cells(nb)
    assert cells[0]["cell_type"] == "markdown" and _src(cells[0]).startswith("# "), f"{nb.name}: starts with a title"
    bad = []
    for i, c in enumerate(cells):
        if c["cell_type"] != "code" or _exempt(c):
            continue
        j = i - 1  # the previous cell that is not the `default_exp` or a hidden set-up cell
        while j > 0 and cells[j]["cell_type"] == "code" and _exempt(cells[j]):
            j -= 1
        if cells[j]["cell_type"] != "markdown":
            bad.append(i)
    assert not bad, f"{nb.name}: code cells {bad} have no markdown cell before them"


@pytest.mark.parametrize("nb", NBS, ids=lambda p: p.name)
def test_notebook_is_clean_and_small(nb):
    cells = _cells(nb)
    for i, c in enumerate(cells):
        if c["cell_type"] != "code":
            continue
        assert c.get("execution_count") is None, f"{nb.name} cell {i}: has an execution count (run nbdev_clean)"
        size = len(json.dumps(c.get("outputs", [])))
        assert size < 50_000, f"{nb.name} cell {i}: outputs of {size} bytes are too big for a lesson"
    assert nb.stat().st_size < 300_000, f"{nb.name}: {nb.stat().st_size} bytes"


@pytest.mark.parametrize("nb", NBS, ids=lambda p: p.name)
def test_test_cells_assert_something(nb):
    "A notebook that exports code must also test it in its own cells."
    src = "\n".join(_src(c) for c in _cells(nb) if c["cell_type"] == "code")
    if "#| export" in src:
        assert any(t in src for t in ("test_eq", "test_close", "test_fail", "assert ")), f"{nb.name}: no tests"


def test_every_module_comes_from_a_notebook():
    exported = set()
    for nb in NBS:
        for c in _cells(nb):
            s = _src(c).lstrip()
            if s.startswith("#| default_exp"):
                exported.add(s.split()[2])
    modules = {p.stem for p in (ROOT / "avc_nb").glob("*.py") if not p.stem.startswith("_")}
    assert modules <= exported, f"modules with no notebook: {sorted(modules - exported)}"
