"""The ``whisper-sv`` shell: its subcommands, checked against a list written here rather than the
list the parser is built from, and its one-line errors."""

import argparse
import re

import pytest

from whisper_sv.cli import build_parser, main

# One subcommand per pipeline stage and notebook, in the README's order. A stage added to or
# dropped from cli.STAGES must be added or dropped here too.
SUBCOMMANDS = ("synth", "features", "train", "evaluate", "export", "report-card", "search", "transcribe", "app")


def _subcommands(parser: argparse.ArgumentParser) -> list[str]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return list(action.choices)


def test_the_parser_has_exactly_the_pipeline_subcommands():
    assert _subcommands(build_parser()) == list(SUBCOMMANDS)


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert re.findall(r"^    (\S+)", out, re.MULTILINE) == list(SUBCOMMANDS), out  # one line each, in order


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_has_its_help(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: whisper-sv {name}")


def test_an_unknown_subcommand_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fine-tune", "configs/tiny.json"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid choice: 'fine-tune'" in err


def test_app_refuses_a_host_it_cannot_listen_on_in_one_line(capsys):
    """Gradio would load both models and then say "Cannot find empty port"."""
    assert main(["app", "--host", "999.1.1.1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--host '999.1.1.1' is not an address of this machine" in err
