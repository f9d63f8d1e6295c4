"""``arith``: built-in synthetic GSM-style word problems, generated from a seed.

Each problem is a chain of ``task.arith_steps`` integer operations on a quantity, told in
words, with a GSM8K ``formulas`` target::

    Q: Tom has 7 apples and buys 5 more. How many apples now?
    A: <<7+5=12>>
    #### 12

(``Q:``/``A:`` rather than GSM8K's ``Question:``/``Answer:`` keeps two-step problems inside
the tiny model's default ``max_length`` of 128 characters.)

Generation (all knobs are :class:`~lossearch.config.TaskConfig` fields):
    * ``arith_steps``: operations per problem (1 = one formula).
    * ``arith_max_operand``: every drawn operand is uniform in ``1..arith_max_operand``
      (its digit count sets the difficulty). A division's dividend is ``divisor * quotient``
      with both drawn, so it can reach ``arith_max_operand**2``; later steps act on the
      running value, which multiplication can make larger.
    * ``arith_ops``: the operators to draw from, a subset of ``+-*/``. Subtraction never goes
      below zero and division is always exact; a step whose operator cannot apply to the
      running value (e.g. ``/`` on a prime larger than ``arith_max_operand``) draws again.
    * ``data_seed``: seeds the generator, independent of the training ``seed``. The held-out
      problems come from their own stream (``eval_size`` distinct problems) and every training
      problem whose prompt equals a held-out prompt is skipped, so no held-out problem is in
      the training stream. The same arithmetic can appear in both with other wording.
    * ``arith_train_size``: training problems (``train_size``, when set, caps it further).

The same arguments always give the same problems (Python's ``random.Random`` seeded with a
string, which does not depend on hash randomisation).
"""

from __future__ import annotations

import random
from collections.abc import Collection
from typing import TYPE_CHECKING

from lossearch.errors import LossearchError
from lossearch.tasks.base import Example, Task, TaskData, TaskSpec
from lossearch.tasks.gsm8k import formulas_target

if TYPE_CHECKING:
    from lossearch.config import TaskConfig

_PEOPLE = (
    ("Tom", "he"), ("Ann", "she"), ("Sam", "he"), ("Mia", "she"),
    ("Ben", "he"), ("Eva", "she"), ("Max", "he"), ("Zoe", "she"),
)
_ITEMS = ("apples", "pens", "cards", "books", "eggs", "coins", "shells", "stamps")

# {n}: name, {p}: pronoun, {i}: item, {a}: running value / first operand, {b}: operand
_FIRST = {
    "+": ("{n} has {a} {i} and buys {b} more.", "{n} has {a} {i} and finds {b} more."),
    "-": ("{n} has {a} {i} and gives away {b}.", "{n} has {a} {i} and loses {b}."),
    "*": ("{n} has {a} boxes of {b} {i}.", "{n} buys {a} bags of {b} {i}."),
    "/": ("{n} has {a} {i} and keeps 1 of every {b}.",),
}
_NEXT = {
    "+": ("{P} buys {b} more.", "{P} finds {b} more."),
    "-": ("{P} gives away {b}.", "{P} loses {b}."),
    "*": ("{P} gets {b} times as many.",),
    "/": ("{P} keeps 1 of every {b}.",),
}
_QUESTION = "How many {i} now?"
OPERATORS = "+-*/"


def _apply(op: str, a: int, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return a // b


def _operand(rng: random.Random, op: str, cur: int | None, max_operand: int) -> tuple[int, int]:
    """Draw ``(a, b)`` for ``a op b``; ``cur`` is the running value (None on the first step).

    Raises ``ValueError`` when ``op`` cannot apply to ``cur``.
    """
    if cur is None:
        a, b = rng.randint(1, max_operand), rng.randint(1, max_operand)
        if op == "-" and a < b:
            a, b = b, a
        if op == "/":
            b = rng.randint(2, max_operand)
            a = a * b  # a quotient times a divisor: always exact
        return a, b
    if op == "-":
        if cur < 1:
            raise ValueError(op)
        return cur, rng.randint(1, min(cur, max_operand))
    if op == "/":
        divisors = [d for d in range(2, max_operand + 1) if cur % d == 0]
        if not divisors:
            raise ValueError(op)
        return cur, rng.choice(divisors)
    return cur, rng.randint(1, max_operand)


def make_problem(rng: random.Random, steps: int, max_operand: int, ops: str = OPERATORS) -> Example:
    """One word problem with ``steps`` operations drawn from ``ops`` (see module docstring)."""
    if steps < 1 or max_operand < 2 or not ops or set(ops) - set(OPERATORS):
        raise LossearchError(
            f"arith needs steps >= 1, max_operand >= 2 and operators from '{OPERATORS}'"
        )
    name, pron = rng.choice(_PEOPLE)
    item = rng.choice(_ITEMS)
    sentences: list[str] = []
    formulas: list[str] = []
    cur: int | None = None
    for _ in range(steps):
        while True:
            op = rng.choice(ops)
            try:
                a, b = _operand(rng, op, cur, max_operand)
            except ValueError:
                continue
            break
        value = _apply(op, a, b)
        table = _FIRST if cur is None else _NEXT
        text = rng.choice(table[op])
        sentences.append(text.format(n=name, P=pron.capitalize(), i=item, a=a, b=b))
        formulas.append(f"{a}{op}{b}={value}")
        cur = value
    sentences.append(_QUESTION.format(i=item, p=pron))
    prompt = f"Q: {' '.join(sentences)}\nA: "
    return Example(prompt, formulas_target(formulas, str(cur)))


def generate(
    n: int,
    *,
    steps: int,
    max_operand: int,
    ops: str = OPERATORS,
    seed: int = 0,
    stream: str = "train",
    exclude: Collection[str] = (),
    unique: bool = False,
) -> list[Example]:
    """``n`` problems from the stream named ``stream`` of generator seed ``seed``.

    Args:
        n: how many problems to return.
        steps, max_operand, ops: the difficulty knobs (module docstring).
        seed: the data seed; with ``stream`` it fully determines the output.
        stream: independent streams per name (``"train"``, ``"eval"``).
        exclude: prompts to skip (the held-out set, when generating training data).
        unique: skip prompts already returned (used for the held-out set).

    Raises:
        LossearchError: the knobs leave too few distinct problems to fill ``n``.
    """
    rng = random.Random(f"lossearch-arith/{seed}/{stream}")
    out: list[Example] = []
    seen: set[str] = set()
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 50 * n + 1000:
            raise LossearchError(
                f"arith: could not draw {n} problems (steps={steps}, max_operand={max_operand}, "
                f"ops='{ops}'); lower the size or widen the knobs"
            )
        ex = make_problem(rng, steps, max_operand, ops)
        if ex.prompt in exclude or (unique and ex.prompt in seen):
            continue
        seen.add(ex.prompt)
        out.append(ex)
    return out


def splits(cfg: TaskConfig) -> tuple[list[Example], list[Example]]:
    """The (train, eval) problems for ``cfg``: eval first, then a train stream without them."""
    knobs = dict(steps=cfg.arith_steps, max_operand=cfg.arith_max_operand, ops=cfg.arith_ops)
    evals = generate(cfg.eval_size, seed=cfg.data_seed, stream="eval", unique=True, **knobs)
    size = min(cfg.arith_train_size, cfg.train_size or cfg.arith_train_size)
    held_out = {ex.prompt for ex in evals}
    train = generate(size, seed=cfg.data_seed, stream="train", exclude=held_out, **knobs)
    return train, evals


class Arith(Task):
    name = "arith"
    kind = "math"

    def load(self, cfg: TaskConfig) -> TaskData:
        """Generate the problems; ``data_dir`` / files are not used by this task."""
        train, evals = splits(cfg)
        return TaskData(train=train, eval=evals, spec=TaskSpec(name=self.name, kind=self.kind))
