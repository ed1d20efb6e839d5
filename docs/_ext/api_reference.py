"""Sphinx helpers for the API reference of spectral_jax.

* ``.. module-reference:: spectral_jax.loss_spectrum``: the module's docstring, a summary
  table of its public objects and their entries, all found from the module itself: the
  public functions and classes defined in it and the public names assigned at its top
  level, those of its ``__all__`` first, then in source order. A renamed or split
  module needs only its name changed in the page that lists it.
* The public import paths (``spectral_jax.ce_spectrum``, ``spectral_jax.models.ResNet``,
  ...) become aliases of the entries documented at their defining module, so that
  ``:func:`spectral_jax.ce_spectrum``` resolves, and each entry says where to import it
  from.
* MathJax is served from the build (the ``django-static-mathjax`` package ships MathJax 3),
  so the equations render without network access.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import pathlib
import re
import shutil
import types
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.errors import ExtensionError, PycodeError
from sphinx.pycode import ModuleAnalyzer
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import make_refnode

# The packages whose ``__init__`` re-exports the public API, shortest paths first.
PUBLIC_PACKAGES = (
    "spectral_jax",
    "spectral_jax.related",
    "spectral_jax.models",
    "spectral_jax.data",
    "spectral_jax.evaluation",
    "spectral_jax.training",
)

# Values of constants longer than this (a dict of classes, a table) are not printed.
MAX_VALUE_CHARS = 80

# Where the offline MathJax lands in the HTML output, relative to ``_static``.
MATHJAX_FILE = "mathjax/tex-svg.js"


def _top_level_names(module: types.ModuleType) -> list[str]:
    """Public names defined or assigned at the top level of ``module``, in source order."""
    source = inspect.getsource(module)
    names: list[str] = []
    for statement in ast.parse(source).body:
        if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.append(statement.name)
        elif isinstance(statement, ast.Assign):
            names.extend(t.id for t in statement.targets if isinstance(t, ast.Name))
        elif isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
            names.append(statement.target.id)
        elif type(statement).__name__ == "TypeAlias":  # `type X = ...` (Python >= 3.12)
            names.append(statement.name.id)
    seen: set[str] = set()
    return [n for n in names if not n.startswith("_") and not (n in seen or seen.add(n))]


def public_members(module_name: str) -> list[tuple[str, Any]]:
    """``(name, object)`` of the public members of the module, in documentation order."""
    module = importlib.import_module(module_name)
    names = []
    for name in _top_level_names(module):
        obj = getattr(module, name, None)
        # Names imported under an alias (``from x import y as y``) belong to ``x``.
        if inspect.isfunction(obj) or inspect.isclass(obj):
            if getattr(obj, "__module__", None) != module_name:
                continue
        names.append(name)
    # ``__all__`` orders the names it lists first; a package's ``__all__`` lists names
    # that its modules define, which are documented there. Public names left out of
    # ``__all__`` still get an entry: docstrings refer to them.
    listed = [n for n in getattr(module, "__all__", ()) if n in names]
    names = listed + [n for n in names if n not in listed]
    return [(name, getattr(module, name)) for name in names]


def _auto_directive(obj: Any) -> str:
    if inspect.isclass(obj):
        return "autoexception" if issubclass(obj, BaseException) else "autoclass"
    if inspect.isfunction(obj) or inspect.isbuiltin(obj):
        return "autofunction"
    if callable(obj) and hasattr(obj, "__wrapped__"):
        return "autofunction"  # functools.wraps / jax.jit wrappers
    return "autodata"


class ModuleReference(SphinxDirective):
    """``.. module-reference:: package.module``: docstring, summary table, entries."""

    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        module_name = self.arguments[0]
        try:
            members = public_members(module_name)
        except ImportError as error:
            raise self.error(f"module-reference: cannot import {module_name!r}: {error}") from error
        lines = [f".. automodule:: {module_name}", ""]
        if members:
            lines += [".. autosummary::", "   :nosignatures:", ""]
            lines += [f"   {name}" for name, _ in members]
            lines.append("")
        for name, obj in members:
            directive = _auto_directive(obj)
            lines.append(f".. {directive}:: {name}")
            if directive == "autodata" and len(repr(obj)) > MAX_VALUE_CHARS:
                lines.append("   :no-value:")
            if directive in ("autoclass", "autoexception"):
                lines.append("   :members:")
                lines.append("   :show-inheritance:")
            lines.append("")
        content = StringList(lines, source=f"<module-reference {module_name}>")
        container = nodes.container()
        self.state.nested_parse(content, self.content_offset, container)
        return container.children


@functools.cache
def _public_aliases() -> dict[str, list[str]]:
    """Canonical ``module.qualname`` -> the public import paths of that object."""
    aliases: dict[str, list[str]] = {}
    for package_name in PUBLIC_PACKAGES:
        package = importlib.import_module(package_name)
        for name, obj in vars(package).items():
            if name.startswith("_") or isinstance(obj, types.ModuleType):
                continue
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            canonical = f"{obj.__module__}.{obj.__qualname__}"
            public = f"{package_name}.{name}"
            if public != canonical:
                aliases.setdefault(canonical, []).append(public)
    return aliases


def _note_aliases(app: Sphinx, env: Any) -> None:
    """Register ``spectral_jax.ce_spectrum`` (etc.) as aliases of the documented entries."""
    domain = env.get_domain("py")
    aliases = _public_aliases()
    documented = dict(domain.objects)
    for canonical, publics in aliases.items():
        for name, entry in documented.items():
            if name == canonical or name.startswith(canonical + "."):
                for public in publics:
                    alias = public + name[len(canonical) :]
                    if alias not in domain.objects:
                        domain.objects[alias] = entry._replace(aliased=True)


def _import_note(app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]):
    """Begin the docstring of a re-exported object with its public import path."""
    if what not in ("function", "class", "exception"):
        return
    publics = _public_aliases().get(name)
    if publics:
        paths = ", ".join(f"``{p}``" for p in publics)
        # At the end: the summary tables show the docstring's first sentence.
        lines += ["", f"*Public name:* {paths}."]


# ``name, other_name: text`` in Args/Attributes: Sphinx would read the first names as a type.
_MULTI_NAME_FIELD = re.compile(r"^(\s+)(\w+(?:, \w+)+)(:)(\s|$)")
# The same field with its names wrapped over two lines.
_NAMES_CONTINUED = re.compile(r"^\s+\w+(?:, \w+)*,\s*$")
_NAMES_END = re.compile(r"^\s+\w+(?:, \w+)*:(\s|$)")


def _prepare_docstring(app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]):
    """Before napoleon: drop docstrings that a constant inherits from its type; keep
    fields that name several arguments together as one field."""
    if what in ("data", "attribute") and not _documented_in_source(name):
        lines.clear()
    index = 0
    while index + 1 < len(lines):
        if _NAMES_CONTINUED.match(lines[index]) and _NAMES_END.match(lines[index + 1]):
            lines[index] = lines[index].rstrip() + " " + lines.pop(index + 1).strip()
        index += 1
    for index, line in enumerate(lines):
        match = _MULTI_NAME_FIELD.match(line)
        if match:
            names = match.group(2).replace(", ", ",")
            lines[index] = match.group(1) + names + line[match.end(2) :]


@functools.cache
def _attribute_docs(module_name: str) -> set[str]:
    try:
        analyzer = ModuleAnalyzer.for_module(module_name)
        return {".".join(filter(None, key)) for key in analyzer.find_attr_docs()}
    except PycodeError:
        return set()


def _documented_in_source(name: str) -> bool:
    """Whether a module constant or class attribute has a docstring or ``#:`` comment."""
    parts = name.split(".")
    for split in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:split])
        try:
            importlib.import_module(module_name)
        except ImportError:
            continue
        return ".".join(parts[split:]) in _attribute_docs(module_name)
    return False


def _napoleon_except_attributes(app: Sphinx) -> None:
    """Attribute docstrings are prose: napoleon would read ``Text (...): more`` as a type."""
    listeners = app.events.listeners["autodoc-process-docstring"]
    for listener in list(listeners):
        if getattr(listener.handler, "__module__", "") == "sphinx.ext.napoleon":
            napoleon = listener.handler
            app.disconnect(listener.id)

            def process(app, what, name, obj, options, lines, _napoleon=napoleon):
                if what not in ("attribute", "data", "property"):
                    _napoleon(app, what, name, obj, options, lines)

            app.connect("autodoc-process-docstring", process, priority=listener.priority)


def _resolve_relative(app: Sphinx, env: Any, node: Any, contnode: Any):
    """Resolve a name that the documented module imports (``ResNet`` in the DeepLab
    module) or a class attribute without an entry, by importing it."""
    if node.get("refdomain") != "py":
        return None
    target = re.sub(r"\s+", "", node["reftarget"])  # a target wrapped over two lines
    module_name = node.get("py:module")
    class_name = node.get("py:class")
    domain = env.get_domain("py")
    candidates = []
    if module_name:
        scope = [module_name + "." + class_name] if class_name else []
        candidates = [f"{prefix}.{target}" for prefix in [*scope, module_name]]
    candidates.append(target)
    for candidate in candidates:
        obj, owner = _import_object(candidate)
        if obj is None:
            continue
        for name in _documented_names(obj, owner, candidate):
            if name in domain.objects:
                entry = domain.objects[name]
                return make_refnode(
                    app.builder, node["refdoc"], entry.docname, entry.node_id, contnode, name
                )
    # A bare name that the module does not import (``ResNet`` in a helper module of the
    # models): the one entry of that name in the module's package, if there is one.
    if module_name and "." not in target:
        package = module_name.rsplit(".", 1)[0] + "."
        matches = [
            name
            for name, entry in domain.objects.items()
            if name.startswith(package) and name.endswith("." + target) and not entry.aliased
        ]
        if len(matches) == 1:
            entry = domain.objects[matches[0]]
            return make_refnode(
                app.builder, node["refdoc"], entry.docname, entry.node_id, contnode, matches[0]
            )
    return None


def _import_object(path: str) -> tuple[Any, Any]:
    parts = path.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        owner = None
        rest = parts[split:]
        for position, part in enumerate(rest):
            try:
                owner, obj = obj, getattr(obj, part)
            except AttributeError:
                # A dataclass field without a default is no class attribute: its class.
                if position == len(rest) - 1 and inspect.isclass(obj):
                    return obj, None
                return None, None
        return obj, owner
    return None, None


def _documented_names(obj: Any, owner: Any, path: str) -> list[str]:
    names = []
    if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismodule(obj):
        names.append(
            obj.__name__ if inspect.ismodule(obj) else f"{obj.__module__}.{obj.__qualname__}"
        )
    if inspect.isclass(owner):
        attribute = path.rsplit(".", 1)[1]
        base = f"{owner.__module__}.{owner.__qualname__}"
        names += [f"{base}.{attribute}", base]  # the attribute, else its class
    return names


def _copy_mathjax(app: Sphinx, exception: Exception | None) -> None:
    if exception is not None or app.builder.format != "html":
        return
    target = pathlib.Path(app.outdir) / "_static" / MATHJAX_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_mathjax_source(), target)


def _mathjax_source() -> pathlib.Path:
    try:
        import mathjax  # the django-static-mathjax distribution: MathJax 3 as static files
    except ImportError as error:
        raise ExtensionError(
            "the docs need MathJax offline: pip install 'spectral_jax[docs]' "
            "(django-static-mathjax)"
        ) from error
    path = pathlib.Path(mathjax.__file__).parent / "static" / "mathjax" / "es5" / "tex-svg.js"
    if not path.is_file():
        raise ExtensionError(f"MathJax not found at {path}")
    return path


def setup(app: Sphinx) -> dict[str, Any]:
    _mathjax_source()  # fail at the start, not after the build
    app.add_directive("module-reference", ModuleReference)
    app.connect("env-updated", lambda app, env: _note_aliases(app, env))
    app.connect("autodoc-process-docstring", _import_note)
    app.connect("autodoc-process-docstring", _prepare_docstring, priority=100)
    app.connect("builder-inited", _napoleon_except_attributes)
    app.connect("missing-reference", _resolve_relative)
    app.connect("build-finished", _copy_mathjax)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
