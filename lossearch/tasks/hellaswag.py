"""HellaSwag: pick the most plausible continuation (Zellers et al., 2019, arXiv:1905.07830).

Native fields (Hub ``Rowan/hellaswag``): ``ind``, ``activity_label``, ``ctx_a``, ``ctx_b``,
``ctx``, ``endings`` (four strings), ``source_id``, ``split``, ``split_type``, ``label``
(``"3"``; empty on the unlabeled test split, so the held-out side is ``validation``).

Prompt: ``Context: {activity_label}: {ctx}\\nEndings: A) ... B) ... C) ... D) ...\\nAnswer: ``.
Target: the letter of the labelled ending. ``ctx`` falls back to ``ctx_a + " " + ctx_b``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lossearch.tasks.base import Example, Task, choices_line, letter, squash

if TYPE_CHECKING:
    from lossearch.config import TaskConfig


class HellaSwag(Task):
    name = "hellaswag"
    kind = "choice"
    hub_path = "Rowan/hellaswag"
    hub_config = None
    train_splits = ("train",)
    validation_splits = ()
    test_splits = ("validation",)
    fields = ("activity_label", "endings", "label")

    def to_example(self, row: dict[str, Any], cfg: TaskConfig) -> Example:
        ctx = row.get("ctx") or f"{row.get('ctx_a') or ''} {row.get('ctx_b') or ''}"
        if not squash(ctx):
            raise ValueError("row has no ctx (nor ctx_a/ctx_b)")
        endings = list(row["endings"])
        if len(endings) < 2:
            raise ValueError("fewer than two endings")
        label = str(row["label"]).strip()
        if not label.isdigit() or int(label) >= len(endings):
            raise ValueError(f"label {label!r} is not an ending index")
        prompt = (
            f"Context: {squash(row['activity_label'])}: {squash(ctx)}\n"
            f"Endings: {choices_line(endings)}\nAnswer: "
        )
        return Example(prompt, letter(int(label)))
