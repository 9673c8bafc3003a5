"""Sphinx configuration of fastrnn's documentation site (PyData theme).

Build: ``pip install ".[docs]"`` (fastrnn itself must be importable: the API reference is
generated from its docstrings), then ``sphinx-build -W --keep-going -b html docs
docs/_build/html``; CI (.ci/run) runs exactly that.
"""

from __future__ import annotations

import fastrnn

project = "fastrnn"
author = "the fastrnn developers"
copyright = "the fastrnn developers"
release = fastrnn.__version__
version = release

# The project's home: the placeholder URL that pyproject.toml's [project.urls] names too.
REPOSITORY = "https://github.com/fastrnn/fastrnn"

extensions = [
    "myst_parser",  # the pages are Markdown (MyST), like README.md and docs/design.md
    "sphinx_design",  # the cards of the front page
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",  # the docstrings are numpydoc style (Parameters, Returns, Raises)
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build"]

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

autosummary_generate = True
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
# Optional dependencies the API pages import: mocked where missing so that the docs build
# without them (fastrnn.torch subclasses torch's classes, so torch itself is required).
autodoc_mock_imports = ["mpi4py"]
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_param = True

# No intersphinx: CI has no network, and an inventory that cannot be fetched is a warning.

html_theme = "pydata_sphinx_theme"
html_title = f"fastrnn {release}"
html_theme_options = {
    "github_url": REPOSITORY,
    "navbar_align": "left",
    "header_links_before_dropdown": 5,
    "show_toc_level": 2,
    "navigation_with_keys": False,
    # the guide's pages have no sections: no "on this page" column beside them
    "secondary_sidebar_items": {"guide/*": []},
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version", "theme-version"],
}
html_context = {"default_mode": "light"}
html_static_path = ["_static"]
html_css_files = ["fastrnn.css"]
# The left sidebar lists a section's pages: only the user guide and the API reference have
# any, so the other pages give its width to their content (the performance tables are wide).
html_sidebars = {
    page: []
    for page in (
        "index",
        "getting-started",
        "notation",
        "torch",
        "onnx",
        "long-sequences",
        "distributed",
        "performance",
        "examples",
        "design",
    )
}
