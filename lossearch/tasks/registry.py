"""The task registry: name -> :class:`~lossearch.tasks.base.Task`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lossearch.errors import LossearchError
from lossearch.tasks.arith import Arith
from lossearch.tasks.base import Task, TaskData, TaskSpec
from lossearch.tasks.gsm8k import GSM8K
from lossearch.tasks.hellaswag import HellaSwag
from lossearch.tasks.jsonl import Jsonl
from lossearch.tasks.mathqa import MathQA
from lossearch.tasks.openbookqa import OpenBookQA

if TYPE_CHECKING:
    from lossearch.config import TaskConfig

TASKS: dict[str, Task] = {
    t.name: t for t in (Arith(), GSM8K(), MathQA(), OpenBookQA(), HellaSwag(), Jsonl())
}


def task_names() -> list[str]:
    """Registered task names, sorted."""
    return sorted(TASKS)


def get_task(name: str) -> Task:
    """The registered task ``name``.

    Raises:
        LossearchError: unknown name (the message lists the known ones).
    """
    try:
        return TASKS[name]
    except KeyError:
        raise LossearchError(
            f"unknown task '{name}' (known: {', '.join(task_names())})"
        ) from None


def task_spec(name: str, answer_pattern: str | None = None) -> TaskSpec:
    """The scoring spec of task ``name`` without loading data (``answer_pattern``: jsonl)."""
    from lossearch.config import TaskConfig

    return get_task(name).spec(TaskConfig(name=name, answer_pattern=answer_pattern))


def load_task(cfg: TaskConfig) -> TaskData:
    """Load task ``cfg.name``: train and eval examples plus the scoring spec.

    Raises:
        LossearchError: unknown task, missing/unreadable file, rows without the task's
            fields, an empty split, or no network for a Hub data set.
    """
    data = get_task(cfg.name).load(cfg)
    if not data.train:
        raise LossearchError(f"task '{cfg.name}': the training set is empty")
    if not data.eval:
        raise LossearchError(f"task '{cfg.name}': the eval set is empty")
    return data
