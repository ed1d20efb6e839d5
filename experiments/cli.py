"""The command line of every experiment script: ``--config``, ``--workdir`` and absl flags.

Every ``python -m experiments.<name>`` takes

* ``--config NAME_OR_PATH`` (ml_collections' config file, as ``experiments/train.py``
  takes it; default ``tiny``): the name of a config of ``experiments/configs``
  (``tiny``, ``pascal``, ...; ``--list_configs`` lists them) or the path of a config
  file, from the working directory or from the directory that holds ``experiments``
  (``experiments/configs/tiny.py`` works from any directory); a parameterised config
  takes its argument after a colon (``--config demo:quick``);
* overrides of its fields, e.g. ``--config.num_train_steps=2 --config.crop_size=33
  --config.data_dir=/data/tfds``; a field the config lacks is refused with the nearest
  name (the fields: :mod:`spectral_jax.training.config`);
* ``--print_config``: print the resolved config (overrides applied), each field with its
  documentation, and exit; ``--list_configs``: print the config names with their
  one-line description, and exit;
* ``--workdir DIR`` (default ``runs/<name>``);
* its own absl flags; ``--help`` prints the script's docstring and every flag.

A script's ``main(argv)`` reads ``argv`` (``argv[0]`` is the program, as absl's
``app.run`` passes it) with :func:`parse` into a fresh :class:`absl.flags.FlagValues`:
the config flag takes its overrides from that ``argv`` rather than ``sys.argv``, and
nothing is registered in absl's global ``FLAGS``, so the tests call ``main`` many times
in one process and the scripts import each other without their flags colliding.
"""

from __future__ import annotations

import ast
import pathlib
import re
import sys
from collections.abc import Callable, Collection, Sequence
from typing import Any

import ml_collections
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from experiments import paper_values
from spectral_jax.training import config as config_schema

#: The directory of the config files (``experiments/configs``).
CONFIGS = pathlib.Path(__file__).resolve().parent / "configs"

#: ``--config``, ``-config``, ``--config=...``: the config flag itself (ml_collections'
#: pattern), and an override of one of its fields, ``--config.a.b=...``.
_CONFIG_FLAG = re.compile(r"^-{1,2}config(=|$)")
_CONFIG_OVERRIDE = re.compile(r"^-{1,2}(?:no)?config\.([^=]+)")


def config_names() -> list[str]:
    """The names of the configs in ``experiments/configs`` (the modules with a
    ``get_config``), sorted."""
    return sorted(
        path.stem
        for path in CONFIGS.glob("*.py")
        if any(
            isinstance(node, ast.FunctionDef) and node.name == "get_config"
            for node in ast.parse(path.read_text()).body
        )
    )


def config_description(name: str) -> str:
    """The first line of the docstring of the config ``name``."""
    docstring = ast.get_docstring(ast.parse((CONFIGS / f"{name}.py").read_text())) or ""
    return docstring.strip().splitlines()[0] if docstring.strip() else ""


def resolve_config(value: str) -> str:
    """The config file that ``--config=value`` names, as an absolute path (with the
    ``:argument`` kept).

    ``value`` is a path from the working directory, a path from the directory that
    holds ``experiments`` (``experiments/configs/tiny.py``), or a config name (``tiny``
    or ``tiny.py``).

    Raises:
      absl.app.UsageError: when it is none of them.
    """
    path, colon, argument = value.partition(":")
    candidates = [
        pathlib.Path(path).expanduser(),
        CONFIGS.parents[1] / path,
        CONFIGS / path,
        CONFIGS / f"{path}.py",
    ]
    for candidate in candidates:
        if path and candidate.is_file():
            return f"{candidate.resolve()}{colon}{argument}"
    raise app.UsageError(
        f"--config={value}: no such config file or config name; the names: "
        f"{', '.join(config_names())} (--list_configs describes them)"
    )


def _with_resolved_config(argv: list[str]) -> list[str]:
    """``argv`` with the value of ``--config`` replaced by :func:`resolve_config`'s."""
    argv = list(argv)
    for index, arg in enumerate(argv):
        if arg == "--":
            break
        match = _CONFIG_FLAG.match(arg)
        if match is None:
            continue
        if match.group(1):  # --config=value
            argv[index] = f"--config={resolve_config(arg.split('=', 1)[1])}"
        elif index + 1 < len(argv):  # --config value
            argv[index + 1] = resolve_config(argv[index + 1])
    return argv


def _config_argument(argv: list[str], default: pathlib.Path) -> str:
    """The value of ``--config`` in ``argv``, else ``default``."""
    for index, arg in enumerate(argv):
        if arg == "--":
            break
        match = _CONFIG_FLAG.match(arg)
        if match is not None and match.group(1):
            return arg.split("=", 1)[1]
        if match is not None and index + 1 < len(argv):
            return argv[index + 1]
    return str(default)


def _unknown_override_message(argv: list[str], config_path: str) -> str | None:
    """``--config.x: no config field 'x' (did you mean 'y'?)`` for the first override in
    ``argv`` of a field that the config file ``config_path`` lacks, else None."""
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", config_path, flag_values=flag_values, sys_argv=argv[:1]
    )
    flag_values(argv[:1])
    config = flag_values.config
    names = list(config_schema.leaf_names(config))
    for arg in argv[1:]:
        if arg == "--":
            break
        match = _CONFIG_OVERRIDE.match(arg)
        if match is None:
            continue
        node = config
        for part in match.group(1).split("."):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                field = config_schema.unknown_field_message(match.group(1), names)
                return f"--config.{match.group(1)}: {field}"
            node = node[part]
    return None


class _ListParser(flags.ListParser):
    """Comma-separated values converted by ``element`` and, if given, among ``choices``."""

    def __init__(self, element: Callable[[str], Any], choices: Collection[Any] | None):
        super().__init__()
        self._element = element
        self._choices = choices

    def parse(self, argument):
        values = [self._element(value) for value in super().parse(argument)]
        if self._choices is not None:
            unknown = [value for value in values if value not in self._choices]
            if unknown:
                raise ValueError(f"{unknown} not among {tuple(self._choices)}")
        return values

    def flag_type(self) -> str:
        return f"comma-separated list of {getattr(self._element, '__name__', 'values')}"


def define_list(
    flag_values: flags.FlagValues,
    name: str,
    default: Sequence[Any] | None,
    help_string: str,
    *,
    element: Callable[[str], Any] = str,
    choices: Collection[Any] | None = None,
) -> None:
    """A flag ``--name=a,b,c`` whose value is a list of ``element(a)``, ... (or ``default``).

    Raises:
      absl.flags.IllegalFlagValueError: at parsing, for a value that ``element`` rejects
        or that is not among ``choices``.
    """
    flags.DEFINE(
        _ListParser(element, choices),
        name,
        None if default is None else list(default),
        help_string,
        flag_values=flag_values,
        serializer=flags.CsvListSerializer(","),
        # Listed in --help under the script that defines the flag, as absl's own DEFINEs.
        module_name=_module_name(sys._getframe(1).f_globals.get("__name__")),
    )


def _module_name(name: str | None) -> str | None:
    """absl's name of a module: the script's path for ``__main__``."""
    return sys.argv[0] if name == "__main__" else name


def define_models(
    flag_values: flags.FlagValues, default: Sequence[str] | None, default_help: str = ""
) -> None:
    """``--models=deeplab,dan``: the paper's models to train (``default_help`` if None)."""
    help_string = f"The paper's models to train, of {','.join(paper_values.MODELS)}."
    define_list(
        flag_values,
        "models",
        default,
        f"{help_string} {default_help}".strip(),
        choices=paper_values.MODELS,
    )


def define_datasets(
    flag_values: flags.FlagValues, default: Sequence[str] | None, default_help: str = ""
) -> None:
    """``--datasets=pascal,deepglobe``: the paper's data sets (``default_help`` if None)."""
    help_string = (
        f"The paper's data sets, of {','.join(paper_values.DATASETS)}: with a config on the "
        "embedded data the presets that stand for them; a paper config runs its own only."
    )
    define_list(
        flag_values,
        "datasets",
        default,
        f"{help_string} {default_help}".strip(),
        choices=paper_values.DATASETS,
    )


def define_num_seeds(flag_values: flags.FlagValues, default: int | None = None) -> None:
    """``--num_seeds=S``: seeds per trained setting (:func:`experiments.runs.train_seeds`).

    None: :func:`experiments.runs.num_seeds_of` decides (3 on the embedded data, 1 with a
    paper config).
    """
    flags.DEFINE_integer(
        "num_seeds",
        default,
        "Seeds per trained setting (config.seed + k, k < S); the reports give mean ± std "
        "and a 95 % interval over them. Default: "
        + (str(default) if default is not None else "3 on the embedded data, else 1")
        + ".",
        lower_bound=1,
        flag_values=flag_values,
        module_name=_module_name(sys._getframe(1).f_globals.get("__name__")),
    )


def parse(
    argv: Sequence[Any],
    *,
    name: str,
    doc: str | None,
    define_flags: Callable[[flags.FlagValues], None] | None = None,
    config: str | None = "tiny.py",
    config_help: str = "",
    required: Sequence[str] = (),
) -> flags.FlagValues:
    """Parses ``argv`` into the flag values of the script ``experiments.<name>``.

    Args:
      argv: the command line, ``argv[0]`` the program (ignored); other items are ``str``
        or path-like.
      name: the script's module name; the default work directory is ``runs/<name>``.
      doc: the script's docstring, printed by ``--help``.
      define_flags: defines the script's own flags on the ``FlagValues`` it is given.
      config: the default config file, relative to ``experiments/configs`` (``None``: the
        script takes no ``--config``, ``--list_configs`` nor ``--print_config``).
      config_help: appended to the help of ``--config`` (e.g. what the default trains).
      required: flags the command line must give explicitly (``experiments.train``
        requires ``config`` and ``workdir``: a run silently trained on the default config
        or into a default directory is worse than an error).

    Returns:
      The parsed flags: ``flag_values.workdir`` (a ``str``), ``flag_values.config`` (the
      ``ConfigDict`` with the overrides applied) and the script's own.

    Raises:
      absl.app.UsageError: for an unknown flag, a bad value, a positional argument, an
        unknown config name or an override of a field the config lacks (naming the
        nearest field).
      SystemExit: after printing the help (``--help``), the config names
        (``--list_configs``) or the resolved config (``--print_config``).
    """
    argv = [str(arg) for arg in argv]
    flag_values = flags.FlagValues()
    flags.DEFINE_boolean("help", False, "Print this help and exit.", flag_values=flag_values)
    flags.DEFINE_string(
        "workdir",
        str(pathlib.Path("runs", name)),
        "Directory of the report, its tables and figures, and the trained runs.",
        flag_values=flag_values,
    )
    if config is not None:
        flags.DEFINE_boolean(
            "list_configs",
            False,
            "Print the names of the configs (for --config) with their description, and exit.",
            flag_values=flag_values,
        )
        flags.DEFINE_boolean(
            "print_config",
            False,
            "Print the resolved config (--config with its overrides), each field with its "
            "documentation, and exit.",
            flag_values=flag_values,
        )
    if define_flags is not None:
        define_flags(flag_values)
    if config is not None:
        argv = _with_resolved_config(argv)
    try:
        if config is not None:
            # Loads the default config at once, with the overrides found in `argv`.
            config_flags.DEFINE_config_file(
                "config",
                str(CONFIGS / config),
                "Training configuration: a config name (--list_configs) or file "
                "(ml_collections, `path.py`), with `:argument` for a parameterised one; "
                "override its fields with --config.<field>=<value> (--print_config "
                "documents them). " + config_help,
                flag_values=flag_values,
                sys_argv=argv,
            )
        rest = flag_values(argv)
    except AttributeError as error:
        # ml_collections raises AttributeError (around a KeyError that quotes its own
        # message) for an override of a field the config lacks.
        message = _unknown_override_message(argv, _config_argument(argv, CONFIGS / config))
        if message is None:
            raise
        raise app.UsageError(
            f"{message}; the fields: python -m experiments.{name} --print_config"
        ) from error
    except flags.Error as error:
        raise app.UsageError(f"{error}; flags: python -m experiments.{name} --help") from error
    usage = f"{doc or ''}\nFlags:\n{flag_values.get_help(include_special_flags=False)}"
    if flag_values.help:
        print(usage)
        raise SystemExit(0)
    if len(rest) > 1:
        raise app.UsageError(f"unexpected arguments {rest[1:]}; flags take the form --name=value")
    if config is not None and flag_values.list_configs:
        names = config_names()
        width = max(map(len, names))
        for config_name in names:
            print(f"{config_name:<{width}}  {config_description(config_name)}")
        raise SystemExit(0)
    if config is not None and flag_values.print_config:
        print(f"# {config_file(flag_values)}, with the command line's overrides")
        print(config_schema.describe_config(flag_values.config))
        raise SystemExit(0)
    missing = [f"--{flag}" for flag in required if not flag_values[flag].present]
    if missing:
        raise app.UsageError(
            f"{', '.join(missing)} must be given; flags: python -m experiments.{name} --help"
        )
    return flag_values


def config_file(flag_values: flags.FlagValues) -> str:
    """The ``--config`` file as given (relative to the repository when it lies inside)."""
    path, _, argument = flag_values["config"].config_filename.partition(":")
    resolved = pathlib.Path(path).resolve()
    if resolved.is_relative_to(CONFIGS.parents[1]):
        path = str(resolved.relative_to(CONFIGS.parents[1]))
    return f"{path}:{argument}" if argument else path


def command(name: str, argv: Sequence[Any]) -> str:
    """``python -m experiments.<name> <argv[1:]>``: the command line, for the reports."""
    return " ".join(["python -m", f"experiments.{name}", *map(str, argv[1:])])


def run(main: Callable[[Sequence[str]], Any]) -> None:
    """``main(sys.argv)`` of a script run as ``__main__``; a usage error exits with status 1.

    Under absl's ``app.run`` (absl's own flags take their defaults), with the command
    line left to ``main``. The libraries' log shows warnings and errors only (the scripts
    report their progress themselves); ``main`` may lower the level. ``main`` may return
    anything (the scripts return the report's path): it is not taken as an exit status.
    """

    def run_main(_) -> None:
        absl_logging.set_verbosity(absl_logging.WARNING)
        try:
            main(sys.argv)
        except app.UsageError as error:
            print(f"{sys.argv[0]}: {error}", file=sys.stderr)
            sys.exit(1)

    app.run(run_main, flags_parser=lambda argv: flags.FLAGS(argv[:1]))
