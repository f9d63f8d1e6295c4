"""``lossearch train``: one fine-tuning run, written to a run directory.

The training is :func:`lossearch.fit.fit`. With one worker and no cluster named it runs in
this process, no Ray started, its checkpoints in ``<run>/checkpoints/``; otherwise as a Ray
Train V2 job (:func:`lossearch.ray_train.build_trainer`) that places the workers (data
parallelism over ``scaling.num_workers``, on a local Ray or the cluster), its checkpoints in
``<run>/ray_train/``. Either way the same run directory given again resumes from its
latest checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from lossearch.checkpointing import latest_in_run, read_state
from lossearch.config import TrainConfig, dump_config
from lossearch.errors import LossearchError
from lossearch.interrupt import interrupted
from lossearch.ray_train import build_trainer, check_ray_address, diverged_error, init_ray
from lossearch.storage import check_local_target


def default_run_dir(cfg: TrainConfig) -> Path:
    """``runs/<name>-<timestamp>``."""
    return Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def train(
    cfg: TrainConfig,
    out_dir: str | Path | None = None,
    address: str | None = None,
    announce: Callable[[str], None] | None = None,
    log_to: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Run one training and write the run directory; returns the last epoch's metrics.

    Writes ``config.yaml`` (resolved) first, then ``metrics.jsonl`` (one object per epoch;
    the last holds ``test/<metric>``), ``checkpoint/`` (the final model, tokenizer and
    optimizer state) and ``test_predictions.seed<k>.jsonl`` (per test question) at the end.
    ``announce`` (``lossearch train`` passes ``typer.echo``) gets ``run: DIR`` once
    ``config.yaml`` is written. A stop signal (SIGINT, SIGTERM) while it trains raises
    :class:`~lossearch.interrupt.Interrupted` naming the command that resumes the run.
    ``log_to`` (trackers of :mod:`lossearch.tracking`) also logs every epoch to them, under
    ``<run>/tracking/``; only for a run in this process.
    """
    out = check_local_target(out_dir if out_dir is not None else default_run_dir(cfg), "--out",
                             kind="dir")
    if out.exists() and any(out.iterdir()) and not (out / "config.yaml").exists():
        raise LossearchError(f"output directory is not empty and not a lossearch run: {out}")
    _check_continues(out, cfg)
    if log_to and not in_process(cfg, address):
        raise LossearchError(
            "--log-to: tracking a multi-worker or cluster (--address) train run is not "
            "supported yet; use lossearch search/confirm, or one worker without --address"
        )
    from lossearch.preflight import check_local_gpu, preflight, warn

    notices = preflight(cfg, test=True)  # bad data, model path, lengths: one line, not later
    check_ray_address(address)
    check_local_gpu(cfg, address)
    warn(notices)
    try:
        out.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, out / "config.yaml")
    except OSError as err:
        raise LossearchError(f"cannot write run directory {out}: {err.strerror}") from None
    if announce:
        announce(f"run: {out}")
    try:
        if in_process(cfg, address):
            open_final = _fit_here(cfg, out, log_to)
        else:
            open_final = _fit_on_ray(cfg, out, address)
    except KeyboardInterrupt:  # SIGINT or SIGTERM under the command's catch_stop_signals
        raise interrupted(
            f"resume from the last finished epoch with: lossearch train --config "
            f"{out / 'config.yaml'} --out {out}"
        ) from None
    with open_final() as ckpt_dir:
        _, history = read_state(ckpt_dir)
        final = out / "checkpoint"
        if final.exists():
            shutil.rmtree(final)
        shutil.copytree(ckpt_dir, final)
    for record in final.glob("test_predictions.seed*.jsonl"):
        shutil.copy2(record, out / record.name)
    (out / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    return history[-1] if history else {}


CONTINUE_MAY_CHANGE = frozenset({"optim.epochs"})
"""What a run continued in its own directory may change: more (or fewer) epochs."""


def _check_continues(out: Path, cfg: TrainConfig) -> None:
    """A run directory that holds a run continues it from its last checkpoint: only with the
    config it was trained with (:data:`CONTINUE_MAY_CHANGE` aside). Another config would
    train its next epochs on top of the old ones and overwrite ``config.yaml``, a run no
    config describes: one line instead, naming what differs."""
    path = out / "config.yaml"
    if not path.is_file():
        return
    from lossearch.config import flatten, read_yaml, validate

    try:
        old = flatten(validate(read_yaml(path)).to_dict())
    except LossearchError as err:
        raise LossearchError(
            f"--out {out} holds a config.yaml that is not a valid config ({err}): name another "
            "--out"
        ) from None
    new = flatten(cfg.to_dict())
    changed = [k for k in sorted(old.keys() | new.keys())
               if old.get(k) != new.get(k) and k not in CONTINUE_MAY_CHANGE]
    if changed:
        shown = ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:3])
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        raise LossearchError(
            f"--out {out} holds a run of another config ({shown}{more}): continue it with "
            f"lossearch train --config {path} --out {out}, or name another --out"
        )


def in_process(cfg: TrainConfig, address: str | None) -> bool:
    """Train in this process (no Ray): one worker, and no cluster named (``--address``,
    ``RAY_ADDRESS``)."""
    return cfg.scaling.num_workers == 1 and not (address or os.environ.get("RAY_ADDRESS"))


def _fit_here(
    cfg: TrainConfig, out: Path, log_to: tuple[str, ...] = ()
) -> Callable[[], AbstractContextManager[Any]]:
    """:func:`lossearch.fit.fit` in this process, checkpoints in ``out/checkpoints``, every
    epoch also logged to the trackers ``log_to``."""
    from lossearch.fit import NonFiniteLoss, fit_in_run
    from lossearch.tracking import tracked

    run = str(out / "checkpoints")
    with tracked(_no_report, log_to, out, name=cfg.name, config=cfg.to_dict()) as log:
        try:
            fit_in_run(cfg, run, log, test=True)
        except NonFiniteLoss as err:
            raise LossearchError(f"training diverged: {err}") from None
    return lambda: latest_in_run(run)


def _no_report(metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
    """Nothing to report beyond the checkpoint (``lossearch train`` has no Tune)."""


def _fit_on_ray(
    cfg: TrainConfig, out: Path, address: str | None
) -> Callable[[], AbstractContextManager[Any]]:
    """A Ray Train run at ``out/ray_train`` on a local Ray or the cluster at ``address``."""
    init_ray(address)
    result = build_trainer(cfg, storage_path=str(out), name="ray_train", test=True).fit()
    if result.error is not None:
        raise result.error
    reason = diverged_error(result)
    if reason:
        raise LossearchError(f"training diverged: {reason}")
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    return result.checkpoint.as_directory
