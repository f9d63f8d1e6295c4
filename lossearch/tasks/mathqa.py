"""MathQA: GRE/GMAT-style word problems with operation programs (Amini et al., 2019,
arXiv:1905.13319).

Native fields: ``Problem``, ``Rationale``, ``options`` (``"a ) 38 , b ) 27.675 , ..."``),
``correct`` (``"a"``), ``annotated_formula``, ``linear_formula``
(``"divide(n0,n1)|multiply(#0,const_100)|"``), ``category``. Hub: ``allenai/math_qa``.

Prompt: ``Question: {Problem}\\nOptions: {options}\\nAnswer: ``.

Target: the ``linear_formula`` steps, one per line, as ``<<expr=value>>``, then
``#### {answer}``. Each step is evaluated: ``nK`` is the K-th number written in the problem
(thousands commas joined: ``1,200`` is one number), ``#K`` the value of step K, ``const_100``
is 100, ``const_0_25`` 0.25, ``const_pi`` pi. ``add``/``subtract``/``multiply``/``divide``/
``power`` render infix (``38/4``, ``a^b``), the other operations as calls
(``rectangle_area(20,5)``). Values print as integers or with at most 4 decimals. When a step
cannot be evaluated (an unknown operation or constant, a missing number, division by zero),
every step of that example is rendered symbolically instead: ``<<n0/n1=#0>>``.

The answer is the value written in the correct option (``rs . 400`` -> ``400``, ``1 / 2`` ->
``0.5``); when the option holds no single number (``2 : 3``), the program's final value; when
that is missing too, the option text. ``task.target_format`` does not apply (always steps).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lossearch.tasks.base import Example, Task, format_number, squash

if TYPE_CHECKING:
    from lossearch.config import TaskConfig

_NUMBER = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+")
_STEP = re.compile(r"([a-z_]+)\(([^()]*)\)")
_OPTION = re.compile(r"([a-e])\s*\)\s*(.*?)(?=\s*,\s*[a-e]\s*\)|\s*$)", re.S)

_INFIX: dict[str, str] = {
    "add": "+", "subtract": "-", "multiply": "*", "divide": "/", "power": "^",
}

_PI = math.pi
_OPS: dict[str, tuple[int, Callable[..., float]]] = {
    "add": (2, lambda a, b: a + b),
    "subtract": (2, lambda a, b: a - b),
    "multiply": (2, lambda a, b: a * b),
    "divide": (2, lambda a, b: a / b),
    "power": (2, lambda a, b: a**b),
    "negate": (1, lambda a: -a),
    "inverse": (1, lambda a: 1 / a),
    "sqrt": (1, math.sqrt),
    "floor": (1, math.floor),
    "factorial": (1, lambda a: float(math.factorial(int(a)))),
    "choose": (2, lambda n, k: float(math.comb(int(n), int(k)))),
    "permutation": (2, lambda n, k: float(math.perm(int(n), int(k)))),
    "gcd": (2, lambda a, b: float(math.gcd(int(a), int(b)))),
    "lcm": (2, lambda a, b: float(math.lcm(int(a), int(b)))),
    "max": (2, max),
    "min": (2, min),
    "reminder": (2, lambda a, b: a % b),
    "speed": (2, lambda d, t: d / t),
    "stream_speed": (2, lambda a, b: (a + b) / 2),
    "square_area": (1, lambda a: a * a),
    "square_perimeter": (1, lambda a: 4 * a),
    "square_edge_by_area": (1, math.sqrt),
    "rectangle_area": (2, lambda a, b: a * b),
    "rectangle_perimeter": (2, lambda a, b: 2 * (a + b)),
    "rhombus_area": (2, lambda a, b: a * b / 2),
    "triangle_area": (2, lambda a, b: a * b / 2),
    "triangle_perimeter": (3, lambda a, b, c: a + b + c),
    "circle_area": (1, lambda r: _PI * r * r),
    "circumface": (1, lambda r: 2 * _PI * r),
    "volume_cube": (1, lambda a: a**3),
    "surface_cube": (1, lambda a: 6 * a * a),
    "cube_edge_by_volume": (1, lambda v: v ** (1 / 3)),
    "volume_rectangular_prism": (3, lambda a, b, c: a * b * c),
    "surface_rectangular_prism": (3, lambda a, b, c: 2 * (a * b + b * c + a * c)),
    "volume_sphere": (1, lambda r: 4 / 3 * _PI * r**3),
    "surface_sphere": (1, lambda r: 4 * _PI * r * r),
    "volume_cylinder": (2, lambda r, h: _PI * r * r * h),
}


def problem_numbers(problem: str) -> list[float]:
    """The numbers written in a problem, in order (``n0``, ``n1``, ...)."""
    return [float(m.replace(",", "")) for m in _NUMBER.findall(problem)]


def parse_program(linear_formula: str) -> list[tuple[str, list[str]]]:
    """``"divide(n0,n1)|multiply(#0,const_100)|"`` -> ``[("divide", ["n0","n1"]), ...]``.

    Raises:
        ValueError: no step could be read.
    """
    steps = [
        (op, [a.strip() for a in args.split(",") if a.strip()])
        for op, args in _STEP.findall(linear_formula.replace(" ", ""))
    ]
    if not steps:
        raise ValueError(f"no steps in linear_formula {linear_formula!r}")
    return steps


def _constant(name: str) -> float:
    if name == "const_pi":
        return _PI
    if name == "const_deg_to_rad":
        return _PI / 180
    m = re.fullmatch(r"const_(\d+)(?:_(\d+))?", name)
    if m is None:
        raise KeyError(name)
    return float(f"{m.group(1)}.{m.group(2)}" if m.group(2) else m.group(1))


def _render(op: str, args: list[str], value: str) -> str:
    if op in _INFIX and len(args) == 2:
        expr = _INFIX[op].join(args)
    else:
        expr = f"{op}({','.join(args)})"
    return f"<<{expr}={value}>>"


def evaluate_program(
    steps: list[tuple[str, list[str]]], numbers: list[float]
) -> tuple[list[str], float | None]:
    """Render the steps as ``<<expr=value>>`` and return them with the final value.

    Falls back to symbolic steps (``<<n0/n1=#0>>``) and a None value when any step cannot be
    evaluated.
    """
    values: list[float] = []
    rendered: list[str] = []
    try:
        for op, args in steps:
            arity, fn = _OPS[op]
            if len(args) != arity:
                raise ValueError(op)
            nums = []
            for a in args:
                if a.startswith("n"):
                    nums.append(numbers[int(a[1:])])
                elif a.startswith("#"):
                    nums.append(values[int(a[1:])])
                else:
                    nums.append(_constant(a))
            value = float(fn(*nums))
            if not math.isfinite(value):
                raise ValueError(op)
            values.append(value)
            rendered.append(_render(op, [format_number(x) for x in nums], format_number(value)))
    except (KeyError, ValueError, IndexError, ZeroDivisionError, OverflowError, TypeError):
        symbolic = [_render(op, args, f"#{i}") for i, (op, args) in enumerate(steps)]
        return symbolic, None
    return rendered, values[-1]


def parse_options(options: Any) -> dict[str, str]:
    """``"a ) 38 , b ) 27.675"`` (or a list of ``"a ) 38"``) -> ``{"a": "38", "b": "27.675"}``."""
    text = " , ".join(map(str, options)) if isinstance(options, (list, tuple)) else str(options)
    return {k: squash(v) for k, v in _OPTION.findall(text.strip().strip("[]'\""))}


def option_value(text: str) -> float | None:
    """The number an option states: one number, or a fraction ``a / b`` / ``w a / b``."""
    m = re.fullmatch(r"(?:(\d+)\s+)?(\d+)\s*/\s*(\d+)", text.strip())
    if m is not None and float(m.group(3)) != 0:
        whole = float(m.group(1) or 0)
        return whole + float(m.group(2)) / float(m.group(3))
    nums = _NUMBER.findall(text)
    if len(nums) != 1:
        return None
    value = float(nums[0].replace(",", ""))
    return -value if text.strip().startswith("-") else value


def options_text(options: Any) -> str:
    """The options as one line, as the data set writes them."""
    if isinstance(options, (list, tuple)):
        return " , ".join(squash(o) for o in options)
    return squash(options)


class MathQA(Task):
    name = "mathqa"
    kind = "math"
    hub_path = "allenai/math_qa"
    hub_config = None
    train_splits = ("train",)
    validation_splits = ("validation",)
    test_splits = ("test",)
    fields = ("Problem", "options", "correct", "linear_formula")

    def to_example(self, row: dict[str, Any], cfg: TaskConfig) -> Example:
        problem = squash(row["Problem"])
        prompt = f"Question: {problem}\nOptions: {options_text(row['options'])}\nAnswer: "
        steps, final = evaluate_program(
            parse_program(str(row["linear_formula"])), problem_numbers(problem)
        )
        options = parse_options(row["options"])
        correct = str(row["correct"]).strip().lower()
        if correct not in options:
            raise ValueError(f"correct option {correct!r} is not among the options")
        stated = option_value(options[correct])
        if stated is not None:
            answer = format_number(stated)
        elif final is not None:
            answer = format_number(final)
        else:
            answer = options[correct]
        return Example(prompt, "\n".join([*steps, f"#### {answer}"]))
