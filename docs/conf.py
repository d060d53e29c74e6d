"""Sphinx configuration for the tidings documentation."""

from __future__ import annotations

project = "tidings"
author = "tidings developers"
copyright = "2026, tidings developers"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
# No intersphinx: the build must not reach the network (CI has only package registries).
nitpicky = False

html_theme = "furo"
html_title = "tidings"
exclude_patterns = ["_build"]
