"""The confirm stage: re-train each family's best configurations under fresh seeds, on test.

A search selects on the validation split, so its best values are optimistic. ``confirm``
takes, for every loss family, its ``top_k`` best *finished* trials (by the seed mean of the
final validation metric; a pruned trial never qualifies), re-trains each from scratch at the
search's full budget under seeds ``seed .. seed + S - 1`` (S seeds in one run, as a search
trial does) and scores the final model of every seed on the test split, keeping each
question's prediction and correctness. :func:`analysis.verdict` turns those records into the
paired comparison against CE and against the ``answer_ce`` control.

Layout, under the experiment ``EXP``::

    EXP/confirm/confirm.yaml                 # metric, mode, seeds, top_k, the runs planned
    EXP/confirm/runs/<id>/                   # the run's checkpoints (checkpoint_*)
    EXP/confirm/runs/<id>/result.json        # written when the run is complete
    EXP/confirm/runs/<id>/test_predictions.seed<k>.jsonl
    EXP/confirm/verdict.csv                  # written by lossearch confirm at the end

``<id>`` is ``<family>-<trial_id>``. Runs go through Ray Tune (one trial per run, up to the
search's ``max_concurrent`` at once), trained as search trials are
(:func:`lossearch.search.trial.train_in_trial`). Running
confirm again skips runs whose ``result.json`` exists and resumes the others from their
latest checkpoint, so a killed confirm continues where it stopped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict

from lossearch.errors import LossearchError
from lossearch.experiment import confirm_path, read_meta
from lossearch.storage import absolute_path, file_exists, is_uri, join_uri, read_text, write_text

PLAN_FILE = "confirm.yaml"
RESULT_FILE = "result.json"


class PlannedRun(BaseModel):
    """One confirm run: a search trial's configuration, re-trained under ``seeds``."""

    model_config = ConfigDict(extra="forbid")

    id: str
    family: str
    trial_id: str
    rank: int
    config: dict[str, Any]
    seeds: list[int]
    lr_edge: bool = False


class ConfirmPlan(BaseModel):
    """``confirm.yaml``: what a confirm of one experiment trains."""

    model_config = ConfigDict(extra="forbid")

    metric: str
    mode: str
    seeds: list[int]
    top_k: int
    runs: list[PlannedRun]


# --------------------------------------------------------------------------- the plan


def lr_on_edge(meta: dict[str, Any], family: str, lr: float, margin: float = 1.15) -> bool:
    """True when ``lr`` lies within a factor ``margin`` of an end of ``family``'s searched
    learning-rate range (the search metadata's ``lr_range``); False where lr was not searched.
    """
    bounds = meta["lr_range"].get(family)
    if not bounds:
        return False
    low, high = float(bounds[0]), float(bounds[1])
    return lr <= low * margin or lr >= high / margin


def plan(
    exp: str, *, seeds: int, top_k: int, metric: str | None = None
) -> ConfirmPlan:
    """The runs a confirm of ``exp`` trains: each family's ``top_k`` best finished trials.

    Raises:
        LossearchError: not an experiment, ``seeds`` or ``top_k`` below 1, no finished trial
            with a value for ``metric``.
    """
    from lossearch.search.export import best_configs

    if seeds < 1:
        raise LossearchError(f"--seeds must be at least 1, got {seeds}")
    if top_k < 1:
        raise LossearchError(f"--top must be at least 1, got {top_k}")
    from analysis import metric_mode

    meta = read_meta(exp)
    metric = metric or meta["metric"]
    # the search's mode for its metric; another metric's own direction (loss*: min), as
    # lossearch analyze ranks it
    mode = metric_mode(metric, search_metric=meta["metric"], search_mode=meta["mode"])
    first = int(meta["base_config"].get("seed", 0))
    seed_list = list(range(first, first + seeds))
    runs = []
    for entry in best_configs(exp, metric, mode, per_loss=True, top_k=top_k):
        cfg = entry["config"].model_copy(update={"seed": seed_list[0]})
        runs.append(
            PlannedRun(
                id=f"{entry['family']}-{entry['trial_id']}",
                family=entry["family"],
                trial_id=entry["trial_id"],
                rank=entry["rank"],
                config=cfg.to_dict(),
                seeds=seed_list,
                lr_edge=lr_on_edge(meta, entry["family"], cfg.optim.lr),
            )
        )
    return ConfirmPlan(metric=metric, mode=mode, seeds=seed_list, top_k=top_k, runs=runs)


def read_plan(root: str) -> ConfirmPlan | None:
    """The plan saved in ``root/confirm.yaml`` (``root``: ``EXP/confirm``), or None when
    there is none.

    Raises:
        LossearchError: one line naming the file: unreadable, malformed YAML, or not a
            confirm plan (its message says which key); deleting it lets confirm plan again.
    """
    from lossearch.config import validate_as

    if not file_exists(root, PLAN_FILE):
        return None
    where = join_uri(root, PLAN_FILE)
    fix = "delete it and re-run lossearch confirm to plan again"
    try:
        tree = yaml.safe_load(read_text(root, PLAN_FILE))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark is not None else ""
        raise LossearchError(f"{where}: malformed YAML{line}; {fix}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise LossearchError(f"cannot read {where}: {err}") from None
    if not isinstance(tree, dict):
        raise LossearchError(f"{where}: not a confirm plan (not a mapping); {fix}")
    try:
        return validate_as(ConfirmPlan, tree)
    except LossearchError as err:
        raise LossearchError(f"{where}: not a confirm plan ({err}); {fix}") from None


# --------------------------------------------------------------------------- one run


def run_confirm_trial(
    config: dict[str, Any], *, runs: dict[str, dict[str, Any]], runs_path: str,
    max_failures: int,
) -> None:
    """Tune function trainable: one confirm run, then its ``result.json`` and test records."""
    from lossearch.checkpointing import read_state, record_name
    from lossearch.config import validate
    from lossearch.search.trial import train_in_trial

    run = PlannedRun.model_validate(runs[config["run"]])
    cfg = validate(run.config)
    # validation once, after the last epoch: a confirm run selects nothing along the way
    cfg.eval.every_epochs = cfg.optim.epochs
    t0 = time.time()
    open_final = train_in_trial(
        cfg, run.seeds, runs_path, run.id, max_failures=max_failures, test=True
    )
    run_dir = join_uri(runs_path, run.id)
    with open_final() as ckpt:
        _, history = read_state(ckpt)
        for seed in run.seeds:
            write_text(run_dir, record_name(seed), Path(ckpt, record_name(seed)).read_text())
    last = history[-1]
    per_seed = {seed: seed_metrics(last, seed) for seed in run.seeds}
    record = {
        "id": run.id,
        "family": run.family,
        "trial_id": run.trial_id,
        "rank": run.rank,
        "task": cfg.task.name,
        "model": cfg.model.name_or_path,
        "seeds": run.seeds,
        "epochs": int(last["epoch"]),
        "wall_s": round(time.time() - t0, 1),
        "config": run.config,
        "validation": {str(seed): m[0] for seed, m in per_seed.items()},
        "test": {str(seed): m[1] for seed, m in per_seed.items()},
        "lr_edge": run.lr_edge,
    }
    write_text(run_dir, RESULT_FILE, json.dumps(record, indent=1) + "\n")


_NOT_EVAL = ("loss", "tokens_per_s", "epoch")


def seed_metrics(
    metrics: dict[str, Any], seed: int
) -> tuple[dict[str, float], dict[str, float]]:
    """``(validation, test)`` evaluation metrics of one seed from a run's last report.

    A report holds ``seed<k>/<metric>`` (validation) and ``seed<k>/test/<metric>`` for every
    seed; training statistics (``loss*``, ``tokens_per_s``) are left out.
    """
    prefix = f"seed{seed}/"
    validation, test = {}, {}
    for key, value in metrics.items():
        if not key.startswith(prefix) or not isinstance(value, (int, float)):
            continue
        name = key[len(prefix) :]
        if name.startswith("test/"):
            test[name[len("test/") :]] = float(value)
        elif not name.startswith(_NOT_EVAL):
            validation[name] = float(value)
    return validation, test


# --------------------------------------------------------------------------- the stage


def confirm(
    exp: str,
    *,
    seeds: int = 3,
    top_k: int = 1,
    metric: str | None = None,
    address: str | None = None,
    max_concurrent: int | None = None,
    max_failures: int = 0,
    verbose: int = 1,
    announce: Callable[[str], None] | None = None,
    log_to: tuple[str, ...] = (),
) -> ConfirmPlan:
    """Run (or continue) the confirm stage of ``exp``; returns its plan (``confirm.yaml``).

    ``verbose``: 0 silent, 1 lossearch's live view, 2 Ray's own output
    (:mod:`lossearch.search.progress`); ``log_to``: trackers (:mod:`lossearch.tracking`),
    one run per confirm run, under ``exp/tracking``.

    A plan already on disk is kept when it asks for the same seeds, ``top_k`` and metric;
    asking for others is an error (use another experiment copy) rather than a silent mix.
    """
    from lossearch.preflight import check_local_gpu, preflight, warn
    from lossearch.ray_train import check_ray_address
    from lossearch.search.driver import _fit, check_counts, trial_processes

    check_counts(max_concurrent=max_concurrent, max_failures=max_failures)
    if not is_uri(exp):
        exp = absolute_path(exp)
    new = plan(exp, seeds=seeds, top_k=top_k, metric=metric)
    root = confirm_path(exp)
    old = read_plan(root)
    if old is not None:
        if (old.seeds, old.top_k, old.metric) != (new.seeds, new.top_k, new.metric):
            raise LossearchError(
                f"{root} already holds a confirm with seeds {old.seeds}, top {old.top_k}, "
                f"metric {old.metric}; this one asks for seeds {new.seeds}, top {new.top_k}, "
                f"metric {new.metric}"
            )
        new = old
    from lossearch.config import validate

    notices = preflight(validate(new.runs[0].config), test=True)  # the test split, before Ray
    check_ray_address(address)
    check_local_gpu(validate(new.runs[0].config), address)
    from lossearch.tracking import check_destination

    check_destination(log_to, exp)
    warn(notices)
    write_text(root, PLAN_FILE, yaml.safe_dump(new.model_dump(), sort_keys=False))
    runs_path = join_uri(root, "runs")
    todo = [r for r in new.runs if not file_exists(join_uri(runs_path, r.id), RESULT_FILE)]
    if announce:
        done = len(new.runs) - len(todo)
        announce(
            f"confirm: {len(new.runs)} runs ({len({r.family for r in new.runs})} families, "
            f"top {new.top_k} each) x seeds {new.seeds} on the test split"
            + (f"; {done} already done" if done else "")
        )
    if todo:
        meta = read_meta(exp)
        concurrent = meta["max_concurrent"] if max_concurrent is None else max_concurrent
        _fit(
            root,
            address,
            lambda: _tuner(
                todo, runs_path, root, concurrent, max_failures, verbose,
                view={"exp": exp, "metric": new.metric, "log_to": log_to},
            ),
            resume_hint=f"continue with: lossearch confirm {exp} --seeds {len(new.seeds)} "
            f"--top {new.top_k}",
            unit="confirm run",
            processes=trial_processes(meta["base_config"], concurrent),
        )
    missing = [r.id for r in new.runs if not file_exists(join_uri(runs_path, r.id), RESULT_FILE)]
    if missing:
        raise LossearchError(
            f"confirm runs did not finish: {', '.join(missing)} (re-run lossearch confirm to "
            "continue)"
        )
    return new


def _tuner(
    todo: list[PlannedRun], runs_path: str, root: str, max_concurrent: int,
    max_failures: int, verbose: int, view: dict[str, Any] | None = None,
) -> Any:
    """A Tune grid with one trial per confirm run, at most ``max_concurrent`` at once;
    ``view`` (``exp``, ``metric``, ``log_to``): the live view's metric and the trackers."""
    from ray import tune

    from lossearch.search.progress import describe, flat_loss, live_view
    from lossearch.search.trial import in_trial_process, trial_resources, tune_failures
    from lossearch.tracking import tune_callbacks

    fn = tune.with_parameters(
        run_confirm_trial,
        runs={r.id: r.model_dump() for r in todo},
        runs_path=runs_path,
        max_failures=max_failures,
    )
    config = todo[0].config  # the runs differ in loss and optimiser, not in scaling
    in_process = in_trial_process(config)
    view = view or {}
    out = live_view(
        verbose=verbose, total=len(todo),
        metrics=[view.get("metric", ""), f"test/{view.get('metric', '')}"],
        epochs=int(config["optim"]["epochs"]), columns={"run": "run"},
        descriptions={r.id: describe(flat_loss(r.family, r.config)) for r in todo},
        unit="confirm run",
    )
    trackers = tune_callbacks(view.get("log_to", ()), view.get("exp", root), stage="confirm")
    return tune.Tuner(
        tune.with_resources(fn, trial_resources(config)),
        param_space={"run": tune.grid_search([r.id for r in todo])},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=max(1, max_concurrent), reuse_actors=in_process
        ),
        run_config=tune.RunConfig(
            name=f"tune-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=root,
            failure_config=tune.FailureConfig(max_failures=tune_failures(config, max_failures)),
            callbacks=out["callbacks"] + trackers,
            **out["run_config"],
        ),
    )
