"""The experiments' command line (``experiments/cli.py``): config files, overrides, lists.

Every script parses its ``argv`` with :func:`experiments.cli.parse`; these tests parse
twice in one process (as the end-to-end tests call ``main`` twice) and check that the
overrides of one command line do not leak into the next.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
from absl import app

from experiments import cli
from experiments.configs import pascal, tiny
from spectral_jax.training import config as config_schema

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _define(flag_values):
    cli.define_models(flag_values, ["deeplab", "dan"])
    cli.define_list(flag_values, "band_limits", [2, 4], "Band limits.", element=int)


def _parse(*args: str):
    return cli.parse(["script", *args], name="script", doc="A script.", define_flags=_define)


def test_defaults_are_the_tiny_config_and_runs_workdir():
    flag_values = _parse()
    assert flag_values.config.to_dict() == tiny.get_config().to_dict()
    assert flag_values.workdir == "runs/script"
    assert flag_values.models == ["deeplab", "dan"]
    assert flag_values.band_limits == [2, 4]


def test_overrides_apply_once_and_do_not_leak_into_the_next_parse():
    first = _parse("--config.num_train_steps=2", "--config.crop_size=33", "--band_limits=4,8")
    assert (first.config.num_train_steps, first.config.crop_size) == (2, 33)
    assert first.band_limits == [4, 8]
    second = _parse(f"--config={cli.CONFIGS / 'pascal.py'}", "--config.data_dir=/data")
    assert second.config.dataset == pascal.get_config().dataset
    assert second.config.num_train_steps == pascal.get_config().num_train_steps
    assert second.config.data_dir == "/data"
    assert second.band_limits == [2, 4]
    assert first.config.num_train_steps == 2  # the first parse's values stay


def test_config_file_is_given_relative_to_the_repository():
    flag_values = _parse(f"--config={cli.CONFIGS / 'demo.py'}:quick")
    assert cli.config_file(flag_values) == "experiments/configs/demo.py:quick"
    assert flag_values.config.num_train_steps == 10


@pytest.mark.parametrize(
    "args",
    [
        ("--models=unet",),  # not a choice
        ("--band_limits=a",),  # not an integer
        ("--config.no_such_field=1",),  # not a field of the config
        ("--steps=3",),  # not a flag
        ("positional",),
    ],
)
def test_bad_command_lines_are_usage_errors(args):
    with pytest.raises(app.UsageError):
        _parse(*args)


def test_help_prints_the_docstring_and_the_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parse("--help")
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("A script.") and "--band_limits" in text and "--config" in text


@pytest.mark.parametrize(
    "args, missing",
    [
        ([], "--config, --workdir"),
        (["--workdir=/tmp/run"], "--config"),
        (["--config=experiments/configs/tiny.py"], "--workdir"),
    ],
)
def test_required_flags_must_be_given(args, missing):
    with pytest.raises(app.UsageError, match=f"^{missing} must be given"):
        cli.parse(["prog", *args], name="train", doc=None, required=("config", "workdir"))
    given = ["--config=experiments/configs/tiny.py", "--workdir=/tmp/run"]
    flag_values = cli.parse(
        ["prog", *given], name="train", doc=None, required=("config", "workdir")
    )
    assert flag_values.workdir == "/tmp/run"


# --config by name or path, from any directory; --list_configs and --print_config.

#: The configs of experiments/configs (the modules with a get_config), as the tree has them.
CONFIG_NAMES = [
    "cityscapes",
    "dct_cityscapes",
    "dct_deepglobe",
    "dct_pascal",
    "deepglobe",
    "default",
    "demo",
    "pascal",
    "tiny",
]


@pytest.mark.parametrize(
    "args",
    [
        ("--config=tiny",),
        ("--config", "tiny"),
        ("--config=tiny.py",),
        ("--config=experiments/configs/tiny.py",),
        (f"--config={cli.CONFIGS / 'tiny.py'}",),
    ],
)
def test_a_config_is_named_or_given_by_path_from_any_directory(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no experiments/ here
    flag_values = _parse(*args, "--config.crop_size=33")
    expected = tiny.get_config()
    expected.crop_size = 33
    assert flag_values.config.to_dict() == expected.to_dict()
    assert cli.config_file(flag_values) == "experiments/configs/tiny.py"


def test_a_named_config_takes_its_argument_after_a_colon():
    flag_values = _parse("--config=demo:quick")
    assert flag_values.config.num_train_steps == 10
    assert cli.config_file(flag_values) == "experiments/configs/demo.py:quick"


def test_a_config_file_in_the_working_directory_comes_first(tmp_path, monkeypatch):
    (tmp_path / "tiny.py").write_text(
        "from experiments.configs import tiny\n"
        "def get_config():\n"
        "    config = tiny.get_config()\n"
        "    config.seed = 7\n"
        "    return config\n"
    )
    monkeypatch.chdir(tmp_path)
    assert _parse("--config=tiny.py").config.seed == 7
    assert _parse("--config=tiny").config.seed == tiny.get_config().seed  # the name


def test_an_unknown_config_name_lists_the_names():
    with pytest.raises(app.UsageError) as error:
        _parse("--config=tinny")
    assert str(error.value) == (
        "--config=tinny: no such config file or config name; the names: "
        f"{', '.join(CONFIG_NAMES)} (--list_configs describes them)"
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ("--config.num_train_step=2",),
            "--config.num_train_step: no config field 'num_train_step' "
            "(did you mean 'num_train_steps'?)",
        ),
        (
            ("--config=tiny", "--config.model.aspp_chanels=4"),
            "--config.model.aspp_chanels: no config field 'model.aspp_chanels' "
            "(did you mean 'model.aspp_channels'?)",
        ),
        (("--config", "pascal", "--config.zzz=1"), "--config.zzz: no config field 'zzz'"),
        (
            # The field exists in tiny.py, not in pascal.py: the file given is checked.
            ("--config=pascal", "--config.model.low_level_channels=4"),
            "--config.model.low_level_channels: no config field 'model.low_level_channels'",
        ),
    ],
)
def test_an_override_of_a_field_the_config_lacks_names_the_nearest(args, message):
    with pytest.raises(app.UsageError) as error:
        _parse(*args, "--config.crop_size=33")
    assert str(error.value) == f"{message}; the fields: python -m experiments.script --print_config"


def test_list_configs_prints_each_name_with_its_description(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parse("--list_configs")
    assert exit_info.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == CONFIG_NAMES
    tiny_line = lines[CONFIG_NAMES.index("tiny")]
    assert tiny_line.split(None, 1)[1] == tiny.__doc__.splitlines()[0]


def test_print_config_prints_the_resolved_config_with_the_documentation(capsys):
    with pytest.raises(SystemExit) as exit_info:
        # experiments.train requires --workdir, but not to print its config.
        cli.parse(
            ["prog", "--config=tiny", "--config.crop_size=33", "--print_config"],
            name="train",
            doc=None,
            required=("config", "workdir"),
        )
    assert exit_info.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "# experiments/configs/tiny.py, with the command line's overrides"
    fields = dict(line.split(" = ", 1) for line in lines[1::2])
    expected = tiny.get_config()
    expected.crop_size = 33
    assert fields["crop_size"] == "33" and fields["model.backbone"] == "'resnet_tiny'"
    assert len(fields) == len(list(config_schema.leaf_names(expected)))
    docs = dict(zip(lines[1::2], lines[2::2], strict=True))
    assert docs["crop_size = 33"] == (
        "    Side of the square random training crops. [int; default 513; paper: 513]"
    )
    # tiny.py sets a model attribute that the schema documents as optional.
    assert docs["model.aspp_channels = 16"].startswith("    Channels of the ASPP.")


def test_a_script_runs_from_another_directory(tmp_path):
    """``python -m experiments.train`` with the package importable (as after
    ``pip install``) and the working directory outside the repository."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.train",
            "--config",
            "experiments/configs/demo.py:quick",
            "--config.crop_size=33",
            "--print_config",
        ],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "# experiments/configs/demo.py:quick, with the command line's overrides"
    assert "crop_size = 33" in lines and "num_train_steps = 10" in lines
    assert not (tmp_path / "runs").exists()
