"""The course assignments end to end: source versions earn full points, released student versions run and earn 0
with hints, typical wrong answers are caught with their hint, and the `avc_assign` command works as a user runs it."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from avc_nb.assignments import CHECK_POINTS, grade_submission, release

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "nbs" / "assignments"
NOTEBOOKS = {"01_infonce.ipynb": ("check_infonce", 12), "02_soft_positive_pairing.ipynb": ("check_soft_positive_pairing", 12),
             "03_faulty_positive_weights.ipynb": ("check_faulty_positive_weights", 10)}
# typical wrong answers: (notebook, code of the answer cell, the hint the check must print)
WRONG = {
    "one direction": ("01_infonce.ipynb", '''
def my_infonce(a, v, tau=0.07, pos_mask=None):
    s = F.normalize(a, dim=1) @ F.normalize(v, dim=1).T / tau
    return F.cross_entropy(s, torch.arange(len(a)))
''', "only the audio-to-video direction"),
    "no temperature": ("01_infonce.ipynb", '''
def my_infonce(a, v, tau=0.07, pos_mask=None):
    s, t = F.normalize(a, dim=1) @ F.normalize(v, dim=1).T, torch.arange(len(a))
    return 0.5 * (F.cross_entropy(s, t) + F.cross_entropy(s.T, t))
''', "no temperature: divide the cosine similarities by tau"),
    "across classes": ("02_soft_positive_pairing.ipynb", '''
def my_pairing(labels, p, generator=None):
    n = len(labels)
    heads = torch.rand(n, generator=generator) < p
    return torch.where(heads, torch.randint(0, n, (n,), generator=generator), torch.arange(n))
''', "paired across classes (wrong class)"),
    "no floor": ("03_faulty_positive_weights.ipynb", '''
def my_faulty_positive_weights(a, v, mu, sigma, delta=0.0, kappa=0.5, w_min=0.25):
    s = (F.normalize(a.detach(), dim=1) * F.normalize(v.detach(), dim=1)).sum(1)
    sigma = max(sigma, 1e-6)
    return torch.special.ndtr((s - mu - delta * sigma) / (sigma * math.sqrt(kappa)))
''', "no floor: w = w_min + (1 - w_min) * Phi(z)"),
}


def execute(nb_path: Path, cwd: Path):
    "Run a notebook top to bottom as Run All does; returns it with outputs, and the seconds it took."
    nb = nbformat.read(nb_path, as_version=4)
    t = time.perf_counter()
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return nb, time.perf_counter() - t


def check_cell(nb, check):
    cells = [c for c in nb.cells if c.cell_type == "code" and f"{check}(" in c.source]
    assert len(cells) == 1, [c.source for c in cells]
    out = cells[0].outputs
    text = "".join(o.get("text", "") for o in out if o.output_type == "stream")
    assert not any(o.output_type == "stream" and o.name == "stderr" for o in out), "a check cell wrote to stderr"
    result = [o for o in out if o.output_type == "execute_result"]
    return text, float(result[0].data["text/plain"])


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("student")
    release(SRC, out, verbose=False)
    return out


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_source_version_earns_full_points(name, tmp_path):
    check, top = NOTEBOOKS[name]
    nb, secs = execute(SRC / name, SRC)
    text, points = check_cell(nb, check)
    assert points == top == CHECK_POINTS[check], text
    assert f"Points: {top}/{top}" in text and "FAILED" not in text, text
    assert secs < 120, f"{name}: Run All took {secs:.0f} s"
    print(f"{name}: {points:g}/{top} in {secs:.1f} s")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_student_version_runs_and_earns_zero_with_hints(name, student_dir):
    check, top = NOTEBOOKS[name]
    text = (student_dir / name).read_text()
    assert "BEGIN SOLUTION" not in text and "HIDDEN TESTS" not in text and "raise NotImplementedError()" in text
    nb, _ = execute(student_dir / name, student_dir)  # raises if any cell fails
    out, points = check_cell(nb, check)
    assert points == 0, out
    assert f"Points: 0/{top}" in out and "not implemented yet: replace `raise NotImplementedError()`" in out, out
    assert any("is not written yet" in o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)


@pytest.mark.parametrize("mistake", WRONG)
def test_wrong_solution_is_caught_with_its_hint(mistake, student_dir, tmp_path):
    name, answer, hint = WRONG[mistake]
    check, top = NOTEBOOKS[name]
    nb = json.loads((student_dir / name).read_text())
    cell = next(c for c in nb["cells"] if c["cell_type"] == "code" and "# YOUR CODE HERE" in "".join(c["source"]))
    cell["source"] = answer.strip()
    (tmp_path / name).write_text(json.dumps(nb))
    run, _ = execute(tmp_path / name, tmp_path)  # as the student sees it
    text, shown = check_cell(run, check)
    assert hint in text and shown < top, text
    print(f"{mistake}: {shown:g}/{top}, hints: {sorted(set(l.strip() for l in text.splitlines() if 'hint:' in l))}")
    if mistake == "one direction":  # graded as an instructor does, with the hidden tests: no more points than shown
        points, most = grade_submission(SRC / name, tmp_path / name)[check]
        assert most == top and points <= shown, (points, shown)


def test_grade_submission_full_and_zero(student_dir):
    assert grade_submission(SRC / "02_soft_positive_pairing.ipynb", SRC / "02_soft_positive_pairing.ipynb") == {
        "check_soft_positive_pairing": (12.0, 12.0)}
    assert grade_submission(SRC / "02_soft_positive_pairing.ipynb", student_dir / "02_soft_positive_pairing.ipynb") == {
        "check_soft_positive_pairing": (0.0, 12.0)}


def run_cli(*args):
    code = "from avc_nb.assignments import avc_assign_cli; avc_assign_cli()"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_cli_release_and_errors(tmp_path):
    out = run_cli("release", SRC, tmp_path / "student")
    assert out.returncode == 0, out.stderr
    assert "3 notebook(s) written" in out.stdout
    assert sorted(p.name for p in (tmp_path / "student").iterdir()) == sorted(NOTEBOOKS)
    out = run_cli("nbgrader", SRC, tmp_path / "tagged")
    assert out.returncode == 0 and "graded check cell(s) tagged" in out.stdout, out.stderr
    (tmp_path / "notes.txt").write_text("not a notebook")
    for args, msg in (((tmp_path / "missing", tmp_path / "x"), "missing does not exist"),
                      ((tmp_path / "notes.txt", tmp_path / "x"), "is not a notebook"),
                      ((tmp_path / "student", tmp_path / "student"), "is the source folder")):
        out = run_cli("release", *args)
        assert out.returncode == 1, out
        assert out.stderr.startswith("avc_assign: ") and msg in out.stderr and out.stderr.count("\n") == 1, out.stderr
    out = run_cli("grade", SRC / "01_infonce.ipynb", tmp_path / "student" / "01_infonce.ipynb")
    assert out.returncode == 0 and "0/12 (check_infonce 0/12)" in out.stdout, out
