"""The docs site: `docs/build.py` (what `make docs` runs) builds HTML from the notebooks, with the
tutorials' figures; the index page opens in Chromium and links to pages whose images load."""
import importlib.util
import json
import re
import shutil
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "outputs" / "docs"


def _load_build():
    spec = importlib.util.spec_from_file_location("avc_docs_build", ROOT / "docs" / "build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _image_outputs(nb_path):
    nb = json.loads(nb_path.read_text(encoding="utf-8"))
    return sum(1 for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
               if {"image/png", "image/jpeg"} & set(o.get("data", {})))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    for mod in ("sphinx", "myst_nb"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{mod} is not installed: `.venv/bin/pip install -e '.[docs]'` (Sphinx + myst-nb)")
    tmp = tmp_path_factory.mktemp("docs")
    secs = _load_build().build(out=tmp / "html", work=tmp / "work")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "timing.json").write_text(json.dumps({"build_s": round(secs, 1)}))
    print(f"docs build: {secs:.1f} s")
    return tmp / "html"


def test_every_notebook_has_a_page_and_the_figures_are_in_it(site):
    assert (site / "index.html").exists()
    nbs = [p for p in (ROOT / "nbs").rglob("*.ipynb")
           if not {"assignments", "data", ".ipynb_checkpoints"} & set(p.relative_to(ROOT / "nbs").parts[:-1])]
    assert len(nbs) >= 10
    for p in nbs:
        page = site / p.relative_to(ROOT / "nbs").with_suffix(".html")
        assert page.exists(), f"no page for {p.name}"
        n_img = _image_outputs(p)
        html = page.read_text(encoding="utf-8")
        imgs = re.findall(r'<img[^>]+src="([^"]+)"', html)
        assert len(imgs) >= n_img, f"{page.name}: {len(imgs)} images for {n_img} figures in the notebook"
        for src in imgs:
            if not src.startswith(("data:", "http")):
                assert (page.parent / src).exists(), f"{page.name}: missing image file {src}"
    tut = (site / "tutorials" / "04_interactive.html").read_text(encoding="utf-8")
    assert "widget-view+json" not in tut                     # the widgets' still images are shown instead
    assert "#| hide" not in tut and "#| default_exp" not in (site / "14_widgets.html").read_text(encoding="utf-8")
    assert not (site / "assignments").exists()                # source assignments hold the solutions


def test_index_opens_in_chromium(site):
    chromium = next((c for c in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
                     if c and Path(c).exists()), None)
    if chromium is None:
        pytest.skip("Chromium not found: `apt-get update && apt-get install -y chromium` (as root), "
                    "and `.venv/bin/pip install playwright`")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright missing: `.venv/bin/pip install playwright`")
    OUT.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 1000})
            page.goto((site / "index.html").as_uri())
            assert "avc_nb" in page.title()
            link = page.locator("a[href$='tutorials/04_interactive.html']").first
            assert link.count() == 1, "the index has no link to the interactive tutorial"
            page.screenshot(path=str(OUT / "index.png"))
            link.click()
            page.wait_for_load_state("load")
            assert page.url.endswith("tutorials/04_interactive.html")
            broken = page.evaluate("() => [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)")
            assert not broken, broken[:3]
            page.screenshot(path=str(OUT / "04_interactive.png"), full_page=True)
        finally:
            browser.close()
    print(f"docs in Chromium: {time.perf_counter() - t0:.1f} s; screenshots in {OUT}")
