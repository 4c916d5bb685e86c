"""Build the static docs site (HTML) from the notebooks: `python docs/build.py [--execute] [--out _docs]`.

nbdev's own `nbdev_docs` needs Quarto, which cannot be installed here; this uses Sphinx with myst-nb
(the `docs` extra). Steps: copy nbs/ (the lessons, the tutorials, the references; not the
assignments, whose source versions hold the solutions) into _proc/docs_src; mark nbdev's set-up
cells (`#| default_exp`, `#| hide`) to be left out of the pages; give the index notebook a table of
contents; run sphinx-build with docs/conf.py. Tutorials are shown with their committed outputs;
library notebooks are committed without outputs and are shown as they are unless `--execute` runs
them (cached in _proc/docs_cache, so a second build only reruns changed notebooks). Everything but
the final HTML stays under _proc/ (git-ignored).
"""
import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {'assignments', 'data', 'runs', 'outputs', '.ipynb_checkpoints'}


def _order(p: Path) -> tuple:
    m = re.match(r'(\d+)_', p.name)
    return (int(m.group(1)) if m else 999, p.name)


def stage(src: Path, dst: Path) -> dict:
    "Copy the notebooks under `src` into `dst`, prepared for Sphinx; returns the table of contents."
    if dst.exists(): shutil.rmtree(dst)
    dst.mkdir(parents=True)
    toc = {'tutorials': [], 'lessons': [], 'other': []}
    for nb_path in sorted(src.rglob('*.ipynb')):
        rel = nb_path.relative_to(src)
        if SKIP_DIRS & set(rel.parts[:-1]): continue
        nb = json.loads(nb_path.read_text(encoding='utf-8'))
        for c in nb['cells']:
            s = ''.join(c['source']).lstrip()
            if c['cell_type'] == 'code' and (s.startswith('#| hide') or s.startswith('#| default_exp')):
                c.setdefault('metadata', {}).setdefault('tags', []).append('remove-cell')
        out = dst / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        if rel.as_posix() != 'index.ipynb':
            out.write_text(json.dumps(nb), encoding='utf-8')
            doc = rel.with_suffix('').as_posix()
            key = 'tutorials' if rel.parts[0] == 'tutorials' else 'lessons' if re.match(r'\d+_', rel.name) else 'other'
            toc[key].append((nb_path, doc))
        else:
            index_nb = nb
    for k in toc: toc[k] = [d for _, d in sorted(toc[k], key=lambda t: (t[0].parent != src, _order(t[0])))]
    tree = ''.join(f"\n```{{toctree}}\n:caption: {cap}\n:maxdepth: 1\n\n" + '\n'.join(toc[k]) + '\n```\n'
                   for k, cap in (('tutorials', 'Walkthroughs'), ('lessons', 'Lessons (one per module)'), ('other', 'Reference'))
                   if toc[k])
    if (src / 'index.ipynb').exists():
        index_nb['cells'].append(dict(cell_type='markdown', id='docs-toc', metadata={}, source=tree))
        (dst / 'index.ipynb').write_text(json.dumps(index_nb), encoding='utf-8')
    else:
        readme = (ROOT / 'README.md').read_text(encoding='utf-8') if (ROOT / 'README.md').exists() else '# avc_nb\n'
        (dst / 'index.md').write_text(readme + '\n' + tree, encoding='utf-8')
    return toc


def build(out: Path = ROOT / '_docs', execute: bool = False, quiet: bool = True, work: Path = ROOT / '_proc') -> float:
    "Stage (in `work`) and build into `out`; returns the seconds it took. Raises CalledProcessError when sphinx-build fails."
    t0 = time.perf_counter()
    src = Path(work) / 'docs_src'
    stage(ROOT / 'nbs', src)
    # Sphinx builds inside `work` (myst-nb writes its `jupyter_execute/` beside the build folder), then the HTML is copied out
    html = Path(work) / 'docs_html'
    cmd = [sys.executable, '-m', 'sphinx', '-b', 'html', '-c', str(ROOT / 'docs'), str(src), str(html),
           '-d', str(Path(work) / 'docs_doctrees'), '-j', 'auto']
    if quiet: cmd.append('-q')
    if execute: cmd += ['-D', 'nb_execution_mode=cache', '-D', f"nb_execution_cache_path={Path(work) / 'docs_cache'}"]
    subprocess.run(cmd, check=True, cwd=ROOT)
    out = Path(out)
    if out.exists(): shutil.rmtree(out)
    shutil.copytree(html, out)
    (out / '.nojekyll').touch()
    return time.perf_counter() - t0


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--out', default=str(ROOT / '_docs'), help='output folder (default: _docs/)')
    ap.add_argument('--execute', action='store_true',
                    help='also run the library notebooks (slow: every notebook\'s Run All; cached in _proc/docs_cache)')
    ap.add_argument('--verbose', action='store_true', help="show Sphinx's progress and warnings")
    a = ap.parse_args()
    secs = build(Path(a.out), execute=a.execute, quiet=not a.verbose)
    print(f"docs: {Path(a.out) / 'index.html'} built in {secs:.0f} s")
