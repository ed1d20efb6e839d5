"""The package's layering, read from the source: who may import whom.

The paper's core sits at the top of ``spectral_jax``; the related methods
(``spectral_jax.related``) build on the core only; models build on the core and the
related methods; the device mesh (``spectral_jax.parallel``) builds on the core only;
data, evaluation and training sit above the models and the mesh; ``experiments`` and
``benchmarks`` use everything and are used by nothing in the library. These tests parse
every module (no import needed) and fail on an upward import, an import cycle, or a
first-party import hidden inside a function.
"""

from __future__ import annotations

import ast
import pathlib
import types

import pytest

import spectral_jax
import spectral_jax.data
import spectral_jax.evaluation
import spectral_jax.models
import spectral_jax.related as related
import spectral_jax.training

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "spectral_jax"
FIRST_PARTY = ("spectral_jax", "experiments", "benchmarks", "tests")

#: The paper's core: the top-level modules re-exported by ``spectral_jax``.
CORE = (
    "_checks",
    "bands",
    "blockwise",
    "flops",
    "frequencies",
    "iou",
    "layers",
    "loss_spectrum",
    "probes",
    "spectral_gradient",
    "statistics",
    "truncation",
)

#: For each layer (a top-level module or sub-package of ``spectral_jax``), the layers it
#: may import besides itself.
ALLOWED = {
    **{name: set(CORE) for name in CORE},
    "related": set(CORE),
    "plotting": {*CORE, "related"},
    "parallel": set(CORE),
    "models": {*CORE, "related"},
    "data": {*CORE, "related", "parallel"},
    "evaluation": {*CORE, "related", "parallel", "models", "data"},
    "training": {*CORE, "related", "parallel", "models", "data", "evaluation"},
    "analysis": {*CORE, "related", "plotting", "parallel", "models", "data", "evaluation"},
}


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _sources(*packages: str) -> dict[str, ast.Module]:
    trees = {}
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            trees[_module_name(path)] = ast.parse(path.read_text(), filename=str(path))
    return trees


def _imported_modules(node: ast.AST, known: set[str]) -> list[str]:
    """The first-party modules an import statement loads (the most specific known name)."""
    if isinstance(node, ast.ImportFrom) and node.level > 0:
        # The library imports by absolute name only, so that this test sees every edge.
        raise AssertionError(f"relative import at line {node.lineno}: use the absolute name")
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module:
        names = [f"{node.module}.{alias.name}" for alias in node.names]
        names = [name if name in known else node.module for name in names]
    else:
        return []
    return [name for name in names if name.split(".")[0] in FIRST_PARTY]


def _module_level_imports(tree: ast.Module) -> list[ast.AST]:
    """Imports that run when the module is imported (module body, ``if``/``try`` blocks)."""
    found, stack = [], list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If | ast.Try):
            stack.extend(ast.iter_child_nodes(node))
        elif isinstance(node, ast.ExceptHandler):
            stack.extend(node.body)
    return found


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


@pytest.fixture(scope="module")
def library() -> dict[str, ast.Module]:
    return _sources("spectral_jax")


@pytest.fixture(scope="module")
def everything() -> dict[str, ast.Module]:
    return _sources("spectral_jax", "experiments", "benchmarks")


def test_layers_import_only_downwards(library):
    known = set(library)
    violations = []
    for module, tree in library.items():
        layer = _layer(module)
        if layer == "__init__":
            continue
        allowed = ALLOWED[layer] | {layer}
        for node in _module_level_imports(tree):
            for target in _imported_modules(node, known):
                target_layer = _layer(target) if target.startswith("spectral_jax") else target
                if target_layer not in allowed:
                    violations.append(f"{module} imports {target} (layer {target_layer!r})")
    assert not violations, "\n".join(violations)


def test_no_import_cycles(library):
    known = set(library)
    graph = {
        module: {
            target
            for node in _module_level_imports(tree)
            for target in _imported_modules(node, known)
            if target in known and target != module
        }
        for module, tree in library.items()
    }
    # A package's __init__ re-exports its modules; a module importing a sibling through
    # the package is the usual Python idiom, not a cycle of the code: drop package
    # -> own-submodule edges from the cycle search.
    for module, targets in graph.items():
        graph[module] = {t for t in targets if not t.startswith(module + ".")}
    state: dict[str, int] = {}
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


def test_no_first_party_import_inside_functions(everything):
    known = set(everything)
    hidden = []
    for module, tree in everything.items():
        module_level = {id(node) for node in _module_level_imports(tree)}
        for node in ast.walk(tree):
            if id(node) in module_level:
                continue
            for target in _imported_modules(node, known):
                hidden.append(f"{module}:{node.lineno} imports {target}")
    assert not hidden, "\n".join(hidden)


def test_no_dynamic_imports(everything):
    calls = []
    for module, tree in everything.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "import_module":
                calls.append(f"{module}:{node.lineno}")
            if isinstance(node, ast.Name) and node.id in ("__import__", "import_module"):
                calls.append(f"{module}:{node.lineno}")
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom):
                    names = [node.module or ""]
                # importlib.metadata reads the installed version; it imports nothing.
                dynamic = [n for n in names if n != "importlib.metadata"]
                if any(name.split(".")[0] in ("importlib", "runpy") for name in dynamic):
                    calls.append(f"{module}:{node.lineno} imports importlib/runpy")
    assert not calls, "importlib.import_module / __import__ at " + ", ".join(calls)


def test_top_level_exports_only_the_core():
    public = {
        name: value
        for name, value in vars(spectral_jax).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    core_modules = {f"spectral_jax.{name}" for name in CORE}
    outside = {
        name: getattr(value, "__module__", None)
        for name, value in public.items()
        if getattr(value, "__module__", None) not in core_modules
    }
    assert not outside, outside
    # 54 names: bands 10, blockwise 2, flops 6, frequencies 4, iou 4, layers 6,
    # loss_spectrum 10, spectral_gradient 9, statistics 1, truncation 2.
    assert len(public) == 54, sorted(public)


@pytest.mark.parametrize("package", ["", "data", "evaluation", "models", "related", "training"])
def test_packages_declare_what_they_export(package):
    """``__all__`` of the package and of each subpackage lists exactly its public names."""
    module = getattr(spectral_jax, package) if package else spectral_jax
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert sorted(module.__all__) == sorted(public)


def test_related_namespace_is_one_import_away():
    for name in ("aliasing_score", "de_alias", "boundary_scores", "images_to_dct"):
        assert callable(getattr(related, name)), name
        assert not hasattr(spectral_jax, name), name


def test_benchmark_scripts_do_not_import_each_other(everything):
    """A script in ``benchmarks/`` imports shared code from ``benchmarks.timing`` (the
    timers) and the private ``benchmarks._*`` helpers, never another script."""
    known = set(everything)
    scripts = {
        module
        for module in known
        if module.startswith("benchmarks.")
        and not module.split(".")[1].startswith("_")
        and module != "benchmarks.timing"
    }
    violations = [
        f"{module} imports {target}"
        for module in sorted(known)
        if module.startswith("benchmarks")
        for node in _module_level_imports(everything[module])
        for target in _imported_modules(node, known)
        if target in scripts and target != module
    ]
    assert len(scripts) >= 15, sorted(scripts)
    assert not violations, "\n".join(violations)


def test_ignore_index_is_defined_once(everything):
    """``IGNORE_INDEX`` is assigned in ``spectral_jax._checks`` only, and no ``ignore_index``
    default (argument, field, ``flax.struct.field(default=...)``) is a literal number."""
    definitions, literals = [], []

    def literal(value: ast.AST | None) -> bool:
        if isinstance(value, ast.Call):
            value = next((k.value for k in value.keywords if k.arg == "default"), None)
        return isinstance(value, ast.Constant) and isinstance(value.value, int)

    for module, tree in everything.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names = {t.id for t in targets if isinstance(t, ast.Name)}
                if "IGNORE_INDEX" in names:
                    definitions.append(module)
                if "ignore_index" in names and literal(node.value):
                    literals.append(f"{module}:{node.lineno}")
            if isinstance(node, ast.FunctionDef):
                arguments = node.args
                positional = arguments.posonlyargs + arguments.args
                pairs = list(
                    zip(
                        positional[len(positional) - len(arguments.defaults) :],
                        arguments.defaults,
                        strict=True,
                    )
                )
                pairs += [
                    (a, d)
                    for a, d in zip(arguments.kwonlyargs, arguments.kw_defaults, strict=True)
                    if d
                ]
                literals += [
                    f"{module}:{node.lineno}"
                    for a, d in pairs
                    if a.arg == "ignore_index" and literal(d)
                ]
    assert definitions == ["spectral_jax._checks"], definitions
    assert not literals, "ignore_index defaults written as a number at " + ", ".join(literals)
