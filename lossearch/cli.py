"""The ``lossearch`` command line: one small function per subcommand, no logic here.

Every user error is a :class:`~lossearch.errors.LossearchError`: :func:`main` prints it as one
line on stderr and exits with status 2.
"""

from __future__ import annotations

import sys

import typer

from lossearch import __version__
from lossearch.errors import LossearchError

app = typer.Typer(
    name="lossearch",
    help="Search the training loss (and learning rate) for fine-tuning causal language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lossearch {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Find the best training loss for fine-tuning a causal LM, trial by trial on Ray."""


# --- subcommands (each one imports its module lazily so `--help` stays fast) ---
# @@score@@
# @@train@@
# @@search@@
# @@analyze@@


def main() -> None:
    """Console-script entry point: run the app, turn user errors into one line and exit 2."""
    try:
        app(standalone_mode=False)
    except LossearchError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
