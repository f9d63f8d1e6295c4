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
      (its digit count sets the difficulty); a divisor is in ``2..arith_max_operand``. A
      first-step division's dividend is ``divisor * quotient`` with both drawn, so it can
      reach ``arith_max_operand**2``; later steps act on the running value, which
      multiplication can make larger.
    * ``arith_ops``: the operators to draw from, a subset of ``+-*/`` (repeat one to draw it
      more often: ``++-``). Subtraction never goes below zero and division is always exact:
      each step draws uniformly among the operators that can act on the running value (``/``
      needs a divisor in range, ``-`` a value >= 1).
    * ``data_seed``: seeds the generator, independent of the training ``seed``. Validation
      (``val_size`` distinct problems) and test (``test_size``, default 200) come from
      streams of their own, test without any validation prompt, and every training problem
      whose prompt equals a held-out prompt is skipped, so no held-out problem is in the
      training stream. The same arithmetic can appear in two splits with other wording.
    * ``arith_train_size``: training problems (``train_size``, when set, caps it further).

Calibration (the defaults: 1 step, operands ``1..12``, ``+-*``, 6400 problems, i.e. 600
optimizer steps at batch 32 for 3 epochs). The ``tiny`` model trained with plain CE on the
target tokens (AdamW lr 3e-3, 30 warmup steps then cosine, clipping 1.0, one CPU thread,
about 75-90 s on an idle core) reaches greedy exact match 0.615, 0.645 and 0.69 on the 200
held-out problems (three model/data seed pairs). Difficulty is a cliff set by the number of
optimizer steps: the same default after only 200 steps gives 0.125; with ``+-*/`` at 600
steps, operands ``1..9`` give 0.88, ``1..10`` 0.72, ``1..11`` 0.38-0.63 and ``1..12``
0.24-0.35 (division is less stable across seeds, hence opt-in). Two-step targets need
``eval.max_new_tokens >= 33``.

The same arguments always give the same problems (Python's ``random.Random`` seeded with a
string, which does not depend on hash randomisation). :func:`splits` gives the (train, validation,
test) lists for a config; :func:`lossearch.tasks.save_jsonl` freezes them as files for the ``jsonl``
task.
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
DEFAULT_OPS = "+-*"  # the TaskConfig default; division is opt-in (see the calibration note)


def _apply(op: str, a: int, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return a // b


def _divisors(cur: int, max_operand: int) -> list[int]:
    return [d for d in range(2, max_operand + 1) if cur % d == 0]


def _applicable(op: str, cur: int, max_operand: int) -> bool:
    """Whether ``op`` can act on the running value (non-negative, exact results)."""
    if op == "-":
        return cur >= 1
    if op == "/":
        return bool(_divisors(cur, max_operand))
    return True


def _operands(rng: random.Random, op: str, cur: int | None, max_operand: int) -> tuple[int, int]:
    """Draw ``(a, b)`` for ``a op b``; ``cur`` is the running value (None on the first step)."""
    if cur is None:
        a, b = rng.randint(1, max_operand), rng.randint(1, max_operand)
        if op == "-" and a < b:
            a, b = b, a
        if op == "/":
            b = rng.randint(2, max_operand)
            a = a * b  # a quotient times a divisor: always exact
        return a, b
    if op == "-":
        return cur, rng.randint(1, min(cur, max_operand))
    if op == "/":
        return cur, rng.choice(_divisors(cur, max_operand))
    return cur, rng.randint(1, max_operand)


def make_problem(
    rng: random.Random, steps: int, max_operand: int, ops: str = DEFAULT_OPS
) -> Example:
    """One word problem with ``steps`` operations drawn from ``ops`` (see module docstring).

    Each step's operator is uniform over those of ``ops`` that can act on the running value;
    when none can (``ops="-"`` after reaching 0), the problem is drawn again from the start.
    """
    if steps < 1 or max_operand < 2 or not ops or set(ops) - set(OPERATORS):
        raise LossearchError(
            f"arith needs steps >= 1, max_operand >= 2 and operators from '{OPERATORS}'"
        )
    for _ in range(1000):
        name, pron = rng.choice(_PEOPLE)
        item = rng.choice(_ITEMS)
        sentences: list[str] = []
        formulas: list[str] = []
        cur: int | None = None
        for _ in range(steps):
            usable = [op for op in ops if cur is None or _applicable(op, cur, max_operand)]
            if not usable:
                break
            op = rng.choice(usable)
            a, b = _operands(rng, op, cur, max_operand)
            value = _apply(op, a, b)
            text = rng.choice((_FIRST if cur is None else _NEXT)[op])
            sentences.append(text.format(n=name, P=pron.capitalize(), i=item, a=a, b=b))
            formulas.append(f"{a}{op}{b}={value}")
            cur = value
        else:
            sentences.append(_QUESTION.format(i=item))
            prompt = f"Q: {' '.join(sentences)}\nA: "
            return Example(prompt, formulas_target(formulas, str(cur)))
    raise LossearchError(f"arith: operators '{ops}' cannot make {steps}-step problems")


def generate(
    n: int,
    *,
    steps: int,
    max_operand: int,
    ops: str = DEFAULT_OPS,
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


ARITH_TEST_SIZE = 200  # test problems when ``task.test_size`` is None (the stream is endless)


def splits(cfg: TaskConfig) -> tuple[list[Example], list[Example], list[Example]]:
    """The (train, validation, test) problems for ``cfg``.

    Validation comes first from the ``eval`` stream (``val_size`` distinct problems), test
    from the ``test`` stream (``test_size``, default :data:`ARITH_TEST_SIZE`, distinct and
    none equal to a validation prompt), then train from its own stream without either.
    """
    knobs = dict(steps=cfg.arith_steps, max_operand=cfg.arith_max_operand, ops=cfg.arith_ops)
    validation = generate(cfg.val_size, seed=cfg.data_seed, stream="eval", unique=True, **knobs)
    val_prompts = {ex.prompt for ex in validation}
    test = generate(
        cfg.test_size or ARITH_TEST_SIZE, seed=cfg.data_seed, stream="test", unique=True,
        exclude=val_prompts, **knobs,
    )
    size = min(cfg.arith_train_size, cfg.train_size or cfg.arith_train_size)
    held_out = val_prompts | {ex.prompt for ex in test}
    train = generate(size, seed=cfg.data_seed, stream="train", exclude=held_out, **knobs)
    return train, validation, test


class Arith(Task):
    name = "arith"
    kind = "math"

    def load(self, cfg: TaskConfig, *, test: bool = True) -> TaskData:
        """Generate the problems; ``data_dir`` / files are not used by this task."""
        train, validation, tests = splits(cfg)
        return TaskData(
            train=train,
            validation=validation,
            test=tests if test else [],
            spec=TaskSpec(name=self.name, kind=self.kind),
            validation_source=f"arith 'eval' stream (data_seed {cfg.data_seed})",
        )
