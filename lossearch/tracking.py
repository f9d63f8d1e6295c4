"""Experiment trackers (``--log-to tensorboard,mlflow,wandb``): where a run's metrics go too.

A search or confirm logs through Ray Tune's own logger callbacks, one tracker run per trial:
:class:`ray.tune.logger.TBXLoggerCallback` (its event files redirected from the trial folder
to ``EXP/tracking/tensorboard/<trial>/``, tags ``ray/tune/<metric>``),
:class:`ray.air.integrations.mlflow.MLflowLoggerCallback` and
:class:`ray.air.integrations.wandb.WandbLoggerCallback`; each logs every epoch's metrics (loss
components included), the trial's flat config as parameters. ``lossearch train`` (one
worker, in this process, no Tune) logs through the trackers' own APIs from its report
callback (:func:`tracked`): tags are the metric names, the run's config flattened
(``optim.lr``) as parameters, files in ``RUN/tracking/``.

MLflow writes to ``MLFLOW_TRACKING_URI`` when set, else to the SQLite store
``<EXP or RUN>/tracking/mlflow.db``; W&B to ``tracking/wandb`` (online unless ``WANDB_MODE``
says ``offline``). A tracker whose package is missing is a :class:`LossearchError` naming the
extra to install, raised before Ray starts.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from lossearch.config import flatten
from lossearch.errors import LossearchError
from lossearch.experiment import TRACKING_DIR
from lossearch.storage import is_uri

# tracker → (the module it needs, the lossearch extra that installs it)
TRACKERS = {
    "tensorboard": ("tensorboardX", "tracking"),
    "mlflow": ("mlflow", "tracking"),
    "wandb": ("wandb", "wandb"),
}
Report = Callable[[dict[str, Any], "str | None"], None]


def parse_log_to(value: str | None) -> tuple[str, ...]:
    """``"tensorboard,mlflow"`` → ``("tensorboard", "mlflow")``; an unknown tracker or one
    whose package is not installed is a ``LossearchError`` (one line, naming the extra), and
    so is a given value that names no tracker (``""``, ``","``)."""
    names = [n.strip().lower() for n in (value or "").split(",") if n.strip()]
    if value is not None and not names:
        raise LossearchError(f"--log-to {value!r} names no tracker (use {', '.join(TRACKERS)})")
    for name in names:
        if name not in TRACKERS:
            raise LossearchError(
                f"--log-to: unknown tracker '{name}' (use {', '.join(TRACKERS)})"
            )
        module, extra = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            raise LossearchError(
                f"--log-to {name} needs the {module} package: pip install 'lossearch[{extra}]'"
            )
    return tuple(dict.fromkeys(names))


def check_destination(log_to: tuple[str, ...], where: str) -> None:
    """Trackers write into ``where/tracking``: a local experiment, or MLflow to its own
    ``MLFLOW_TRACKING_URI``. Raises ``LossearchError`` otherwise (before Ray starts)."""
    if not is_uri(where):
        return
    local = [t for t in log_to if not (t == "mlflow" and os.environ.get("MLFLOW_TRACKING_URI"))]
    if local:
        raise LossearchError(
            f"--log-to {local[0]} writes to EXP/{TRACKING_DIR}/, which needs a local --storage "
            f"(not {where}); for mlflow set MLFLOW_TRACKING_URI"
        )


def mlflow_uri(root: Path) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the SQLite store ``root/mlflow.db`` (MLflow 3
    refuses a new file store ``mlruns/`` unless ``MLFLOW_ALLOW_FILE_STORE=true``)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(root / 'mlflow.db').resolve()}"


def _trial_name(trial: Any) -> str:
    """A trial's tracker run name: ``confirm-<run id>`` for a confirm run, else the trial id."""
    run = (trial.config or {}).get("run")
    return f"confirm-{run}" if run else str(trial.trial_id)


def tune_callbacks(log_to: tuple[str, ...], exp: str, *, stage: str) -> list[Any]:
    """Ray Tune logger callbacks for ``log_to``, writing under ``exp/tracking`` (``stage``:
    ``search`` or ``confirm``, an MLflow tag and the W&B group). Without ``tensorboard``,
    one that keeps Tune from writing its default TensorBoard files into the trial folders."""
    from lossearch.ray_internals import no_tune_tensorboard

    root = Path(exp) / TRACKING_DIR
    name = Path(str(exp).split("?", 1)[0].rstrip("/")).name
    out: list[Any] = []
    if "tensorboard" in log_to:
        out.append(_tensorboard_callback(root / "tensorboard"))
    else:
        out.append(no_tune_tensorboard())
    if "mlflow" in log_to:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        out.append(
            MLflowLoggerCallback(
                tracking_uri=mlflow_uri(root), experiment_name=name,
                tags={"lossearch.stage": stage}, save_artifact=False,
            )
        )
    if "wandb" in log_to:
        from ray.air.integrations.wandb import WandbLoggerCallback

        (root / "wandb").mkdir(parents=True, exist_ok=True)
        out.append(
            WandbLoggerCallback(project=name, group=stage, log_config=True, dir=str(root))
        )
    return out


def _tensorboard_callback(logdir: Path) -> Any:
    """Ray Tune's TBX logger writing each trial's event files to ``logdir/<trial>``."""
    from lossearch.ray_internals import tbx_callback_into

    return tbx_callback_into(lambda trial: os.path.join(str(logdir), _trial_name(trial)))


# --------------------------------------------------------------------------- lossearch train


def numbers(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite numeric metrics of a report (strings such as ``worker_pid`` left out)."""
    return {
        k: float(v) for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


@contextmanager
def tracked(
    report: Report, log_to: tuple[str, ...], run_dir: Path, *, name: str,
    config: Mapping[str, Any],
) -> Iterator[Report]:
    """``report`` that also logs every epoch's metrics (step: the epoch) to ``log_to``'s
    trackers, one tracker run for the training, ``config`` (flattened) as its parameters;
    the trackers' runs are closed on leaving (marked failed on an exception)."""
    if not log_to:
        yield report
        return
    root = Path(run_dir) / TRACKING_DIR
    params = flatten(config)
    with ExitStack() as stack:
        loggers = [
            stack.enter_context(_OPEN[t](root, name, Path(run_dir).name, params)) for t in log_to
        ]

        def report_and_log(metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
            report(metrics, checkpoint_dir)
            values, step = numbers(metrics), int(metrics.get("epoch") or 0)
            for log in loggers:
                log(values, step)

        yield report_and_log


@contextmanager
def _tensorboard(root: Path, name: str, run: str, params: dict[str, Any]) -> Iterator[Any]:
    from tensorboardX import SummaryWriter

    writer = SummaryWriter(str(root / "tensorboard" / run))

    def log(values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            writer.add_scalar(key, value, global_step=step)
        writer.flush()

    try:
        yield log
    finally:
        writer.close()


@contextmanager
def _mlflow(root: Path, name: str, run: str, params: dict[str, Any]) -> Iterator[Any]:
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_uri(root))
    found = client.get_experiment_by_name(name)
    exp_id = found.experiment_id if found else client.create_experiment(name)
    run_id = client.create_run(
        exp_id, run_name=run, tags={"lossearch.stage": "train"}
    ).info.run_id
    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
        client.log_batch(run_id, params=items[i : i + 100])

    def log(values: dict[str, float], step: int) -> None:
        import time

        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, step) for k, v in values.items()]
        for i in range(0, len(batch), 1000):
            client.log_batch(run_id, metrics=batch[i : i + 1000])

    status = "FAILED"
    try:
        yield log
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status=status)


@contextmanager
def _wandb(root: Path, name: str, run: str, params: dict[str, Any]) -> Iterator[Any]:
    import wandb

    root.mkdir(parents=True, exist_ok=True)
    wrun = wandb.init(project=name, name=run, dir=str(root), config=params, reinit=True)
    exit_code = 1
    try:
        yield lambda values, step: wrun.log(values, step=step)
        exit_code = 0
    finally:
        wrun.finish(exit_code=exit_code)


_OPEN = {"tensorboard": _tensorboard, "mlflow": _mlflow, "wandb": _wandb}
