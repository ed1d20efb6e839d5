"""Sphinx configuration of the spectral_jax documentation (`make docs`)."""

import pathlib
import sys

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent
# The library of this checkout (also without an install) and the local extension.
sys.path[:0] = [str(ROOT), str(DOCS / "_ext")]

import spectral_jax  # noqa: E402

project = "spectral_jax"
author = "the spectral_jax authors"
copyright = "the spectral_jax authors"
release = spectral_jax.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "myst_nb",
    "api_reference",
]

exclude_patterns = ["_build", "_ext", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}

# Every cross-reference must resolve. References into other libraries (no intersphinx:
# the build runs offline) are not checked; references into spectral_jax are.
nitpicky = True
nitpick_ignore_regex = [
    (
        r"py:.*",
        r"(jax|jnp|jaxlib|numpy|np|chex|flax|nn|optax|orbax|ocp|ml_collections"
        r"|tensorflow_datasets|tfds|grain|torch|matplotlib|plt|PIL|scipy|absl|tqdm"
        r"|tensorboardX|collections|typing|types|dataclasses|enum|pathlib|os|abc|functools"
        r"|concurrent|threading|contextlib|warnings|json|numbers|io|subprocess|array_record"
        r"|logging|multiprocessing|signal|socket|hashlib|zipfile|pickle|re|math|random|etils|utils"
        r")(\..*)?",
    ),
    # Private helpers, which docstrings name for the reader of the source, have no entry.
    (r"py:.*", r"(.*\.)?_\w+(\..*)?"),
    # Pieces of a subscripted annotation (``dict[str, int]``) that Sphinx splits apart.
    (r"py:.*", r".*\[.*"),
    # Standard names autodoc prints from annotations and typing constructs.
    (
        r"py:.*",
        r"(Any|Callable|Iterable|Iterator|Mapping|Sequence|Literal|Self|TypeVar"
        r"|NamedTuple|Protocol|PyTree|Array|ArrayLike|ArrayTree|DTypeLike|Shape|Path|PathLike)",
    ),
]

# API entries: the order of the source, the docstrings' Google style (Args, Returns,
# Raises). Signatures without annotations: the docstrings give shapes and types, and
# chex.Array would print as its expanded union.
autodoc_member_order = "bysource"
autodoc_typehints = "none"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
autodoc_inherit_docstrings = False
autoclass_content = "class"
autosummary_generate = False
add_module_names = False
# One parameter a line once a signature is longer than this.
python_maximum_signature_line_length = 88
python_use_unqualified_type_names = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True

# Notebooks are shown with the outputs committed with them; the tests execute them.
nb_execution_mode = "off"
myst_enable_extensions = ["dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# MathJax 3 served from the build itself (docs/_ext/api_reference.py copies it), so that
# the equations render offline.
mathjax_path = "mathjax/tex-svg.js"

html_theme = "sphinx_book_theme"
html_title = f"spectral_jax {release}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_theme_options = {
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "home_page_in_toc": True,
}
html_last_updated_fmt = None
html_show_sourcelink = False
