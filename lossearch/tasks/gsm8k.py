"""GSM8K: grade-school math word problems (Cobbe et al., 2021, arXiv:2110.14168).

Native fields: ``question``, ``answer`` (the solution text, with calculator annotations
``<<48/2=24>>`` and a last line ``#### 72``). Hub: ``openai/gsm8k``, config ``main``.

Prompt: ``Question: {question}\\nAnswer: ``.

Target, ``task.target_format``:
    ``formulas`` (default; ours, the paper's idea in a cleaner form): the solution's
        annotations in order, one per line, each as ``<<expr=value>>`` with the expression
        stripped, then ``#### {answer}``; a solution with no annotation is just
        ``#### {answer}``. Thousands commas are dropped from the final answer (``#### 1,080``
        becomes ``#### 1080``). ``<<48/2=24>>\n<<48+24=72>>\n#### 72``.
    ``formulas_paper``: the paper's exact string (its ``parquet_creator.py``): every
        ``<<...>>`` (regex ``<<[^>]+>>``) and every ``#### ...`` line (regex ``#### .+``) of
        the solution, verbatim, joined with one space; the final answer keeps its commas.
        ``<<48/2=24>> <<48+24=72>> #### 72``.
    ``full``: the whole solution text as given.

Both formula forms score the same way (:mod:`lossearch.metrics`): steps are the ``<<...>>``
spans wherever they are, the answer is the rest of the line after the first ``####`` and
``1,080`` equals ``1080``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from lossearch.tasks.base import Example, Task, format_number, parse_number, squash

if TYPE_CHECKING:
    from lossearch.config import TaskConfig

ANNOTATION = re.compile(r"<<([^<>]*)>>")
PAPER_FORMULA = re.compile(r"(<<[^>]+>>)")
PAPER_ANSWER = re.compile(r"(#### .+)")


def final_answer(solution: str) -> str:
    """The text after the last ``####`` (commas dropped when it is a number).

    Raises:
        ValueError: the solution has no ``####`` line.
    """
    if "####" not in solution:
        raise ValueError("solution has no '#### answer' line")
    tail = solution.rsplit("####", 1)[1].strip()
    answer = squash(tail.splitlines()[0]) if tail else ""
    if not answer:
        raise ValueError("solution has an empty '####' answer")
    value = parse_number(answer)
    return format_number(value) if value is not None and "," in answer else answer


def formulas_target(annotations: list[str], answer: str) -> str:
    """``<<a>>\\n<<b>>\\n#### answer`` (just ``#### answer`` without annotations)."""
    lines = [f"<<{a.strip()}>>" for a in annotations]
    lines.append(f"#### {answer}")
    return "\n".join(lines)


def paper_formulas_target(solution: str) -> str:
    """The paper's target string: its ``<<...>>`` and ``#### ...`` matches joined with a space.

    Raises:
        ValueError: the solution has no ``####`` answer (the paper's code would have trained
            on the formulas alone; no GSM8K row lacks one).
    """
    final_answer(solution)  # validates the #### line
    return " ".join(PAPER_FORMULA.findall(solution) + PAPER_ANSWER.findall(solution))


class GSM8K(Task):
    name = "gsm8k"
    kind = "math"
    hub_path = "openai/gsm8k"
    hub_config = "main"
    train_splits = ("train",)
    validation_splits = ()
    test_splits = ("test",)
    fields = ("question", "answer")

    def to_example(self, row: dict[str, Any], cfg: TaskConfig) -> Example:
        question, solution = str(row["question"]), str(row["answer"])
        prompt = f"Question: {question.strip()}\nAnswer: "
        if cfg.target_format == "full":
            final_answer(solution)  # validates the #### line
            return Example(prompt, solution.strip())
        if cfg.target_format == "formulas_paper":
            return Example(prompt, paper_formulas_target(solution))
        annotations = ANNOTATION.findall(solution)
        return Example(prompt, formulas_target(annotations, final_answer(solution)))
