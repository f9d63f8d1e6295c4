"""The ``lossearch`` command line: one small function per subcommand, no logic here.

Every user error is a :class:`~lossearch.errors.LossearchError`: :func:`main` prints it as one
line on stderr and exits with status 2.
"""

from __future__ import annotations

import sys
import typing

import typer
from typer.exceptions import TyperException

from lossearch import __version__
from lossearch.errors import LossearchError
from lossearch.interrupt import Interrupted

app = typer.Typer(
    name="lossearch",
    help="Search the training loss (and learning rate) for fine-tuning causal language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # docstring paragraphs reflow to the terminal's width
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


def _log_to_option() -> typing.Any:
    return typer.Option(
        None, "--log-to",
        help="Also log to trackers: tensorboard, mlflow, wandb (comma-separated; files in "
        "EXP/tracking or RUN/tracking).",
    )


def _max_failures_option() -> typing.Any:
    return typer.Option(
        0, "--max-failures",
        help="Restarts of a run whose training process died, each from its last checkpoint.",
    )


def _verbose_option() -> typing.Any:
    return typer.Option(
        False, "--verbose", "-v", help="Ray Tune's own output instead of lossearch's live view."
    )


def _trackers(value: str | None) -> tuple[str, ...]:
    from lossearch.tracking import parse_log_to

    return parse_log_to(value)  # a missing package: one line, before Ray starts


# --- subcommands (each one imports its module lazily so `--help` stays fast) ---
@app.command()
def score(
    predictions: str = typer.Argument(
        ..., help='JSONL, one {"prediction": ..., "reference": ...} object per line.'
    ),
    task: str = typer.Option(..., "--task", "-t", help="Task whose scoring applies (gsm8k, ...)."),
    answer_pattern: str = typer.Option(
        None, "--answer-pattern", help="jsonl task: regex whose first group is the answer."
    ),
) -> None:
    """Score predictions against references; print the mean of each metric as JSON."""
    import json

    from lossearch.metrics import score_file

    typer.echo(json.dumps(score_file(predictions, task, answer_pattern=answer_pattern), indent=2))


@app.command()
def train(
    config: str = typer.Option(None, "--config", "-c", help="Training config YAML."),
    out: str = typer.Option(
        None, "--out", help="Run directory (default runs/NAME-YYYYMMDD-HHMMSS, NAME the config's)."
    ),
    address: str = typer.Option(None, "--address", help="Ray cluster address (HOST:PORT)."),
    log_to: str = _log_to_option(),
    overrides: list[str] = typer.Argument(None, help="key=value overrides, e.g. optim.lr=3e-4."),
) -> None:
    """Fine-tune once with a config (for example one written by `lossearch export`)."""
    trackers = _trackers(log_to)
    from lossearch.config import load_config

    cfg = load_config(config, overrides or [])  # a bad config is an error before torch loads
    from lossearch.metrics import summary_line
    from lossearch.train import train as run_train

    metrics = run_train(cfg, out_dir=out, address=address, announce=typer.echo, log_to=trackers)
    typer.echo(f"done: {summary_line(metrics)}")


@app.command()
def search(
    space: str = typer.Option(..., "--space", "-s", help="Search-space YAML."),
    num_samples: int = typer.Option(None, "--num-samples", "-n", help="Number of trials."),
    max_concurrent: int = typer.Option(None, "--max-concurrent", help="Trials run at once (2)."),
    seeds: int = typer.Option(None, "--seeds", help="Seeds trained per trial (metric = mean)."),
    scheduler: str = typer.Option(None, "--scheduler", help="asha (early stopping) or fifo."),
    metric: str = typer.Option(None, "--metric", help="Metric to optimise (exact_match)."),
    mode: str = typer.Option(
        None, "--mode", help="max or min (default: the space's for its metric; min for loss*)."
    ),
    address: str = typer.Option(None, "--address", help="Ray cluster address (HOST:PORT)."),
    storage: str = typer.Option(None, "--storage", help="Directory or URI (s3://...)."),
    name: str = typer.Option(None, "--name", help="Experiment name."),
    max_failures: int = _max_failures_option(),
    per_family: int = typer.Option(
        None, "--per-family", help="Trials per loss family (equal budgets; total = N x families)."
    ),
    confirm_seeds: int = typer.Option(
        None, "--confirm-seeds",
        help="Then confirm: re-train each family's best under S seeds, score on test.",
    ),
    warm_start: list[str] = typer.Option(
        None, "--warm-start",
        help="EXP [EXP ...]: start from earlier experiments of the same space (not re-run).",
    ),
    optuna_storage: str = typer.Option(
        None, "--optuna-storage",
        help="Database URL for the Optuna study (default: a journal file in the experiment).",
    ),
    keep: str = typer.Option(
        None, "--keep",
        help="Checkpoints kept once trials end: best (per family; default), all or none.",
    ),
    log_to: str = _log_to_option(),
    verbose: bool = _verbose_option(),
    overrides: list[str] = typer.Argument(None, help="key=value overrides of the base config."),
) -> None:
    """Search loss family, its parameters and learning rate with Ray Tune + Optuna.

    Trials see only the validation split; --confirm-seeds S then runs `lossearch confirm`.
    """
    from lossearch.search.driver import run_search
    from lossearch.search.report import finish_search

    if confirm_seeds is not None and confirm_seeds < 1:
        raise LossearchError(f"--confirm-seeds must be at least 1, got {confirm_seeds}")
    trackers = _trackers(log_to)
    if warm_start:  # `--warm-start A B`: B, not a key=value, is an experiment too
        warm_start += [o for o in overrides or [] if "=" not in o]
        overrides = [o for o in overrides or [] if "=" in o]

    exp = run_search(
        space,
        num_samples=num_samples,
        max_concurrent=max_concurrent,
        seeds=seeds,
        scheduler=scheduler,
        metric=metric,
        mode=mode,
        address=address,
        storage=storage,
        name=name,
        max_failures=max_failures,
        overrides=overrides or [],
        announce=typer.echo,
        per_family=per_family,
        require_test=confirm_seeds is not None,
        warm_start=warm_start or None,
        optuna_storage=optuna_storage,
        log_to=trackers,
        verbose=2 if verbose else 1,
        keep=keep,
    )
    finish_search(exp)
    if confirm_seeds is not None:
        _confirm(exp, seeds=confirm_seeds, top_k=1, metric=metric, address=address,
                 max_concurrent=max_concurrent, max_failures=max_failures, log_to=trackers,
                 verbose=2 if verbose else 1)


def _confirm(exp: str, **kwargs: object) -> None:
    from lossearch.search.confirm import confirm as run_confirm
    from lossearch.search.verdict_report import finish_confirm

    done = run_confirm(exp, announce=typer.echo, **kwargs)  # type: ignore[arg-type]
    finish_confirm(exp, done.metric, done.mode)
    from lossearch.search.export import export_best
    from lossearch.search.report import best_config_path

    path = export_best(exp, out=best_config_path(exp))[0]
    typer.echo(f"confirmed winner's config: {path}")


@app.command()
def confirm(
    experiment: str = typer.Argument(..., help="Experiment directory or URI."),
    seeds: int = typer.Option(3, "--seeds", help="Seeds per configuration (seed .. seed+S-1)."),
    top: int = typer.Option(1, "--top", help="Best configurations per loss family (K)."),
    metric: str = typer.Option(None, "--metric", help="Metric (default: the search's)."),
    address: str = typer.Option(None, "--address", help="Ray cluster address (HOST:PORT)."),
    max_concurrent: int = typer.Option(
        None, "--max-concurrent", help="Runs at once (default: the search's)."
    ),
    max_failures: int = _max_failures_option(),
    log_to: str = _log_to_option(),
    verbose: bool = _verbose_option(),
) -> None:
    """Re-train each family's best configs under S seeds, score on test, print the verdict.

    Writes EXP/confirm/ (runs, per-question test records, verdict.csv). Running it again
    skips finished runs and resumes the others.
    """
    _confirm(experiment, seeds=seeds, top_k=top, metric=metric, address=address,
             max_concurrent=max_concurrent, max_failures=max_failures,
             log_to=_trackers(log_to), verbose=2 if verbose else 1)


@app.command()
def resume(
    experiment: str = typer.Argument(..., help="Experiment directory or URI."),
    address: str = typer.Option(None, "--address", help="Ray cluster address (HOST:PORT)."),
    verbose: bool = _verbose_option(),
) -> None:
    """Continue a search whose driver died; unfinished trials resume from checkpoints."""
    from lossearch.search.driver import resume as run_resume
    from lossearch.search.report import finish_search

    finish_search(run_resume(experiment, address=address, verbose=2 if verbose else 1,
                             announce=typer.echo))


@app.command()
def export(
    experiment: str = typer.Argument(..., help="Experiment directory or URI."),
    metric: str = typer.Option(None, "--metric", help="Metric (default: the search's)."),
    mode: str = typer.Option(None, "--mode", help="max or min (default: the search's)."),
    out: str = typer.Option(
        None, "--out", help="Where to write the config (default best.yaml; not with --model)."
    ),
    per_loss: bool = typer.Option(False, "--per-loss", help="One file per loss family."),
    model: str = typer.Option(
        None, "--model", help="Write the best model's weights to this Hugging Face directory."
    ),
    merge: bool = typer.Option(False, "--merge", help="--model: merge LoRA into a full model."),
) -> None:
    """Write the best trial's complete training config for `lossearch train`.

    With --model DIR, write the best model instead: LoRA adapter (or full weights), tokenizer
    and lossearch.yaml (config and metrics).
    """
    if model is None:
        if merge:
            raise LossearchError("--merge needs --model DIR")
        from lossearch.search.export import export_best

        target = "best.yaml" if out is None else out
        for path in export_best(experiment, metric=metric, mode=mode, out=target,
                                per_loss=per_loss):
            typer.echo(str(path))
        return
    if per_loss:
        raise LossearchError("--model exports one model: leave out --per-loss")
    if out is not None:
        raise LossearchError(
            "--model DIR writes the config into DIR/lossearch.yaml: leave out --out (or export "
            "the config alone without --model)"
        )
    from lossearch.search.export_model import export_model

    info = export_model(experiment, model, merge=merge, metric=metric, mode=mode)
    typer.echo(
        f"{model}: {info['weights']} weights of {info['family']} (trial {info['trial_id']}, "
        f"seed {info['seed']}, epoch {info['epoch']})"
    )


@app.command()
def analyze(
    experiments: list[str] = typer.Argument(..., help="Experiment directories or URIs."),
    metric: str = typer.Option(None, "--metric", help="Metric (default: the search's)."),
    mode: str = typer.Option(None, "--mode", help="max or min (default: the search's)."),
    out: str = typer.Option(
        None, "--out", help="Output folder (default EXP/analysis; ./analysis-NAME for a URI)."
    ),
    fmt: str = typer.Option("table", "--format", help="table (rich) or json (stdout only)."),
) -> None:
    """Rank loss families against CE, plot, and write trials.parquet, rankings.csv, report.md."""
    from analysis.report import run_analysis
    from analysis.tables import rankings_json, rankings_table

    if fmt not in ("table", "json"):
        raise LossearchError(f"--format must be table or json, got '{fmt}'")
    result = run_analysis(experiments, metric=metric, mode=mode, out=out)
    for line in result.warnings:
        typer.echo(f"warning: {line}", err=True)
    if fmt == "json":
        typer.echo(rankings_json(result.rankings))
        return
    from rich.console import Console

    from analysis.tables import expected_max_table

    console = Console()
    console.print(rankings_table(result.rankings, result.metric))
    if result.expected_max is not None:
        console.print(expected_max_table(result.expected_max, result.metric))
    typer.echo(f"report: {result.out_dir / 'report.md'}")


def refuse_repeated_options(args: list[str]) -> None:
    """A one-value option given twice (``--out a.yaml --out b.yaml``) is an error: the parser
    would keep the last and drop the first without a word. Options that take several values
    (``--warm-start``) and flags may repeat; ``--`` ends the options."""
    command = typer.main.get_command(app)
    name = next((a for a in args if not a.startswith("-")), None)
    sub = getattr(command, "commands", {}).get(name) if name else None
    if sub is None:
        return  # an unknown command is click's error
    counts: dict[str, int] = {}
    for arg in args[: args.index("--")] if "--" in args else args:
        for param in sub.params:
            if param.param_type_name != "option" or param.multiple or param.is_flag:
                continue
            if any(arg == opt or (opt.startswith("--") and arg.startswith(opt + "="))
                   for opt in param.opts):
                counts[param.opts[0]] = counts.get(param.opts[0], 0) + 1
    repeated = [opt for opt, n in counts.items() if n > 1]
    if repeated:
        raise LossearchError(f"{repeated[0]} given more than once; give it once")


def main() -> None:
    """Console-script entry point: run the app, turn user errors into one line and exit 2.

    SIGINT and SIGTERM stop a command quietly (:func:`lossearch.interrupt.catch_stop_signals`):
    one line, ``interrupted — <what was kept, how to resume>``, and exit status 130 or 143.
    """
    from lossearch.interrupt import catch_stop_signals, interrupted, received_signal

    catch_stop_signals()
    one_line_warnings()
    try:
        refuse_repeated_options(sys.argv[1:])
        app(standalone_mode=False)
    except Interrupted as stop:
        _exit_interrupted(stop)
    except LossearchError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        if received_signal() is not None:  # a stop signal outside train/search: no detail
            _exit_interrupted(interrupted())
        typer.echo("aborted", err=True)
        sys.exit(130)
    except TyperException as exc:  # usage errors: unknown command or option, bad value
        if exc.format_message():  # empty for a bare `lossearch`, whose help is already out
            typer.echo(f"error: {exc.format_message()} (see --help)", err=True)
        sys.exit(2)


def one_line_warnings() -> None:
    """Print lossearch's own warnings (``PartialExperimentWarning``, ``RankingWarning``, ...)
    as ``warning: <message>``, without Python's source file and line; others as Python does."""
    import warnings

    python_format = warnings.formatwarning

    def formatwarning(
        message: Warning | str, category: type[Warning], filename: str, lineno: int,
        line: str | None = None,
    ) -> str:
        if category.__module__.partition(".")[0] in ("lossearch", "analysis"):
            return f"warning: {message}\n"
        return python_format(message, category, filename, lineno, line)

    warnings.formatwarning = formatwarning


def _exit_interrupted(stop: Interrupted) -> None:
    """Print ``interrupted — <detail>`` and exit 128 + the signal (130 SIGINT, 143 SIGTERM).

    Ray is shut down first, with this process's output muted: its workers, stopped by
    SIGTERM, may print a traceback from their own SIGTERM handler, which the driver's log
    subscriber would forward after the one line.
    """
    _shutdown_ray_quietly()
    typer.echo("interrupted" + (f" — {stop.detail}" if stop.detail else ""), err=True)
    sys.exit(stop.exit_code)


def _shutdown_ray_quietly() -> None:
    import contextlib
    import os

    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), \
            contextlib.redirect_stderr(null):
        ray.shutdown()


if __name__ == "__main__":
    main()
