"""Sphinx configuration for inginious-tx."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))
sys.path.insert(0, os.path.abspath("_ext"))

project = "inginious-tx"
author = "the inginious-tx developers"
copyright = "2026, the inginious-tx developers"  # noqa: A001
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode", "zope_interfaces"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
nitpicky = False
exclude_patterns = ["_build", "examples"]
html_theme = "alabaster"
suppress_warnings = ["ref.python"]
smartquotes = False  # keep "--option" as typed
