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


def preflight(cfg: TrainConfig, *, test: bool = False) -> None:
    """Raise :class:`LossearchError` for what would make every worker of ``cfg`` fail.

    Checks: the task exists and its train and validation data (and, with ``test``, its test
    data) load and are not empty, and ``task.val_size`` fits in train; the model path
    exists and its tokenizer loads; at least one training example fits in
    ``task.max_length``; one epoch has at least one optimizer step. When all pass, keys set
    for another task than ``cfg``'s are named in one :class:`~lossearch.config.
    IgnoredKeyWarning` (``warning: ...`` on the command line).
    """
    from lossearch.losses import normalize_spec
    from lossearch.tasks import load_task, tokenize

    normalize_spec(cfg.loss)  # the checks build_loss makes, without importing torch
    _check_model_path(cfg.model.name_or_path)  # before the slow imports and data loading
    data = load_task(cfg.task, test=test)
    tokenizer = _tokenizer(cfg.model)
    features, _ = tokenize(data.train, tokenizer, cfg.task.max_length)
    o, world = cfg.optim, cfg.scaling.num_workers
    if len(features) // (o.batch_size * world) // o.grad_accum < 1:
        raise LossearchError(
            f"{len(features)} training examples are fewer than one optimizer step "
            f"({o.batch_size} x {world} workers x {o.grad_accum} accumulation)"
        )
    ignored = ignored_task_keys(cfg.task)
    if ignored:
        warnings.warn(
            f"task {cfg.task.name} does not read {', '.join(ignored)}: ignored",
            IgnoredKeyWarning,
            stacklevel=2,
        )


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
