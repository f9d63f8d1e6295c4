"""Any local data set with a prompt and a target column.

Rows need ``task.prompt_field`` and ``task.target_field`` (default ``prompt`` and
``target``); both are used exactly as given. Scoring compares whole strings (outer
whitespace stripped) unless ``task.answer_pattern`` is set: then the first group of that
regex (the whole match when it has no group), numerically when both sides parse as numbers.
There is no Hub copy: set ``task.data_dir`` (``train``/``test``/``validation`` files) or
``task.train_file``, ``task.validation_file`` (or none: carved out of train) and
``task.test_file``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from lossearch.errors import LossearchError
from lossearch.tasks.base import Example, Task, TaskSpec

if TYPE_CHECKING:
    from lossearch.config import TaskConfig


class Jsonl(Task):
    name = "jsonl"
    kind = "string"
    hub_path = None
    train_splits = ("train",)
    validation_splits = ("validation", "val", "dev")
    test_splits = ("test",)

    def spec(self, cfg: TaskConfig) -> TaskSpec:
        if cfg.answer_pattern is not None:
            try:
                re.compile(cfg.answer_pattern)
            except re.error as exc:
                raise LossearchError(f"task.answer_pattern is not a valid regex: {exc}") from None
        return TaskSpec(name=self.name, kind="string", answer_pattern=cfg.answer_pattern)

    def required_fields(self, cfg: TaskConfig) -> tuple[str, ...]:
        return (cfg.prompt_field, cfg.target_field)

    def to_example(self, row: dict[str, Any], cfg: TaskConfig) -> Example:
        return Example(str(row[cfg.prompt_field]), str(row[cfg.target_field]))
