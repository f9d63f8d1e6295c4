"""The search driver: Ray Tune + Optuna over training configs.

Each trial is the function trainable of :mod:`lossearch.search.trial`: one-worker trainings
run in the trial's own (reused) process, multi-worker ones as a Ray Train run inside it.

Experiment directory ``<storage>/<name>/``: Ray Tune's files, ``lossearch_search.yaml`` (what
is needed to resume, export and analyse without the original command line), and
``trainings/<trial_id>/`` (each trial's checkpoints, fixed paths so a restarted driver
resumes half-trained trials from their checkpoints).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from lossearch.errors import LossearchError
from lossearch.experiment import SEARCH_FILE, check_mode, default_mode, read_meta, write_meta
from lossearch.storage import absolute_path, is_uri, join_uri


def _scheduler(kind: str, meta: dict[str, Any]) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if kind == "fifo":
        return FIFOScheduler()
    if kind != "asha":
        raise LossearchError(f"unknown scheduler '{kind}' (use asha or fifo)")
    max_t = int(meta["base_config"]["optim"]["epochs"])
    if int(meta["asha"]["grace_period"]) > max(max_t, 1):  # Ray's assert, as a traceback
        raise LossearchError(
            f"search.grace_period {meta['asha']['grace_period']} is more than optim.epochs "
            f"{max_t}: ASHA stops trials at rungs from grace_period epochs on, up to the last"
        )
    return ASHAScheduler(
        time_attr="epoch",
        metric=meta["metric"],
        mode=meta["mode"],
        max_t=max(max_t, 1),
        grace_period=int(meta["asha"]["grace_period"]),
        reduction_factor=float(meta["asha"]["reduction_factor"]),
        stop_last_trials=False,  # a trial at max_t ends by itself, its trainer shut down cleanly
    )


def local_ray_cpus() -> int:
    """The CPUs a local Ray started for a search declares: this machine's cores + 1. A
    trial holds 0.01 CPU beside its workers (0.99 each for one-worker trials); the spare CPU
    lets K single-CPU trainings run side by side on K cores."""
    return (os.cpu_count() or 1) + 1


def _local_ray(address: str | None, processes: TrialProcesses) -> None:
    from lossearch.ray_train import init_ray

    init_ray(
        address,
        num_cpus=None if address else local_ray_cpus(),
        warm=processes.warm,
        fork=processes.fork,
    )


class TrialProcesses(NamedTuple):
    """How a local Ray started for a search readies its trials' processes (ignored when
    joining a cluster)."""

    fork: int
    """Trials train in children of one fork server that imported first
    (:mod:`lossearch.fork_server`), each with this many CPUs (its OpenMP threads); 0: no
    fork server."""
    warm: int
    """Else this many of Ray's first workers import at start-up (:mod:`lossearch.warm`)."""


def trial_processes(config: dict[str, Any], max_concurrent: int) -> TrialProcesses:
    """One-worker CPU trials on Linux fork from a fork server
    (:func:`lossearch.fork_server.wanted`); other one-worker trials get one warm worker per
    concurrent trial, at most one per core (a local Ray starts one idle worker per core; the
    driver waits for the warm ones to register); Ray Train trials neither."""
    from lossearch.fork_server import wanted
    from lossearch.search.trial import in_trial_process

    if not in_trial_process(config):
        return TrialProcesses(fork=0, warm=0)
    scaling = config["scaling"]
    if wanted(bool(scaling["use_gpu"])):
        return TrialProcesses(fork=max(1, int(scaling["cpus_per_worker"])), warm=0)
    return TrialProcesses(fork=0, warm=min(int(max_concurrent), os.cpu_count() or 1))


def _check_best_config_target(exp_path: str) -> None:
    """A search in a bucket writes its best config to ``./best-<name>.yaml`` when it ends
    (:func:`lossearch.search.report.best_config_path`): a user's own file there is refused
    before the search, or its resume, starts."""
    if is_uri(exp_path):
        from lossearch.search.export import check_replaceable
        from lossearch.search.report import best_config_path

        check_replaceable(best_config_path(exp_path))


def _experiment_exists(exp_path: str) -> bool:
    """Something is already at ``exp_path`` (a non-empty folder, a file, objects under a URI)."""
    if not is_uri(exp_path):
        p = Path(exp_path)
        return p.exists() and (not p.is_dir() or any(p.iterdir()))
    import pyarrow.fs as pafs

    try:
        fs, root = pafs.FileSystem.from_uri(exp_path)
        found = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    except (OSError, ValueError) as err:  # no such bucket, no credentials, bad URI
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise LossearchError(f"cannot use storage {exp_path}: {first}") from None
    return bool(found)


def _split_exp_path(exp_path: str) -> tuple[str, str]:
    """``(storage, name)`` of an experiment path or URI (a ``?query`` stays with storage)."""
    path, sep, query = exp_path.partition("?") if is_uri(exp_path) else (exp_path, "", "")
    storage, _, name = path.rstrip("/").rpartition("/")
    return storage + sep + query, name


def _default_storage() -> str:
    return str(Path("experiments").resolve())


def run_search(
    space: str | Path | dict[str, Any],
    *,
    num_samples: int | None = None,
    max_concurrent: int | None = None,
    seeds: int | None = None,
    scheduler: str | None = None,
    metric: str | None = None,
    mode: str | None = None,
    address: str | None = None,
    storage: str | None = None,
    name: str | None = None,
    max_failures: int = 0,
    overrides: list[str] | dict[str, Any] | None = None,
    grace_period: int | None = None,
    reduction_factor: float | None = None,
    verbose: int = 1,
    announce: Callable[[str], None] | None = None,
    per_family: int | None = None,
    require_test: bool = False,
    warm_start: list[str] | None = None,
    optuna_storage: str | None = None,
    log_to: tuple[str, ...] = (),
    keep: str | None = None,
) -> str:
    """Run a search; returns the experiment path (local directory or URI).

    ``overrides`` (``["optim.epochs=2"]``) apply to the space's base config; an override of
    a key the space sets fixes it at the override's value instead (it leaves the search
    space, and ``announce`` says so). The search optimises ``metric`` (default: the space's,
    else ``exact_match``) averaged over ``seeds`` seeds per trial. ``per_family=N`` runs
    exactly N trials of every loss family (``num_samples`` must then be None or N x
    families). ``require_test`` (a confirm follows) also checks before Ray starts that the
    test split loads. ``warm_start`` (earlier experiments of the same space) and
    ``optuna_storage`` (an RDB URL for the study): see :mod:`lossearch.search.study`.
    Arguments left as None take the space file's ``search:`` settings; a
    count below its minimum is a ``LossearchError``, raised before Ray starts. ``verbose``:
    0 silent, 1 lossearch's live view, 2 Ray's own output (:mod:`lossearch.search.progress`);
    ``log_to``: trackers, one run per trial (:mod:`lossearch.tracking`). ``keep``: what is
    kept of the trials' checkpoints when the search ends, ``best`` (default), ``all`` or
    ``none`` (:mod:`lossearch.search.retention`); stored in the metadata for ``resume``.
    """
    from lossearch.config import validate
    from lossearch.search.retention import DEFAULT_KEEP, check_keep
    from lossearch.search.space import load_space

    keep = check_keep(keep or DEFAULT_KEEP)

    check_counts(
        num_samples=num_samples,
        max_concurrent=max_concurrent,
        seeds=seeds,
        grace_period=grace_period,
        reduction_factor=reduction_factor,
        per_family=per_family,
        max_failures=max_failures,
    )
    sp = load_space(space, overrides or [])
    if per_family is not None:
        sp = sp.with_per_family(per_family)
    base_cfg = validate(sp.base)  # the base must be a valid training config on its own
    if base_cfg.eval.every_epochs != 1:
        raise LossearchError(
            "config key 'eval.every_epochs': must be 1 in a search (the searcher and ASHA "
            "need the metric every epoch)"
        )
    settings = sp.settings
    seeds = _given(seeds, settings["num_seeds"])
    max_concurrent = _given(max_concurrent, settings["max_concurrent"], 2)
    scheduler = _given(scheduler, settings["scheduler"])
    metric = _given(metric, settings["metric"])
    _check_metric(metric, base_cfg)
    mode = search_mode(mode, settings, metric)
    n = _given(num_samples, settings["num_samples"])
    if settings["per_family"] is not None and n != settings["num_samples"]:
        raise LossearchError(
            f"--num-samples {n} does not match per_family {settings['per_family']} x "
            f"{len(sp.family_names)} families = {settings['num_samples']} (leave it out)"
        )
    storage = storage or _default_storage()
    if not is_uri(storage):
        storage = absolute_path(storage)
    stem = Path(space).stem if isinstance(space, (str, Path)) else "space"
    name = _given(name, f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    _check_name(name)
    exp_path = join_uri(storage, name)
    if _experiment_exists(exp_path):
        raise LossearchError(
            f"experiment already exists: {exp_path} (use `lossearch resume` or another --name)"
        )
    _check_best_config_target(exp_path)
    from lossearch.search import study

    if optuna_storage:
        study.check_storage(optuna_storage, name)
    warm_paths, n = study.plan(sp, warm_start or [], metric, mode, n, num_samples is not None)
    meta = {
        "space": sp.raw,
        "base_config": base_cfg.to_dict(),
        "metric": metric,
        "mode": mode,
        "num_seeds": seeds,
        "seeds": [base_cfg.seed + i for i in range(seeds)],
        "num_samples": int(n),
        "max_concurrent": int(max_concurrent),
        "scheduler": scheduler,
        "asha": {
            "grace_period": _given(grace_period, settings["grace_period"]),
            "reduction_factor": _given(reduction_factor, settings["reduction_factor"]),
        },
        "max_failures": int(max_failures),
        "sampler_seed": int(settings.get("seed", 0)),
        "overrides": _plain_overrides(overrides),
        "per_family": settings["per_family"],
        "lr_range": sp.param_range("optim.lr"),
        "study_name": name,
        "optuna_storage": optuna_storage,
        "warm_start": warm_paths,
        "keep": keep,
        "log_to": list(log_to),
    }
    _scheduler(scheduler, meta)  # validate before anything is written
    from lossearch.preflight import check_local_gpu, preflight, warn

    # data, model path, lengths (and, when a confirm follows, the test split): checked here,
    # before Ray starts; the trials themselves never load the test split
    notices = preflight(base_cfg, test=require_test, search=True) + unused_settings(
        sp, scheduler, asha_given=[k for k, v in (("grace_period", grace_period),
                                                  ("reduction_factor", reduction_factor)) if v]
    )
    from lossearch.ray_train import check_ray_address

    check_ray_address(address)  # before the experiment directory is written
    check_local_gpu(base_cfg, address)
    from lossearch.tracking import check_destination

    check_destination(log_to, exp_path)
    warn(notices)  # the base config's: what every trial will not do as written
    try:
        write_meta(exp_path, meta)
    except OSError as err:
        raise LossearchError(f"cannot write experiment directory {exp_path}: {err}") from None
    if announce:
        for key, value in sp.fixed_by_override:
            announce(f"{key} fixed at {value} by the command line; removed from the search space")
        announce(f"experiment: {exp_path}")
    _fit(exp_path, address,
         lambda: _build_tuner(sp, meta, storage, name, exp_path, verbose, log_to),
         processes=trial_processes(meta["base_config"], meta["max_concurrent"]))
    _apply_keep(exp_path, keep, announce)
    return exp_path


def _apply_keep(exp_path: str, keep: str, announce: Callable[[str], None] | None) -> None:
    """The search has ended: delete the checkpoints ``keep`` does not keep, say what."""
    from lossearch.search.retention import after_search

    line = after_search(exp_path, keep)
    if announce:
        announce(line)


def _check_metric(metric: str | None, cfg: Any) -> None:
    """``metric`` is one the trials of ``cfg``'s task report (:func:`reported_metrics`, or a
    ``loss.<component>``); else one line, before anything runs (Tune found out only when the
    first trial reported, with a traceback)."""
    from lossearch.metrics import reported_metrics
    from lossearch.search.trial_config import LOSS_FAMILIES
    from lossearch.tasks import task_spec

    known = reported_metrics(task_spec(cfg.task.name, cfg.task.answer_pattern).kind)
    components = {f"loss.{c}" for c in LOSS_FAMILIES}
    if metric in known or metric in components:
        return
    raise LossearchError(
        f"--metric {metric!r} is not reported: trials of task {cfg.task.name} report "
        f"{', '.join(known)} and loss.<component>"
    )


def _check_name(name: str) -> None:
    """An experiment name is one folder name under the storage: not empty, no path."""
    if not name.strip() or name in (".", "..") or any(c in name for c in "/\\"):
        raise LossearchError(f"--name must be a folder name (no '/'), got {name!r}")


def unused_settings(sp: Any, scheduler: str, asha_given: Sequence[str] = ()) -> list[str]:
    """The ``search:`` settings the space's file sets (and the ASHA settings ``asha_given``
    on the command line) that the search will not read: ASHA's with ``scheduler`` fifo,
    TPE's ``n_startup_trials`` with the random or grid sampler. One line each."""
    given = set((sp.raw.get("search") or {}).keys())
    out = []
    if scheduler == "fifo":
        out += [f"search.{k} is ASHA's: ignored with scheduler fifo"
                for k in ("grace_period", "reduction_factor") if k in given or k in asha_given]
    if sp.sampler in ("random", "grid") and "n_startup_trials" in given:
        out.append(f"search.n_startup_trials is TPE's: ignored by the {sp.sampler} sampler")
    return out


def search_mode(given: str | None, settings: dict[str, Any], metric: str) -> str:
    """The search's mode: ``--mode``; else the space's ``search.mode`` when ``metric`` is the
    space's own ``search.metric``; else the metric's :func:`~lossearch.experiment.
    default_mode`. (``--metric loss.ce`` on a space whose mode ``max`` was for its
    ``exact_match`` maximised the loss: the worst trials won, while confirm and analysis
    minimised it.)"""
    in_space = settings["mode"] if metric == settings["metric"] else None
    return check_mode(_given(given, in_space, default_mode(metric)))


def _given(value: Any, *defaults: Any) -> Any:
    """``value`` unless it is None, else the first default that is not None."""
    for v in (value, *defaults):
        if v is not None:
            return v
    return None


def check_counts(**counts: Any) -> None:
    """The command line's counts (None: not given), each at or above its minimum: an int
    >= 1, ``max_failures`` >= 0 (Tune reads a negative one as "retry forever"), and
    ``reduction_factor`` a number > 1 (ASHA's)."""
    for key, value in counts.items():
        if value is None:
            continue
        flag = "--" + key.replace("_", "-")
        if key == "reduction_factor":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 1:
                raise LossearchError(f"{flag} must be greater than 1, got {value!r}")
            continue
        least = 0 if key == "max_failures" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise LossearchError(f"{flag} must be at least {least}, got {value!r}")


def _plain_overrides(overrides: list[str] | dict[str, Any] | None) -> Any:
    if not overrides:
        return []
    return list(overrides) if isinstance(overrides, list) else dict(overrides)


def _make_searcher(sp: Any, meta: dict[str, Any], exp_path: str | None = None) -> Any:
    """Ray Tune's ``OptunaSearch`` over the space (per-family budgets and warm start from
    ``meta``), recording into ``exp_path``'s study: :func:`lossearch.search.study.make_searcher`."""
    from lossearch.search.study import make_searcher

    return make_searcher(sp, meta, exp_path)


def _build_tuner(
    sp: Any, meta: dict[str, Any], storage: str, name: str, exp_path: str, verbose: int,
    log_to: tuple[str, ...] = (),
) -> Any:
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from lossearch.search.progress import search_view
    from lossearch.search.trial import (
        free_training_resources,
        in_trial_process,
        trainable,
        tune_failures,
    )
    from lossearch.tracking import tune_callbacks

    view = search_view(sp, meta, verbose)  # first: at verbose 1 it quiets Optuna's INFO lines
    searcher = _make_searcher(sp, meta, exp_path)
    return tune.Tuner(
        trainable(meta, exp_path),
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=meta["max_concurrent"]),
            scheduler=_scheduler(meta["scheduler"], meta),
            num_samples=meta["num_samples"],
            max_concurrent_trials=meta["max_concurrent"],
            # in-process trials: the next trial reuses the process, its imports done
            reuse_actors=in_trial_process(meta["base_config"]),
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            failure_config=tune.FailureConfig(
                max_failures=tune_failures(meta["base_config"], meta["max_failures"])
            ),
            callbacks=[free_training_resources(), *view["callbacks"],
                       *tune_callbacks(log_to, exp_path, stage="search")],
            **view["run_config"],
        ),
    )


def resume(
    exp_path: str, *, address: str | None = None, verbose: int = 1,
    announce: Callable[[str], None] | None = None,
) -> str:
    """Continue an experiment whose driver died: finished trials kept, unfinished resumed.

    Unfinished trials restart their Ray Train run, which resumes from its latest checkpoint;
    the Optuna searcher is restored with what it had learned; errored trials stay errored.
    Tune restores the search's live view and trackers with it; ``verbose=2`` shows Ray's own
    output instead (:func:`lossearch.search.progress.resume_view`). At the end, the
    checkpoints the search's ``--keep`` does not keep are deleted (``announce`` says what).
    """
    from ray import tune

    from lossearch.search.trial import trainable

    if not is_uri(exp_path):
        exp_path = absolute_path(exp_path)
        if not Path(exp_path).is_dir():
            raise LossearchError(f"experiment directory not found: {exp_path}")
    meta = read_meta(exp_path)
    _check_best_config_target(exp_path)
    if not tune.Tuner.can_restore(exp_path):  # a storage check: no Ray needed yet
        # The driver died in the seconds between writing lossearch_search.yaml and Tune's
        # first saved state: no trial had started, so the search starts over.
        if meta["num_samples"] is None:
            raise LossearchError(
                f"not a Ray Tune experiment (no experiment state), and its {SEARCH_FILE} is "
                f"incomplete (no 'num_samples'): {exp_path}"
            )
        from lossearch.ray_train import check_ray_address
        from lossearch.search.space import load_space

        check_ray_address(address)
        sp = load_space(meta["space"], meta["overrides"])
        storage, name = _split_exp_path(exp_path)
        from lossearch.tracking import check_destination, parse_log_to

        # the search's --log-to, checked again (a tracker's package may be gone since)
        log_to = parse_log_to(",".join(meta["log_to"])) if meta["log_to"] else ()
        check_destination(log_to, exp_path)
        _fit(exp_path, address,
             lambda: _build_tuner(sp, meta, storage, name, exp_path, verbose, log_to),
             processes=trial_processes(meta["base_config"], meta["max_concurrent"]))
        _apply_keep(exp_path, meta["keep"], announce)
        return exp_path
    from lossearch.search.progress import resume_view
    from lossearch.search.saved_state import check_resumable

    check_resumable(exp_path)
    resume_view(verbose)
    _fit(
        exp_path,
        address,
        lambda: tune.Tuner.restore(
            exp_path,
            trainable=trainable(meta, exp_path),
            resume_unfinished=True,
            resume_errored=False,
        ),
        processes=trial_processes(meta["base_config"], meta["max_concurrent"]),
    )
    _apply_keep(exp_path, meta["keep"], announce)
    return exp_path


def _fit(
    exp_path: str,
    address: str | None,
    make_tuner: Callable[[], Any],
    resume_hint: str | None = None,
    unit: str = "trial",
    processes: TrialProcesses = TrialProcesses(fork=0, warm=0),
) -> None:
    """Start Ray and run the tuner ``make_tuner()`` builds; a stop signal stops it gracefully.

    A local Ray started here readies its trials' processes as ``processes`` says
    (:func:`trial_processes`), and Tune's trial actors take Ray's idle workers
    (:func:`lossearch.ray_internals.tune_trials_in_job_env`).

    With the ``lossearch`` command's signal handling (:func:`lossearch.interrupt.
    catch_stop_signals`), SIGINT or SIGTERM ends the run with
    :class:`~lossearch.interrupt.Interrupted`, whose detail counts the finished trials (or
    other ``unit``) and says how to go on (``resume_hint``, by default the ``lossearch
    resume`` command); the experiment stays resumable.
    """
    from lossearch.interrupt import (
        Interrupted,
        catching_stop_signals,
        graceful_stop,
        interrupted,
    )
    from lossearch.ray_internals import (
        callback_usage_without_mlflow,
        stop_tune,
        tune_trials_in_job_env,
    )
    from lossearch.ray_train import local_ray_env

    resume_hint = resume_hint or f"resume with: lossearch resume {exp_path}"
    disabled = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    if catching_stop_signals():
        # Tune's own SIGINT handler would replace lossearch's; its SIGUSR1 one stays
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    try:
        _local_ray(address, processes)
        tuner = make_tuner()
        with (
            graceful_stop(stop_tune) as stop,
            tune_trials_in_job_env(local_ray_env()),
            callback_usage_without_mlflow(),
        ):
            grid = tuner.fit()
    except KeyboardInterrupt:  # before Tune listens, or a second signal
        raise interrupted(resume_hint) from None
    finally:
        if disabled is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = disabled
    if stop.signum is not None:
        # the trials Tune stopped count as terminated too: finished ones reported done
        n = sum(1 for r in grid if r.error is None and (r.metrics or {}).get("done"))
        raise Interrupted(stop.signum, f"{n} {unit}{'s' * (n != 1)} finished; {resume_hint}")
