"""Run All: execute every notebook the way Jupyter does, in a temporary copy of the repository.

Each notebook runs in its own kernel (nbclient, every cell, `#| slow` and `#| gpu` cells included:
they must skip themselves with a message when CUDA or data are absent), with the kernel's working
directory set to the notebook's folder, as JupyterLab does. The copy holds the repository's tracked
and untracked-but-not-ignored files, so the export cells at the end of the notebooks write into the
copy, never into the repository, and no local data, caches or outputs leak in.

Each notebook gets its own fresh copy, as if it were the first one run after a clone, so what one
notebook writes (notebook 11 writes outputs/demo, which tutorial 03 reads) cannot change another.

The test fails naming the notebook and the cell that raised, and fails when a notebook takes longer
than the Run All budget (5 minutes). It prints a table of wall times either way.

This takes a while (every notebook in full: 27 notebooks took 19 minutes of wall time on 2 cores
shared with other work, 2026-11-29), so a plain `pytest tests` skips it. Run it with
    pytest -q tests/test_runall.py                    # named on the command line: it runs
    AVC_RUNALL=1 pytest -q tests                      # or switched on in a full run
Settings (environment variables):
    AVC_RUNALL_WORKERS   notebooks executed at once (default 2; each gets OMP_NUM_THREADS=1)
    AVC_RUNALL_LIMIT_S   budget per notebook in seconds (default 300)
    AVC_RUNALL_ONLY      comma-separated substrings: run only the notebooks whose path contains one
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIMIT_S = float(os.environ.get("AVC_RUNALL_LIMIT_S", 300))
WORKERS = int(os.environ.get("AVC_RUNALL_WORKERS", 2))
# A notebook still running this long after its budget is stopped: it has failed already.
GRACE_S = 120


def notebooks(root: Path = ROOT) -> list:
    "Every notebook under nbs/ (sub-folders included), as paths relative to `root`."
    nbs = sorted(p for p in (root / "nbs").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
    return [p.relative_to(root) for p in nbs]


def copy_repository(dest: Path, root: Path = ROOT) -> Path:
    "Copy the files git tracks or would track (ignored ones left out: .venv, data, caches, outputs) to `dest`."
    try:
        out = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=root, check=True,
                             capture_output=True).stdout
        files = [f for f in out.decode().split("\0") if f]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (an unpacked archive): copy the sources
        skip = {".git", ".venv", "data", "cache", "runs", "outputs", "checkpoints", "_docs", "_proc", "__pycache__"}
        files = [str(p.relative_to(root)) for p in root.rglob("*")
                 if p.is_file() and not (skip & set(p.relative_to(root).parts))]
    for f in files:
        src = root / f
        if not src.is_file(): continue  # deleted in the working tree but still tracked
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / f)
    return dest


def run_notebook(path: Path, root: Path, limit_s: float = LIMIT_S) -> dict:
    """Execute one notebook in a fresh kernel (in a child process with OMP_NUM_THREADS=1), importing avc_nb
    from `root` (the copy). Returns dict(ok, seconds, cell, error)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(root)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))}
    with tempfile.NamedTemporaryFile("r", suffix=".json", delete=False) as f: out = Path(f.name)
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, __file__, str(path), str(out), str(limit_s + GRACE_S)], env=env,
                           capture_output=True, text=True, timeout=limit_s + GRACE_S + 60)
        res = json.loads(out.read_text()) if out.stat().st_size else None
        if res is not None:  # the wall time as a student sees it: kernel start and shutdown included
            res["seconds"] = time.perf_counter() - t0
        else:
            res = dict(ok=False, seconds=time.perf_counter() - t0, cell=None,
                       error=f"the runner stopped without a result (exit {p.returncode}):\n{p.stderr[-3000:]}")
    except subprocess.TimeoutExpired:
        res = dict(ok=False, seconds=time.perf_counter() - t0, cell=None, error=f"killed after {limit_s + GRACE_S + 60:.0f} s")
    finally:
        out.unlink(missing_ok=True)
    return res


def _execute(nb_path: str, out_json: str, cell_timeout: float):
    "Child process: run every cell of `nb_path` in order, as Run All does; write the outcome to `out_json`."
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
    path = Path(nb_path)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=int(cell_timeout), kernel_name="python3", allow_errors=False,
                            resources={"metadata": {"path": str(path.parent)}})
    res = dict(ok=True, cell=None, error=None)
    t0 = time.perf_counter()
    try:
        with client.setup_kernel():
            for i, cell in enumerate(nb.cells):
                try:
                    client.execute_cell(cell, i)
                except (CellExecutionError, CellTimeoutError, DeadKernelError) as e:
                    src = "".join(cell.source).strip().splitlines()
                    msg = re.sub(r"\x1b\[[0-9;]*m", "", str(e))  # no terminal colour codes in the report
                    res.update(ok=False, cell=i, error=f"cell {i} (starting {src[0][:80] if src else ''!r}):\n{msg[-3000:]}")
                    break
    except Exception as e:  # the kernel did not start, or died between cells
        res.update(ok=False, error=f"{type(e).__name__}: {e}")
    res["seconds"] = time.perf_counter() - t0
    Path(out_json).write_text(json.dumps(res))


def _run_in_copy(nb: Path, dest: Path) -> dict:
    "A fresh copy of the repository for each notebook: what one notebook writes (11 writes outputs/demo,"
    "which tutorial 03 reads) cannot change another's run, whatever the order."
    repo = copy_repository(dest)
    return run_notebook(repo / nb, repo)


def _selected(nbs: list) -> list:
    only = [s.strip() for s in os.environ.get("AVC_RUNALL_ONLY", "").split(",") if s.strip()]
    return [p for p in nbs if not only or any(s in str(p) for s in only)]


def _wanted(config) -> bool:
    "Run when switched on (AVC_RUNALL=1) or when this file is named on the command line."
    if os.environ.get("AVC_RUNALL", "") not in ("", "0"): return True
    return any(Path(a.split("::")[0]).name == Path(__file__).name for a in config.args)


def test_notebook_list_is_complete():
    "The front door and the three walkthroughs are among the notebooks run (cheap; always runs)."
    names = {str(p) for p in notebooks()}
    for nb in ("nbs/index.ipynb", "nbs/references.ipynb", "nbs/tutorials/01_clip_to_probe.ipynb",
               "nbs/tutorials/02_why_soft_positives.ipynb", "nbs/tutorials/03_reading_a_replication.ipynb"):
        assert nb in names, f"{nb} is missing from {sorted(names)}"


def test_copy_leaves_out_ignored_files(tmp_path):
    "The copy has the notebooks and the library but none of the ignored folders (the virtual environment above all)."
    if not (ROOT / ".git").exists(): pytest.skip("not a git checkout")
    dest = copy_repository(tmp_path / "repo")
    assert (dest / "settings.ini").exists() and (dest / "nbs" / "index.ipynb").exists()
    assert not (dest / ".venv").exists() and not (dest / ".git").exists()
    assert {str(p) for p in notebooks(dest)} == {str(p) for p in notebooks()}


def test_run_all(request, tmp_path):
    if not _wanted(request.config):
        pytest.skip("Run All of every notebook takes minutes: run `pytest -q tests/test_runall.py` or set AVC_RUNALL=1")
    nbs = _selected(notebooks())
    assert nbs, f"no notebook matches AVC_RUNALL_ONLY={os.environ.get('AVC_RUNALL_ONLY')!r}"
    # longest first (times of the last run, kept in pytest's cache; unknown ones first), so the two
    # workers finish together instead of one waiting on a long notebook started last
    cache = request.config.cache
    before = cache.get("avc_runall/seconds", {}) if cache is not None else {}
    order = sorted(nbs, key=lambda p: -before.get(str(p), float("inf")))
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, WORKERS)) as ex:
        done = dict(zip(order, ex.map(lambda kp: _run_in_copy(kp[1], tmp_path / f"repo{kp[0]}"), enumerate(order))))
    total = time.perf_counter() - t0
    results = {p: done[p] for p in nbs}
    if cache is not None:
        cache.set("avc_runall/seconds", {**before, **{str(p): round(r["seconds"], 1) for p, r in results.items()}})
    w = max(len(str(p)) for p in nbs)
    lines = [f"Run All: {len(nbs)} notebooks, {WORKERS} at a time, OMP_NUM_THREADS=1 each; budget {LIMIT_S:.0f} s per notebook",
             f"{'notebook':<{w}}  {'seconds':>8}  result"]
    for p, r in results.items():
        verdict = "ok" if r["ok"] and r["seconds"] <= LIMIT_S else ("too slow" if r["ok"] else f"error in cell {r['cell']}")
        lines.append(f"{str(p):<{w}}  {r['seconds']:8.1f}  {verdict}")
    lines.append(f"{'total (wall)':<{w}}  {total:8.1f}")
    table = "\n".join(lines)
    with request.config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
        print("\n" + table)
    errors = [f"{p}: {r['error']}" for p, r in results.items() if not r["ok"]]
    slow = [f"{p}: {r['seconds']:.0f} s > {LIMIT_S:.0f} s" for p, r in results.items() if r["ok"] and r["seconds"] > LIMIT_S]
    assert not errors and not slow, table + "\n\n" + "\n\n".join(errors + slow)


if __name__ == "__main__":  # the child process of `run_notebook`
    _execute(sys.argv[1], sys.argv[2], float(sys.argv[3]))
