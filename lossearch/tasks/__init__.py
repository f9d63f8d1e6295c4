"""Tasks: the registry and one module per task.

``load_task(cfg.task) -> TaskData(train, eval, spec)``; ``tokenize`` / ``collate`` turn
examples into training tensors. See ``docs/CONTRACTS.md`` (Tasks).
"""

from __future__ import annotations

from lossearch.tasks.base import Example, Task, TaskData, TaskSpec, read_rows, save_jsonl
from lossearch.tasks.registry import TASKS, get_task, load_task, task_names, task_spec
from lossearch.tasks.tokenization import (
    TruncationStats,
    collate,
    encode_prompt,
    encode_prompts,
    tokenize,
)

__all__ = [
    "TASKS",
    "Example",
    "Task",
    "TaskData",
    "TaskSpec",
    "TruncationStats",
    "collate",
    "encode_prompt",
    "encode_prompts",
    "get_task",
    "load_task",
    "read_rows",
    "save_jsonl",
    "task_names",
    "task_spec",
    "tokenize",
]
