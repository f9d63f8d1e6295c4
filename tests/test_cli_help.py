"""The command line's own output: ``--help`` of every command, the form of its warnings."""

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


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_help_is_shown_as_written(command: str) -> None:
    """Each option's help text appears whole in ``--help``: the markdown rendering drops
    ``<...>`` (``runs/<name>-<time>`` once showed as ``runs/-``) and would eat ``*``/``_``."""
    import typer.main

    cmd = typer.main.get_command(app).commands[command]
    text = " ".join(line.strip(" │") for line in _help(command).splitlines())
    shown = " ".join(text.split())
    for param in cmd.params:
        if param.help:
            help_text = " ".join(param.help.split())
            assert help_text in shown, f"{command} {param.name}: --help shows {help_text!r} altered"


def test_own_warnings_are_one_line_without_source_location(monkeypatch) -> None:
    import warnings

    from analysis.tune_files import PartialExperimentWarning
    from lossearch.cli import one_line_warnings

    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)
    one_line_warnings()
    ours = warnings.formatwarning("exp: 1 trial without results", PartialExperimentWarning,
                                  "/x/analysis/load.py", 286)
    assert ours == "warning: exp: 1 trial without results\n"
    theirs = warnings.formatwarning("old API", DeprecationWarning, "/x/lib.py", 3)
    assert "/x/lib.py:3" in theirs
