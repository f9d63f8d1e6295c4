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
    from lossearch.config import TaskConfig, validate_as

    task = get_task(name)
    if answer_pattern is not None and name != "jsonl":
        raise LossearchError(f"an answer pattern applies to task jsonl only, not {name}")
    return task.spec(validate_as(TaskConfig, {"name": name, "answer_pattern": answer_pattern}))


def load_task(cfg: TaskConfig, *, test: bool = True) -> TaskData:
    """Load task ``cfg.name``: train, validation and (when ``test``) test examples plus the
    scoring spec. A search loads with ``test=False``: it never reads the test split.

    Raises:
        LossearchError: unknown task, missing/unreadable file, rows without the task's
            fields, an empty split, a ``val_size`` not smaller than train, or no network
            for a Hub data set.
    """
    data = get_task(cfg.name).load(cfg, test=test)
    for split in ("train", "validation") + (("test",) if test else ()):
        if not getattr(data, split):
            raise LossearchError(f"task '{cfg.name}': the {split} set is empty")
    return data
