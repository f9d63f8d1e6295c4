"""OpenBookQA: elementary science questions with an open book of facts (Mihaylov et al.,
2018, arXiv:1809.02789).

Native fields (Hub ``allenai/openbookqa``, config ``additional``, which carries ``fact1``):
``id``, ``question_stem``, ``choices`` (``{"text": [...], "label": ["A", "B", "C", "D"]}``),
``answerKey``, ``fact1``, ``humanScore``, ``clarity``, ``turkIdAnonymized``.

Prompt: ``Context: {fact1}\\nQuestion: {question_stem}\\nChoices: A) ... B) ... C) ... D)
...\\nAnswer: ``. Target: the answer letter (``B``). Choices are shown in the order of
``choices.label``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lossearch.tasks.base import Example, Task, choices_line, squash

if TYPE_CHECKING:
    from lossearch.config import TaskConfig


class OpenBookQA(Task):
    name = "openbookqa"
    kind = "choice"
    hub_path = "allenai/openbookqa"
    hub_config = "additional"
    train_splits = ("train",)
    validation_splits = ("validation",)
    test_splits = ("test",)
    fields = ("question_stem", "choices", "answerKey", "fact1")

    def to_example(self, row: dict[str, Any], cfg: TaskConfig) -> Example:
        choices = row["choices"]
        texts, labels = list(choices["text"]), [str(x).strip() for x in choices["label"]]
        if len(texts) != len(labels) or not texts:
            raise ValueError("choices.text and choices.label differ in length")
        order = sorted(range(len(labels)), key=lambda i: labels[i])
        if [labels[i] for i in order] != [chr(ord("A") + k) for k in range(len(labels))]:
            raise ValueError(f"choice labels {labels} are not A, B, C, ...")
        key = str(row["answerKey"]).strip()
        if key not in labels:
            raise ValueError(f"answerKey {key!r} is not a choice label")
        prompt = (
            f"Context: {squash(row['fact1'])}\nQuestion: {squash(row['question_stem'])}\n"
            f"Choices: {choices_line([texts[i] for i in order])}\nAnswer: "
        )
        return Example(prompt, key)
