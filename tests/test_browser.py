"""The tutorial's widgets in a real browser: JupyterLab + Debian's Chromium driven by Playwright.

Starts JupyterLab on a free localhost port with a token, in a temporary copy of the repository,
opens nbs/tutorials/04_interactive.ipynb, runs all its cells, waits for the widgets to render,
picks another strategy in the pairing explorer and checks that its picture and summary change.
Screenshots go to outputs/browser/ (git-ignored). Skipped, with the commands to run, when
Chromium or Playwright is missing. Playwright's own browser download is not used: Chromium is
the system one (`executable_path`).
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "nbs/tutorials/04_interactive.ipynb"
OUT = ROOT / "outputs" / "browser"
HOW = ("install it with `apt-get update && apt-get install -y chromium` (Debian/Ubuntu, as root) and "
       "`.venv/bin/pip install playwright`; set AVC_CHROMIUM to use another Chromium binary")


def _chromium():
    for c in (os.environ.get("AVC_CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium"):
        if c and Path(c).exists():
            return c
    return None


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _copy_repo(dst: Path):
    "Tracked and untracked-but-not-ignored files only: no .venv, no data, no outputs."
    files = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for f in filter(None, files):
        src = ROOT / f
        if src.is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / f)


def _lab_settings(d: Path):
    "User settings for a clean, quiet JupyterLab: every cell in the DOM, no news or update pop-ups."
    files = {"@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
             "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False}}
    for rel, body in files.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text(json.dumps(body))


@pytest.fixture(scope="module")
def lab():
    chromium = _chromium()
    if chromium is None:
        pytest.skip(f"Chromium not found: {HOW}")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip(f"Playwright is not installed: {HOW}")
    tmp = Path(tempfile.mkdtemp(prefix="avc_browser_"))
    repo = tmp / "repo"
    _copy_repo(repo)
    _lab_settings(tmp / "settings")
    port, token = _free_port(), os.urandom(16).hex()
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(tmp / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "workspaces"),
           "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [str(Path(sys.executable).with_name("jupyter")), "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
           f"--ServerApp.token={token}", f"--ServerApp.root_dir={repo}", "--ServerApp.open_browser=False"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    log = open(tmp / "lab.log", "w")
    proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"JupyterLab exited: {(tmp / 'lab.log').read_text()[-2000:]}")
                time.sleep(0.5)
        else:
            raise RuntimeError(f"JupyterLab did not answer within 60 s: {(tmp / 'lab.log').read_text()[-2000:]}")
        yield dict(base=base, token=token, chromium=chromium, log=tmp / "lab.log")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def test_tutorial_widgets_render_and_respond(lab):
    from playwright.sync_api import sync_playwright
    OUT.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    times = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=lab["chromium"], args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.goto(f"{lab['base']}/lab/tree/{NOTEBOOK}?token={lab['token']}")
            page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=120_000)
            page.wait_for_function("() => /Idle/.test(document.body.innerText)", timeout=120_000)  # kernel started
            times["open"] = time.perf_counter() - t0
            page.click(".lm-MenuBar-itemLabel:text-is('Run')")
            page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")
            # the last view of the notebook, then no cell still running
            page.wait_for_selector(".avc-replicationexplorer img", timeout=900_000)
            page.wait_for_function(
                "() => ![...document.querySelectorAll('.jp-InputArea-prompt')].some(e => e.textContent.includes('*'))",
                timeout=300_000)
            times["run_all"] = time.perf_counter() - t0 - times["open"]
            errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
            tracebacks = [t for t in errors.all_inner_texts() if "Traceback" in t or "Error" in t]
            assert not tracebacks, tracebacks[:1]
            for cls in ("clipbrowser", "pairingexplorer", "trainingmonitor", "replicationexplorer"):
                assert page.locator(f".avc-{cls} img").count() == 1, f"{cls} did not render"
            assert page.locator(".avc-clipbrowser audio").count() == 1, "no audio player"
            assert page.locator(".avc-trainingmonitor progress, .avc-trainingmonitor .progress-bar, .avc-trainingmonitor .widget-progress").count() >= 1

            view = page.locator(".avc-pairingexplorer")
            view.scroll_into_view_if_needed()
            img, summary = view.locator("img"), view.locator(".widget-html-content").last
            src0, text0 = img.get_attribute("src"), summary.inner_text()
            assert "videos from another clip" in text0
            view.locator("select").first.select_option("hard-negative")
            page.wait_for_function("([el, s]) => el.getAttribute('src') !== s", arg=[img.element_handle(), src0], timeout=60_000)
            page.wait_for_function("(el) => el.innerText.includes(' 1 classes in the batch')", arg=summary.element_handle(),
                                   timeout=60_000)
            assert summary.inner_text() != text0
            times["change"] = time.perf_counter() - t0 - times["open"] - times["run_all"]
            view.screenshot(path=str(OUT / "04_interactive_pairing.png"))
            page.screenshot(path=str(OUT / "04_interactive.png"))
        finally:
            browser.close()
    times["total"] = time.perf_counter() - t0
    (OUT / "timing.json").write_text(json.dumps({k: round(v, 1) for k, v in times.items()}, indent=1))
    print(f"browser test: {json.dumps({k: round(v, 1) for k, v in times.items()})}; screenshots in {OUT}")
