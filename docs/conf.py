# Sphinx configuration of the avc_nb docs site. Built by `python docs/build.py` (what `make docs`
# runs): it stages the notebooks of nbs/ in _proc/docs_src and calls sphinx-build with this folder
# as the configuration directory; the HTML goes to _docs/.
project = 'avc_nb'
author = 'avc_nb developers'
copyright = '2026 onwards, avc_nb developers'

extensions = ['myst_nb']
root_doc = 'index'
exclude_patterns = ['_build', '**/.ipynb_checkpoints', '**/data/**', '**/runs/**', '**/outputs/**']
myst_enable_extensions = ['dollarmath', 'colon_fence']
myst_heading_anchors = 3

# Notebooks are shown as committed: the tutorials carry their outputs (figures included), the
# library notebooks are committed clean and show their code and prose. `build.py --execute`
# switches to 'cache' (jupyter-cache under _proc/) and runs the library notebooks as well.
nb_execution_mode = 'off'
nb_execution_timeout = 900
nb_execution_excludepatterns = ['tutorials/*']
nb_execution_raise_on_error = False
nb_execution_show_tb = True
# A widget's live view needs a kernel; the views of avc_nb.widgets also leave a still image in
# their output, which is what a static page shows.
nb_mime_priority_overrides = [('html', 'application/vnd.jupyter.widget-view+json', None),
                              ('html', 'application/vnd.jupyter.widget-state+json', None)]
nb_merge_streams = True

html_theme = 'alabaster'
html_title = 'avc_nb'
html_theme_options = {'description': 'Self-supervised audio-visual learning, notebook first', 'page_width': '1200px',
                      'sidebar_collapse': True}
html_sidebars = {'**': ['about.html', 'navigation.html', 'searchbox.html']}
suppress_warnings = ['myst.header', 'myst.xref_missing', 'misc.highlighting_failure', 'mystnb.unknown_mime_type']
