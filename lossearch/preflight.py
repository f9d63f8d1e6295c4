"""Cheap checks of a training config in the calling process, before Ray starts.

Everything a training would otherwise find out only inside a Ray Train worker, tens of
seconds later and as a traceback: the task and its data files, the model path and its
tokenizer, whether any training example fits in ``task.max_length``, and whether there is
at least one optimizer step per epoch. :func:`preflight` raises the same one-line
:class:`~lossearch.errors.LossearchError` the worker would.

``lossearch train`` and ``lossearch confirm`` check their configs with the test split,
``lossearch search`` its base config without it (values a trial
samples, e.g. a searched ``task.max_length``, are checked by the trial itself).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from lossearch.config import IgnoredKeyWarning, ModelConfig, TrainConfig, ignored_task_keys
from lossearch.config import looks_like_path as _looks_like_path
from lossearch.errors import LossearchError
from lossearch.steps import plan_steps
from lossearch.tiny import TINY, build_tiny_tokenizer, refuse_tiny_lora


def _check_model_path(name: str) -> None:
    if not _looks_like_path(name):
        return
    path = Path(name).expanduser()
    if not path.exists():
        raise LossearchError(f"model path does not exist: {name}")
    if not path.is_dir():
        raise LossearchError(f"model path is not a directory: {name}")


def _tokenizer(cfg: ModelConfig) -> Any:
    """The model's tokenizer, without loading its weights (nor, for ``tiny``, torch)."""
    if cfg.name_or_path == TINY:
        refuse_tiny_lora(cfg)
        return build_tiny_tokenizer()
    from transformers import AutoConfig, AutoTokenizer

    name = cfg.name_or_path
    _check_model_path(name)
    is_local = _looks_like_path(name)
    source = str(Path(name).expanduser()) if is_local else name
    try:
        AutoConfig.from_pretrained(source)
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if is_local:
            raise LossearchError(f"cannot load model from {name}: {first}") from None
        raise LossearchError(
            f"cannot load model '{name}': not a local directory, and not loadable from the "
            f"Hugging Face hub (offline, or no such id): {first}"
        ) from None


def preflight(cfg: TrainConfig, *, test: bool = False, search: bool = False) -> list[str]:
    """Raise :class:`LossearchError` for what would make every worker of ``cfg`` fail.

    Checks: the task exists and its train and validation data (and, with ``test``, its test
    data) load and are not empty, and ``task.val_size`` fits in train; the model path
    exists and its tokenizer loads; at least one training example fits in
    ``task.max_length``; one epoch has at least one optimizer step; no data file is given
    to the ``arith`` task; for a ``search``, no ``optim.max_steps`` ends the trainings before
    their last epoch (ASHA and the study count a trial finished at ``optim.epochs``: such
    trials read as pruned; one that ends inside the last epoch still evaluates it). Returns
    what the training will not do as written (:func:`_notices`), for :func:`warn` once the
    caller's other checks have passed.
    """
    from lossearch.losses import normalize_spec
    from lossearch.tasks import load_task, tokenize

    normalize_spec(cfg.loss)  # the checks build_loss makes, without importing torch
    _check_model_path(cfg.model.name_or_path)  # before the slow imports and data loading
    _check_data_files_have_a_task(cfg)
    data = load_task(cfg.task, test=test)
    tokenizer = _tokenizer(cfg.model)
    features, stats = tokenize(data.train, tokenizer, cfg.task.max_length)
    o = cfg.optim
    steps_per_epoch, total_steps, _ = plan_steps(len(features), cfg, cfg.scaling.num_workers)
    full = steps_per_epoch * o.epochs  # without optim.max_steps
    runs = -(-total_steps // steps_per_epoch)  # ceil: the epoch the training ends in
    if search and runs < o.epochs:  # ending inside the last epoch still reports it
        raise LossearchError(
            f"optim.max_steps {o.max_steps} ends each training in epoch {runs} of "
            f"optim.epochs {o.epochs} ({steps_per_epoch} steps an epoch): a search counts a "
            f"trial finished at optim.epochs; set optim.epochs={runs}, or leave out max_steps"
        )
    return _notices(cfg, stats, full, total_steps)


def warn(notices: list[str]) -> None:
    """Each of :func:`preflight`'s notices as an :class:`~lossearch.config.IgnoredKeyWarning`
    (``warning: ...`` on the command line); called once every check has passed, so that bad
    input prints its one error line alone."""
    for notice in notices:
        warnings.warn(notice, IgnoredKeyWarning, stacklevel=2)


def _check_data_files_have_a_task(cfg: TrainConfig) -> None:
    """Data files with the ``arith`` task (``task.name``'s default, which generates its
    problems) would train on arith, not on the files: one line instead."""
    t = cfg.task
    given = [k for k in ("data_dir", "train_file", "validation_file", "test_file")
             if getattr(t, k) is not None]
    if t.name == "arith" and given:
        raise LossearchError(
            f"task.{given[0]} is set, but task arith generates its data and reads no file: set "
            "task.name (jsonl for prompt/target rows, gsm8k, mathqa, ...)"
        )


def _notices(cfg: TrainConfig, stats: Any, full_steps: int, total_steps: int) -> list[str]:
    """What of ``cfg`` the training will not do as written, each one line: keys another task
    reads, training examples cut or dropped at ``task.max_length``, an ``optim.max_steps`` or
    ``optim.warmup_steps`` beyond the steps the epochs make, a ``task.train_size`` beyond
    ``arith_train_size``, ``scaling.gpus_per_worker`` without ``scaling.use_gpu``.
    ``full_steps``: what the epochs make; ``total_steps``: what is trained (capped by
    ``max_steps``), as :func:`lossearch.steps.plan_steps` counts them."""
    out = []
    ignored = ignored_task_keys(cfg.task)
    if ignored:
        out.append(f"task {cfg.task.name} does not read {', '.join(ignored)}: ignored")
    if stats.truncated or stats.dropped:
        out.append(f"training examples cut to task.max_length: {stats.summary()}")
    o = cfg.optim
    if o.max_steps is not None and o.max_steps > full_steps:
        out.append(f"optim.max_steps {o.max_steps} is more than the {o.epochs} epochs make "
                   f"({full_steps} steps): training stops at {full_steps}")
    if o.warmup_steps >= total_steps:
        out.append(f"optim.warmup_steps {o.warmup_steps} covers the whole training ({total_steps} "
                   f"steps): the learning rate only rises, its {o.scheduler} phase never comes")
    t = cfg.task
    if t.name == "arith" and t.train_size is not None and t.train_size > t.arith_train_size:
        out.append(f"task.train_size {t.train_size} is more than task.arith_train_size "
                   f"{t.arith_train_size}, the problems generated: {t.arith_train_size} used")
    default_gpus = type(cfg.scaling).model_fields["gpus_per_worker"].default
    if not cfg.scaling.use_gpu and cfg.scaling.gpus_per_worker != default_gpus:
        out.append(f"scaling.gpus_per_worker {cfg.scaling.gpus_per_worker} without "
                   "scaling.use_gpu: true: no GPU is used")
    return out


def check_local_gpu(cfg: TrainConfig, address: str | None) -> None:
    """With ``scaling.use_gpu`` and no cluster named (``address``, ``RAY_ADDRESS``), the work
    runs on this machine: a CUDA device must be visible to it. Else one line: a local Ray
    would keep the trials pending for a GPU forever, and a training in this process would
    run on the CPU without a word. (torch is imported only here, for a config asking a GPU.)
    """
    import os

    if not cfg.scaling.use_gpu or address or os.environ.get("RAY_ADDRESS"):
        return
    import torch

    if not torch.cuda.is_available():
        raise LossearchError(
            "scaling.use_gpu is true, but no CUDA device is visible on this machine: set "
            "scaling.use_gpu=false, or name a cluster with GPUs (--address)"
        )
