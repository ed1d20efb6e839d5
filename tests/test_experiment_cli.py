"""The experiments' command line (``experiments/cli.py``): config files, overrides, lists.

Every script parses its ``argv`` with :func:`experiments.cli.parse`; these tests parse
twice in one process (as the end-to-end tests call ``main`` twice) and check that the
overrides of one command line do not leak into the next.
"""

from __future__ import annotations

import pytest
from absl import app

from experiments import cli
from experiments.configs import pascal, tiny


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
