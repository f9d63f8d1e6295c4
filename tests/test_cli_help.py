"""``lossearch --help`` and every subcommand's ``--help``: exit 0, each command described."""

from __future__ import annotations

import inspect
import re

import pytest
from typer.testing import CliRunner

from lossearch.cli import app

COMMANDS = ["score", "train", "search", "confirm", "resume", "export", "analyze"]


def _help(*args: str) -> str:
    done = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert done.exit_code == 0, done.output
    return done.output


def test_top_level_help_lists_every_command() -> None:
    out = _help()
    for command in COMMANDS:
        assert re.search(rf"│ {command} +\S", out), f"{command} missing from --help"


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help_reflows_each_paragraph_of_its_docstring(command: str) -> None:
    """On a 200-column terminal each paragraph of the command's docstring is one line of its
    ``--help``: the source file's line breaks do not cut sentences in two."""
    (callback,) = [c.callback for c in app.registered_commands if c.callback.__name__ == command]
    lines = [line.strip() for line in _help(command).splitlines()]
    for paragraph in inspect.cleandoc(callback.__doc__).split("\n\n"):
        text = " ".join(paragraph.replace("`", "").split())
        assert len(text) < 190 and text in lines, f"{command} --help lacks the line: {text}"
