"""The course assignments end to end: source versions earn full points, released student versions run and earn 0
with hints, typical wrong answers are caught with their hint, and the `avc_assign` command works as a user runs it."""
import json
import os
import re
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
NOTEBOOKS = {"01_infonce.ipynb": {"check_infonce": 12},
             "02_soft_positive_pairing.ipynb": {"check_soft_positive_pairing": 12},
             "03_faulty_positive_weights.ipynb": {"check_faulty_positive_weights": 10, "check_detection_auc": 4},
             "04_localization_metrics.ipynb": {"check_ciou": 10, "check_localization_auc": 8}}
# typical wrong answers: (notebook, code of the answer cells, {check: (the hint it must print, the points it must show)});
# an answer replaces the student cell that defines the same function(s), the other answer cells stay as released
WRONG = {
    "one direction": ("01_infonce.ipynb", ['''
def my_infonce(a, v, tau=0.07, pos_mask=None):
    s = F.normalize(a, dim=1) @ F.normalize(v, dim=1).T / tau
    return F.cross_entropy(s, torch.arange(len(a)))
'''], {"check_infonce": ("only the audio-to-video direction", 0)}),
    "no temperature": ("01_infonce.ipynb", ['''
def my_infonce(a, v, tau=0.07, pos_mask=None):
    s, t = F.normalize(a, dim=1) @ F.normalize(v, dim=1).T, torch.arange(len(a))
    return 0.5 * (F.cross_entropy(s, t) + F.cross_entropy(s.T, t))
'''], {"check_infonce": ("no temperature: divide the cosine similarities by tau", 0)}),
    "across classes": ("02_soft_positive_pairing.ipynb", ['''
def my_pairing(labels, p, generator=None):
    n = len(labels)
    heads = torch.rand(n, generator=generator) < p
    return torch.where(heads, torch.randint(0, n, (n,), generator=generator), torch.arange(n))
'''], {"check_soft_positive_pairing": ("paired across classes (wrong class)", None)}),
    "no floor": ("03_faulty_positive_weights.ipynb", ['''
def my_faulty_positive_weights(a, v, mu, sigma, delta=0.0, kappa=0.5, w_min=0.25):
    s = (F.normalize(a.detach(), dim=1) * F.normalize(v.detach(), dim=1)).sum(1)
    sigma = max(sigma, 1e-6)
    return torch.special.ndtr((s - mu - delta * sigma) / (sigma * math.sqrt(kappa)))
'''], {"check_faulty_positive_weights": ("no floor: w = w_min + (1 - w_min) * Phi(z)", 0)}),
    "AUC of w, not 1 - w": ("03_faulty_positive_weights.ipynb", ['''
def my_detection_auc(w, offscreen):
    w, o = np.asarray(w, dtype=float), np.asarray(offscreen, dtype=bool)
    f, c = w[o], w[~o]
    if len(f) == 0 or len(c) == 0: return float('nan')
    return float(((f[:, None] > c).sum() + 0.5 * (f[:, None] == c).sum()) / (len(f) * len(c)))
'''], {"check_detection_auc": ("this is the AUC of w itself", 1)}),
    # 04: a wrong cIoU and a wrong AUC in one run
    "plain IoU; AUC by the mean": ("04_localization_metrics.ipynb", ['''
def my_ciou(pred, gt_mask):
    G = np.asarray(gt_mask, dtype=float)
    if G.sum() == 0: raise ValueError("empty mask")
    p = resize_map(pred, G.shape)
    p = (p - p.min()) / (p.max() - p.min()) if p.max() > p.min() else np.zeros_like(p)
    P = (p > np.sort(p.ravel())[p.size // 2]) | (p >= 1)
    return float((P & (G > 0)).sum() / (P | (G > 0)).sum())
''', '''
def my_success_rate(cious, at=0.5):
    return float(np.mean(np.asarray(cious, dtype=float) >= at))

def my_localization_auc(cious):
    return float(np.mean([my_success_rate(cious, 0.05 * i) for i in range(21)]))
'''], {"check_ciou": ("this is the plain IoU", 9), "check_localization_auc": ("the mean of the 21 success rates is not the area", 3)}),
    "mean threshold; thresholds stop at 0.95": ("04_localization_metrics.ipynb", ['''
def my_ciou(pred, gt_mask):
    G = np.asarray(gt_mask, dtype=float)
    if G.sum() == 0: raise ValueError("empty mask")
    p = resize_map(pred, G.shape)
    p = (p - p.min()) / (p.max() - p.min()) if p.max() > p.min() else np.zeros_like(p)
    P = ((p > p.mean()) | (p >= 1)).astype(float)
    return float((P * G).sum() / (G.sum() + (P * (G == 0)).sum()))
''', '''
def my_success_rate(cious, at=0.5):
    return float(np.mean(np.asarray(cious, dtype=float) >= at))

def my_localization_auc(cious):
    x = np.arange(0, 1, 0.05)
    return float(np.trapezoid([my_success_rate(cious, t) for t in x], x))
'''], {"check_ciou": ("thresholded at the mean", 4), "check_localization_auc": ("the thresholds stop at 0.95", 5)}),
    "no min-max normalisation; > instead of >=": ("04_localization_metrics.ipynb", ['''
def my_ciou(pred, gt_mask):
    G = np.asarray(gt_mask, dtype=float)
    if G.sum() == 0: raise ValueError("empty mask")
    p = resize_map(pred, G.shape)
    t = np.sort(p.ravel())[int(p.size / 2)]
    p[p > t] = 1
    p[p < 1] = 0
    return float((p * G).sum() / (G.sum() + (p * (G == 0)).sum()))
''', '''
def my_success_rate(cious, at=0.5):
    return float(np.mean(np.asarray(cious, dtype=float) > at))

def my_localization_auc(cious):
    x = np.linspace(0, 1, 21)
    return float(np.trapezoid([my_success_rate(cious, t) for t in x], x))
'''], {"check_ciou": ("not min-max normalised", 9), "check_localization_auc": ("count cIoU >= at, not cIoU > at", 5)}),
}


def execute(nb_path: Path, cwd: Path):
    "Run a notebook top to bottom as Run All does; returns it with outputs, and the seconds it took."
    nb = nbformat.read(nb_path, as_version=4)
    t = time.perf_counter()
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return nb, time.perf_counter() - t


def check_cell(nb, check):
    "The printed report and the points of the one cell that calls `check`."
    cells = [c for c in nb.cells if c.cell_type == "code" and f"{check}(" in c.source]
    assert len(cells) == 1, [c.source for c in cells]
    out = cells[0].outputs
    text = "".join(o.get("text", "") for o in out if o.output_type == "stream")
    assert not any(o.output_type == "stream" and o.name == "stderr" for o in out), "a check cell wrote to stderr"
    result = [o for o in out if o.output_type == "execute_result"]
    return text, float(result[0].data["text/plain"])


def no_stderr(nb, name):
    "No cell of an executed notebook wrote to stderr (warnings a student would see as red boxes)."
    bad = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
           and any(o.output_type == "stream" and o.name == "stderr" for o in c.outputs)]
    assert not bad, f"{name}: cells {bad} wrote to stderr"


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("student")
    release(SRC, out, verbose=False)
    return out


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_source_version_earns_full_points(name, tmp_path):
    nb, secs = execute(SRC / name, SRC)
    for check, top in NOTEBOOKS[name].items():
        text, points = check_cell(nb, check)
        assert points == top == CHECK_POINTS[check], text
        assert f"Points: {top}/{top}" in text and "FAILED" not in text, text
        print(f"{name}: {check} {points:g}/{top}")
    no_stderr(nb, name)
    assert secs < 120, f"{name}: Run All took {secs:.0f} s"
    print(f"{name}: Run All in {secs:.1f} s")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_student_version_runs_and_earns_zero_with_hints(name, student_dir):
    text = (student_dir / name).read_text()
    code = "\n".join("".join(c["source"]) for c in json.loads(text)["cells"] if c["cell_type"] == "code")
    assert "BEGIN SOLUTION" not in text and "HIDDEN TESTS" not in text
    assert code.count("# YOUR CODE HERE\n    raise NotImplementedError()") == (SRC / name).read_text().count("### BEGIN SOLUTION") >= 1
    nb, _ = execute(student_dir / name, student_dir)  # raises if any cell fails
    for check, top in NOTEBOOKS[name].items():
        out, points = check_cell(nb, check)
        assert points == 0, out
        assert f"Points: 0/{top}" in out and "not implemented yet: replace `raise NotImplementedError()`" in out, out
    assert any("is not written yet" in o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def defined(code: str) -> list:
    return re.findall(r"^def (\w+)\(", code, flags=re.M)


@pytest.mark.parametrize("mistake", WRONG)
def test_wrong_solution_is_caught_with_its_hint(mistake, student_dir, tmp_path):
    name, answers, expect = WRONG[mistake]
    nb = json.loads((student_dir / name).read_text())
    for answer in answers:
        names = defined(answer)
        cells = [c for c in nb["cells"] if c["cell_type"] == "code" and "# YOUR CODE HERE" in "".join(c["source"])
                 and defined("".join(c["source"])) == names]
        assert len(cells) == 1, names
        cells[0]["source"] = answer.strip()
    (tmp_path / name).write_text(json.dumps(nb))
    run, _ = execute(tmp_path / name, tmp_path)  # as the student sees it
    for check, (hint, points) in expect.items():
        text, shown = check_cell(run, check)
        top = NOTEBOOKS[name][check]
        assert hint in text and shown < top, text
        if points is not None: assert shown == points, (check, shown, text)
        print(f"{mistake}: {check} {shown:g}/{top}, hints: {sorted(set(l.strip() for l in text.splitlines() if 'hint:' in l))}")
    if mistake in ("one direction", "no min-max normalisation; > instead of >="):
        # graded as an instructor does, with the hidden tests: no more points than shown
        graded = grade_submission(SRC / name, tmp_path / name)
        for check in expect:
            points, most = graded[check]
            assert most == NOTEBOOKS[name][check] and points <= check_cell(run, check)[1], (check, points)
        print(f"{mistake}: graded with the hidden tests {graded}")


def test_grade_submission_full_and_zero(student_dir):
    assert grade_submission(SRC / "02_soft_positive_pairing.ipynb", SRC / "02_soft_positive_pairing.ipynb") == {
        "check_soft_positive_pairing": (12.0, 12.0)}
    assert grade_submission(SRC / "02_soft_positive_pairing.ipynb", student_dir / "02_soft_positive_pairing.ipynb") == {
        "check_soft_positive_pairing": (0.0, 12.0)}


def test_grade_submission_two_checks_round_trip(student_dir, tmp_path):
    "A notebook with two exercises: release, answer only the first, grade: points for it, none for the other."
    name = "04_localization_metrics.ipynb"
    src = json.loads((SRC / name).read_text())
    sub = json.loads((student_dir / name).read_text())
    answer = next(c for c in src["cells"] if "def my_ciou(" in "".join(c["source"]))
    cell = next(c for c in sub["cells"] if c["id"] == answer["id"])
    cell["source"] = answer["source"]
    (tmp_path / name).write_text(json.dumps(sub))
    assert grade_submission(SRC / name, tmp_path / name) == {"check_ciou": (10.0, 10.0), "check_localization_auc": (0.0, 8.0)}


def run_cli(*args):
    code = "from avc_nb.assignments import avc_assign_cli; avc_assign_cli()"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_cli_release_and_errors(tmp_path):
    out = run_cli("release", SRC, tmp_path / "student")
    assert out.returncode == 0, out.stderr
    assert f"{len(NOTEBOOKS)} notebook(s) written" in out.stdout
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
