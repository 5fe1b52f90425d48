"""Help that teaches: every command's --help ends with runnable examples, every option shows its default and its
choices, usage errors name the command's own --help, and --version prints the one version the package has."""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tomllib

import pytest

import backends
from backends.contract.spec import NOISE_KINDS
from experiments import cli
from experiments.commands import bench, compare, parity, train
from experiments.version import __version__

ROOT = backends.PROJECT_ROOT
COMMANDS = {"train": train, "bench": bench, "parity": parity, "compare": compare}
PREFIX = {"train": [], "bench": ["bench"], "parity": ["parity"], "compare": ["compare"]}


def help_text(name: str) -> str:
    return COMMANDS[name].build_parser().format_help()


def options(name: str) -> list[argparse.Action]:
    """The command's optional flags, but -h and --version (which take no value and have no default)."""
    return [a for a in COMMANDS[name].build_parser()._actions
            if a.option_strings and not isinstance(a, (argparse._HelpAction, argparse._VersionAction))]


@pytest.mark.parametrize("name", COMMANDS)
def test_help_ends_with_examples_of_the_command_itself(name):
    blocks = help_text(name).rstrip().split("\n\n")
    last = blocks[-1].splitlines()
    assert last[0] == "examples:", blocks[-1]
    commands = [line.split("#")[0].split() for line in last[1:]]
    assert len(commands) >= 3
    for words in commands:
        assert words[:2] == ["python", "harness.py"], words
        assert words[2:2 + len(PREFIX[name])] == PREFIX[name], words


@pytest.mark.parametrize("name", COMMANDS)
def test_every_example_parses(name):
    """The examples are the command's real syntax: each one's flags parse (nothing is run)."""
    last = help_text(name).rstrip().split("\n\n")[-1].splitlines()[1:]
    for line in last:
        words = line.split("#")[0].split()[2 + len(PREFIX[name]):]
        COMMANDS[name].build_parser().parse_args(words)  # a UsageError fails the test


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_shows_its_default_and_its_choices(name):
    for action in options(name):
        flag = action.option_strings[-1]
        assert action.help and "default" in action.help, f"{name} {flag}: no default in its help"
        if action.choices:
            shown = " ".join(action.option_strings) + " " + action.help
            parser_help = help_text(name)
            for choice in action.choices:
                assert str(choice) in shown or "{" + ",".join(map(str, action.choices)) + "}" in parser_help, \
                    f"{name} {flag}: choice {choice} not shown"


def test_training_noise_has_choices_and_dropout_says_what_it_means_for_each_kind():
    by_flag = {a.option_strings[-1]: a for a in options("train")}
    assert tuple(by_flag["--noise"].choices) == tuple(NOISE_KINDS)
    dropout = " ".join(by_flag["--dropout"].help.split())
    for kind in NOISE_KINDS:
        assert kind in dropout, kind
    assert re.search(r"additive: the standard deviation", dropout), dropout


def test_bench_jobs_help_says_what_the_bench_accepts():
    jobs = next(a for a in options("bench") if "--jobs" in a.option_strings)
    assert "only 1" in jobs.help
    assert "up to N" not in jobs.help


@pytest.mark.parametrize("name", COMMANDS)
def test_a_usage_error_points_at_the_commands_own_help(name, capsys):
    status = cli.main([*PREFIX[name], "--no-such-flag"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(err) == 1 and err[0].startswith("error: "), err
    prog = " ".join(["python harness.py", *PREFIX[name]])
    assert f"(see {prog} --help)" in err[0]


def test_an_unknown_noise_kind_is_a_usage_error_naming_the_kinds(capsys):
    assert cli.main(["--backend", "numpy", "--noise", "salt"]) == 2
    err = capsys.readouterr().err
    assert "salt" in err and all(kind in err for kind in NOISE_KINDS)


@pytest.mark.parametrize("value", ["0", "1.5", "-0.2"])
def test_target_accuracy_outside_0_1_is_refused(value, capsys):
    assert cli.main(["--backend", "numpy", "--target-acc", value]) == 2
    assert "--target-acc" in capsys.readouterr().err


def test_version_prints_the_packages_one_version():
    result = subprocess.run([sys.executable, str(ROOT / "harness.py"), "--version"], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"dropbench {__version__}"
    assert re.fullmatch(r"\d+\.\d+\.\d+", __version__)


def test_the_version_has_one_source():
    """pyproject reads experiments/version.py; CITATION.cff repeats it and must agree."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "experiments.version.__version__"}
    citation = (ROOT / "CITATION.cff").read_text()
    assert re.search(rf'^version: "{re.escape(__version__)}"$', citation, re.M), "CITATION.cff's version differs"
