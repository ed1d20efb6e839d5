"""The config schema (``spectral_jax/training/config.py``) against the code that reads it.

The reads are found in the source (``ast``, no import): in every function of
``spectral_jax``, a parameter ``config`` (unannotated or a ``ConfigDict``) is a training
config and a ``model_config`` is its ``config.model``; ``config.a.b``,
``config.get("a")``, ``config["a"]`` read the field ``a.b`` / ``a``, and
``dict(config.pruning)`` or ``config.model.to_dict()`` read a whole group.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import pathlib

import ml_collections
import pytest

from experiments import cli
from experiments.configs import dct
from spectral_jax.models import registry
from spectral_jax.training import config as config_schema

ROOT = pathlib.Path(__file__).resolve().parents[1]

#: Parameter names of a training config, and the group of the config they stand for.
ROOTS = {"config": "", "model_config": "model"}
#: Methods of a ConfigDict that read the whole (sub)config they are called on.
WHOLE_READS = {"to_dict", "items", "keys", "values", "to_json", "to_yaml"}


@dataclasses.dataclass
class Reads:
    """Dotted field names read, and the groups read whole (``"pruning"``, ``"model"``)."""

    fields: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    groups: set[str] = dataclasses.field(default_factory=set)

    def add(self, name: str, where: str) -> None:
        self.fields.setdefault(name, []).append(where)


def _is_config_parameter(arg: ast.arg) -> bool:
    if arg.arg not in ROOTS:
        return False
    return arg.annotation is None or "ConfigDict" in ast.unparse(arg.annotation)


def _chain(node: ast.AST, roots: dict[str, str]) -> str | None:
    """``"a.b"`` for ``config.a.b`` (``"model.a"`` for ``model_config.a``; ``""`` for
    ``config`` itself), else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not (isinstance(node, ast.Name) and node.id in roots):
        return None
    return _join(roots[node.id], *reversed(parts))


def _join(*parts: str) -> str:
    return ".".join(part for part in parts if part)


def _loop_constants(function: ast.AST) -> dict[str, list[str]]:
    """``{name: [values]}`` of ``for name in ("a", "b")`` loops over string constants."""
    constants = {}
    for node in ast.walk(function):
        if (
            isinstance(node, ast.For)
            and isinstance(node.target, ast.Name)
            and isinstance(node.iter, ast.Tuple | ast.List)
            and all(isinstance(e, ast.Constant) for e in node.iter.elts)
        ):
            constants[node.target.id] = [e.value for e in node.iter.elts]
    return constants


def _keys(node: ast.AST, constants: dict[str, list[str]]) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Name) and node.id in constants:
        return constants[node.id]
    raise AssertionError(f"a config key the test cannot resolve: {ast.unparse(node)}")


def _reads_in(function: ast.AST, roots: dict[str, str], where: str, reads: Reads) -> None:
    constants = _loop_constants(function)
    for node in ast.walk(function):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            base = _chain(node.func.value, roots)
            if base is not None and node.func.attr == "get":
                for key in _keys(node.args[0], constants):
                    reads.add(_join(base, key), where)
            elif base is not None and node.func.attr in WHOLE_READS:
                reads.groups.add(base)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "dict"
            and node.args
        ):
            argument = node.args[0]
            if isinstance(argument, ast.BoolOp):  # dict(config.get("pruning") or {})
                argument = argument.values[0]
            if isinstance(argument, ast.Call) and isinstance(argument.func, ast.Attribute):
                base = _chain(argument.func.value, roots)
                if base is not None and argument.func.attr == "get":
                    for key in _keys(argument.args[0], constants):
                        reads.groups.add(_join(base, key))
            elif (base := _chain(argument, roots)) is not None:
                reads.groups.add(base)
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
            base = _chain(node.value, roots)
            if base is not None:
                for key in _keys(node.slice, constants):
                    reads.add(_join(base, key), where)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            name = _chain(node, roots)
            if not name:
                continue
            leaf = name.rsplit(".", 1)[-1]
            if hasattr(ml_collections.ConfigDict, leaf):
                continue  # a method (get, to_dict, ...): handled with its call
            reads.add(name, where)


def config_reads(*paths: pathlib.Path) -> Reads:
    """Every read of a training config's field in the functions of ``paths``."""
    reads = Reads()

    def visit(node: ast.AST, roots: dict[str, str], module: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                arguments = child.args.posonlyargs + child.args.args + child.args.kwonlyargs
                own = dict(roots)
                for arg in arguments:
                    if _is_config_parameter(arg):
                        own[arg.arg] = ROOTS[arg.arg]
                    else:
                        own.pop(arg.arg, None)  # shadowed by another kind of value
                for statement in child.body:  # config = flag_values.config (a script)
                    if (
                        isinstance(statement, ast.Assign)
                        and [ast.unparse(t) for t in statement.targets] == ["config"]
                        and isinstance(statement.value, ast.Attribute)
                        and statement.value.attr == "config"
                    ):
                        own["config"] = ""
                if own:
                    _reads_in(child, own, f"{module}:{child.lineno}", reads)
                visit(child, own, module)
            else:
                visit(child, roots, module)

    for path in paths:
        module = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name
        visit(ast.parse(path.read_text()), {}, module)
    # A group read by name (config.model passed on) is not a field; keep the leaves.
    groups = {name.split(".", 1)[0] for name in config_schema.FIELDS_BY_NAME if "." in name}
    reads.fields = {k: v for k, v in reads.fields.items() if k not in groups}
    return reads


@pytest.fixture(scope="module")
def library_reads() -> Reads:
    # The schema's own module reads every field generically (to check and print them).
    schema = ROOT / "spectral_jax" / "training" / "config.py"
    return config_reads(*sorted(set((ROOT / "spectral_jax").rglob("*.py")) - {schema}))


def test_every_config_parameter_of_the_library_is_walked():
    """A ``ConfigDict`` parameter under another name would escape the walk."""
    escaped = []
    for path in sorted((ROOT / "spectral_jax").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.arg) and node.annotation is not None:
                if "ConfigDict" in ast.unparse(node.annotation) and node.arg not in ROOTS:
                    escaped.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.arg}")
    assert not escaped


def _model_attributes() -> set[str]:
    attributes = set()
    for model in registry.MODELS.values():
        attributes |= {f.name for f in dataclasses.fields(getattr(model, "func", model))}
    return attributes - {"parent", "name", "num_classes"}


def test_every_field_the_library_reads_is_in_the_schema(library_reads):
    unknown = {
        name: where
        for name, where in library_reads.fields.items()
        if name not in config_schema.FIELDS_BY_NAME
    }
    assert not unknown, f"read by the library but not in the schema: {unknown}"
    # The walk finds the reads of every part of the library that takes the config.
    readers = {where.split(":")[0] for places in library_reads.fields.values() for where in places}
    assert {
        "spectral_jax/training/train.py",
        "spectral_jax/data/inputs.py",
        "spectral_jax/data/dct_pipeline.py",
        "spectral_jax/models/registry.py",
    } <= readers


def test_every_field_of_the_schema_is_read(library_reads):
    """By name, or as a whole group: ``pruning`` is passed on as a dict, and a ``model``
    field is an attribute of a model class (``create_model`` passes them all)."""
    assert library_reads.groups == {"model", "pruning"}
    model_attributes = _model_attributes()
    unread = []
    for field in config_schema.FIELDS:
        if field.reader != "library":
            continue
        group = field.name.split(".")[0] if "." in field.name else None
        if field.name in library_reads.fields:
            continue
        if group == "model" and field.name.removeprefix("model.") in model_attributes:
            continue
        if group == "pruning":
            continue
        unread.append(field.name)
    assert not unread, f"in the schema but read nowhere in the library: {unread}"


def test_the_fields_of_the_training_script_are_read_there_and_not_in_the_library(
    library_reads,
):
    script = {f.name for f in config_schema.FIELDS if f.reader == "experiments.train"}
    assert script == {"distributed"}
    assert not script & set(library_reads.fields)
    assert script <= set(config_reads(ROOT / "experiments" / "train.py").fields)


def test_the_walk_sees_a_read_it_is_shown(tmp_path):
    """The walker itself: each form of read it claims to find."""
    source = tmp_path / "reader.py"
    source.write_text(
        "import ml_collections\n"
        "def f(config: ml_collections.ConfigDict, other: int):\n"
        "    for key in ('crop_size', 'eval_crop_size'):\n"
        "        config.get(key)\n"
        "    return config.seed, config['flip'], config.model.name, dict(config.pruning)\n"
        "def g(model_config: ml_collections.ConfigDict):\n"
        "    return model_config.get('layout'), model_config.to_dict()\n"
        "def h(config: int):\n"
        "    return config.real\n"
    )
    reads = config_reads(source)
    assert set(reads.fields) == {
        "crop_size",
        "eval_crop_size",
        "seed",
        "flip",
        "model.name",
        "model.layout",
    }
    assert reads.groups == {"pruning", "model"}


def test_the_defaults_are_the_schema_fields_that_are_not_optional():
    config = config_schema.get_config()
    expected = {f.name: f.default for f in config_schema.FIELDS if not f.optional}
    actual = {}
    for name in config_schema.leaf_names(config):
        value = config
        for part in name.split("."):
            value = value[part]
        actual[name] = value
    assert actual == expected
    # A None default is a typed placeholder: the command line parses it as its type.
    assert config.get_ref("data_dir").get_type() is str
    assert config.model.get_ref("feature_size").get_type() is int


@pytest.mark.parametrize("field", config_schema.FIELDS, ids=lambda f: f.name)
def test_every_field_is_documented(field):
    assert field.doc.strip() and field.doc[0].isupper() and field.doc.endswith(".")
    assert "\n" not in field.doc
    assert field.default is None or isinstance(field.default, field.type)
    assert field.nullable or field.default is not None
    assert field.reader in ("library", "experiments.train")
    assert field.paper is None or field.paper.strip()


def test_the_paper_values_are_those_of_its_section_3():
    paper = {f.name: f.paper for f in config_schema.FIELDS if f.paper is not None}
    assert paper["crop_size"] == "513" and paper["batch_size"] == "8"
    assert "0.0007 (PASCAL VOC)" in paper["learning_rate"]
    assert "600 (DeepGlobe)" in paper["num_epochs"]


@pytest.mark.parametrize("name", cli.config_names())
def test_every_experiment_config_sets_only_schema_fields(name):
    module = importlib.import_module(f"experiments.configs.{name}")
    variants = {"demo": ["", "quick"]}.get(name, [])
    if name.startswith("dct_"):
        variants = list(dct.VARIANTS)
    configs = [module.get_config(v) for v in variants] or [module.get_config()]
    for config in configs:
        config_schema.check_fields(config)


@pytest.mark.parametrize(
    "field, nearest",
    [
        ("num_train_step", "num_train_steps"),
        ("model.aspp_chanels", "model.aspp_channels"),
        ("pruning.encodr", "pruning.encoder"),
    ],
)
def test_a_misspelled_field_is_refused_with_the_nearest_name(field, nearest):
    config = config_schema.get_config()
    *groups, leaf = field.split(".")
    node = config
    for group in groups:
        node = node[group]
    node[leaf] = 1  # the config is unlocked: a misspelling adds a field silently
    with pytest.raises(ValueError) as error:
        config_schema.check_fields(config)
    assert str(error.value) == f"no config field {field!r} (did you mean {nearest!r}?)."


def test_a_field_far_from_any_is_refused_without_a_guess():
    config = config_schema.get_config()
    config.zzz = 1
    with pytest.raises(ValueError, match=r"^no config field 'zzz'\.$"):
        config_schema.check_fields(config)


def test_a_model_attribute_is_a_field():
    config = config_schema.get_config()
    config.model.scan_blocks = False  # an attribute of DeepLabV3Plus, not in FIELDS
    config_schema.check_fields(config)
    config.model.name = "dct_deeplabv3plus"  # which has no such attribute
    config.model.widths = None
    with pytest.raises(ValueError, match="'model.widths'"):
        config_schema.check_fields(config)


def test_describe_config_documents_each_field():
    config = config_schema.get_config()
    config.model.scan_blocks = False
    text = config_schema.describe_config(config)
    lines = text.splitlines()
    assert lines[lines.index("batch_size = 8") + 1] == (
        "    " + config_schema.FIELDS_BY_NAME["batch_size"].describe()
    )
    assert "paper: 8]" in lines[lines.index("batch_size = 8") + 1]
    assert lines[lines.index("data_dir = None") + 1] == (
        "    TFDS data directory; None: TFDS's default. [str | None; default None]"
    )
    # In the schema's order: the data fields first, the model's after them.
    assert lines[0] == "dataset = 'synthetic_scenes/pascal_like'"
    assert lines.index("model.name = 'deeplabv3plus'") < lines.index("batch_size = 8")
    assert "model.scan_blocks = False" in lines
    assert len(lines) == 2 * len(list(config_schema.leaf_names(config)))
