"""Evaluation: batched greedy generation, exact match, and reasoning metrics for math tasks.

:func:`generate` decodes greedily (left padding, KV cache) and :func:`score` compares the
outputs with the references the task formatted. Everything here is a pure function of its
inputs; nothing prints.

Exact match (``exact_match``, 1.0 or 0.0 per example), by :attr:`TaskSpec.kind`:
    ``math``: the text after the first ``####`` of the prediction (up to the end of that line)
        against the reference's, compared numerically with ``math.isclose(rel_tol=1e-6,
        abs_tol=1e-6)`` when both parse as numbers (thousands commas, ``$``, a trailing ``.``
        or ``.0`` tolerated; a number followed by words, ``12 apples``, is read as 12);
        otherwise as whitespace-collapsed, lower-cased strings. No ``####`` in the
        prediction scores 0.
    ``choice``: the leading answer letter (``B``, ``B)``, ``(b)``, ``B. text``), case-
        insensitive. A prediction that does not start with a letter scores 0.
    ``string``: the outer-whitespace-stripped strings; with ``answer_pattern``, the regex's
        first group (whole match when it has no group) of each side, numerically when both
        parse as numbers. A prediction without a match scores 0.
A reference without an answer (no ``####``, no letter, no pattern match) raises
:class:`~lossearch.errors.LossearchError`.

Reasoning metrics (math tasks only; per example, then the mean over examples). A *step* is
the text inside ``<<...>>``. Steps are normalised before comparing: whitespace removed,
``×``/``÷``/``**`` written ``*``/``/``/``^``, ``$`` and thousands commas dropped (not inside
a call such as ``max(1,200)``, where the comma separates arguments), numbers in
canonical form (``12.0`` -> ``12``, ``0.50`` -> ``0.5``, ``007`` -> ``7``) and the two
operands of a lone ``+`` or ``*`` sorted (``5+7=12`` equals ``7+5=12``). ``P`` is the *set* of
the prediction's normalised steps, ``R`` the reference's.
    ``formula_precision`` = |P & R| / |P|
    ``formula_recall``    = |P & R| / |R|
    ``formula_iou``       = |P & R| / |P | R|
    ``formula_dice``      = 2 |P & R| / (|P| + |R|)
        Each of these four is 1.0 when both sets are empty and 0.0 when only its denominator
        set is empty (a prediction with no steps against a reference with steps scores 0 on
        all four, as does one with steps against a reference without).
    ``missing_steps``  = |R - P| (count).
    ``extra_steps``    = |P - R| (count).
    ``repetitions``    = prediction steps that repeat an earlier prediction step (count over
        the list: ``len(list) - len(set)``).
    ``wrong_operators`` = steps of ``P - R`` whose expression (left of ``=``) has the same
        operands as some reference step's expression (as a multiset) and as many operators,
        but another multiset of operators (``12+5`` for ``12-5``). Values are ignored.
    ``inverted_operands`` = steps of ``P - R`` of the form ``a op b`` (one operator) where a
        reference step is ``b op a`` with the same operator and ``a != b``; with ``+`` and
        ``*`` the swap never changes the value and normalisation already equates them, so
        only ``-``, ``/``, ``^`` and ``%`` count. Values are ignored.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lossearch.errors import LossearchError
from lossearch.tasks.base import TaskSpec, parse_number

STEP = re.compile(r"<<([^<>]*)>>")
_ANSWER_LINE = re.compile(r"####[^\n]*\d[^\n]*\n")
_LETTER = re.compile(r"^\s*\(?([A-Za-z])(?:[).:,]|\s|$)")

MATH_METRICS: tuple[str, ...] = (
    "formula_precision",
    "formula_recall",
    "formula_iou",
    "formula_dice",
    "missing_steps",
    "extra_steps",
    "repetitions",
    "wrong_operators",
    "inverted_operands",
)
"""The reasoning metrics :func:`score` adds for ``math`` tasks, in report order."""


def reported_metrics(kind: str) -> tuple[str, ...]:
    """What each epoch of a run on a task of ``kind`` reports, beside each loss component's
    ``loss.<name>``: the training ``loss``, ``tokens_per_s`` and the validation scores
    (``exact_match``, and for ``math`` tasks :data:`MATH_METRICS`). A search optimises one of
    these (or a ``loss.<name>`` of its loss)."""
    return ("exact_match", *(MATH_METRICS if kind == "math" else ()), "loss", "tokens_per_s")


# --- answers -------------------------------------------------------------------------------


def cut_after_answer(text: str) -> str:
    """Cut ``text`` at the end of its first complete ``#### number`` line (unchanged if none).

    A line counts as complete once a newline follows it, so ``"<<1+2=3>>\\n#### 3\\nnoise"``
    becomes ``"<<1+2=3>>\\n#### 3"``.
    """
    m = _ANSWER_LINE.search(text)
    return text[: m.end() - 1] if m else text


def extract_answer(text: str) -> str | None:
    """The stripped text after the first ``####``, to the end of that line; None without one."""
    if "####" not in text:
        return None
    return text.split("####", 1)[1].split("\n", 1)[0].strip()


def answer_number(answer: str) -> float | None:
    """A ``####`` answer as a number: the whole text, or its first word if nothing after it
    has a digit (``12 apples`` -> 12, ``2 : 3`` -> None)."""
    value = parse_number(answer)
    if value is not None:
        return value
    head, _, rest = answer.strip().partition(" ")
    if rest and not any(c.isdigit() for c in rest):
        return parse_number(head)
    return None


def _same(pred: str, ref: str) -> bool:
    a, b = answer_number(pred), answer_number(ref)
    if a is not None and b is not None:
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)
    return " ".join(pred.lower().split()) == " ".join(ref.lower().split())


def choice_letter(text: str) -> str | None:
    """The leading answer letter, upper-cased (``" b) blue"`` -> ``"B"``); None without one."""
    m = _LETTER.match(text)
    return m.group(1).upper() if m else None


def _pattern_value(pattern: re.Pattern[str], text: str) -> str | None:
    m = pattern.search(text)
    if m is None:
        return None
    return (m.group(1) if pattern.groups else m.group(0)) or ""


def exact_match(spec: TaskSpec, prediction: str, reference: str) -> float:
    """1.0 when ``prediction`` answers like ``reference`` under ``spec`` (module docstring).

    Raises:
        LossearchError: the reference holds no answer.
    """
    if spec.kind == "math":
        ref = extract_answer(reference)
        if ref is None:
            raise LossearchError(f"reference has no '#### answer': {reference[:60]!r}")
        pred = extract_answer(prediction)
        return float(pred is not None and _same(pred, ref))
    if spec.kind == "choice":
        ref_letter = choice_letter(reference)
        if ref_letter is None:
            raise LossearchError(f"reference has no answer letter: {reference[:60]!r}")
        return float(choice_letter(prediction) == ref_letter)
    if spec.answer_pattern is None:
        return float(prediction.strip() == reference.strip())
    pattern = re.compile(spec.answer_pattern)
    ref_value = _pattern_value(pattern, reference)
    if ref_value is None:
        raise LossearchError(
            f"reference does not match answer_pattern {spec.answer_pattern!r}: {reference[:60]!r}"
        )
    pred_value = _pattern_value(pattern, prediction)
    if pred_value is None:
        return 0.0
    a, b = parse_number(pred_value), parse_number(ref_value)
    if a is not None and b is not None:
        return float(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6))
    return float(pred_value.strip() == ref_value.strip())


# --- steps ---------------------------------------------------------------------------------

_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_CALL = re.compile(r"[A-Za-z_]\w*\(")
_NUM = re.compile(r"\d*\.\d+|\d+")
_ATOM = r"-?(?:\d*\.\d+|\d+|[A-Za-z_#][\w#]*)"
_BINARY = re.compile(rf"^({_ATOM})([-+*/^%])({_ATOM})$")
_TOKEN = re.compile(r"\d*\.\d+|\d+|[A-Za-z_#][\w#]*|[-+*/^%()]")


def _canon_number(m: re.Match[str]) -> str:
    text = m.group(0)
    if "." in text:
        text = text.rstrip("0").rstrip(".") or "0"
        whole, dot, frac = text.partition(".")
        return (whole.lstrip("0") or "0") + dot + frac
    return text.lstrip("0") or "0"


def _sort_key(atom: str) -> tuple[int, float, str]:
    value = parse_number(atom)
    return (0, value, "") if value is not None else (1, 0.0, atom)


def normalize_step(step: str) -> str:
    """Canonical text of one ``expr=value`` step (see the module docstring)."""
    s = step.replace("×", "*").replace("÷", "/").replace("**", "^").replace("$", "")
    s = re.sub(r"\s+", "", s)
    if not _CALL.search(s):  # in calls (max(1,200)) a comma separates arguments
        s = _THOUSANDS.sub("", s)
    s = _NUM.sub(_canon_number, s)
    expr, eq, value = s.rpartition("=")
    if not eq:
        expr, value = s, ""
    m = _BINARY.match(expr)
    if m and m.group(2) in "+*":
        a, b = sorted((m.group(1), m.group(3)), key=_sort_key)
        expr = f"{a}{m.group(2)}{b}"
    return f"{expr}={value}" if eq else expr


def steps(text: str) -> list[str]:
    """The normalised ``<<...>>`` steps of ``text``, in order (repeats kept)."""
    return [normalize_step(s) for s in STEP.findall(text)]


def _expression(step: str) -> str:
    return step.rpartition("=")[0] if "=" in step else step


def _operands_operators(expr: str) -> tuple[list[str], list[str]]:
    operands: list[str] = []
    operators: list[str] = []
    negative = False
    prev = None  # "atom", "op", "(" or ")"
    for tok in _TOKEN.findall(expr):
        if tok == "-" and prev in (None, "op", "("):
            negative = not negative
            continue
        if tok in "+-*/^%":
            operators.append(tok)
            prev = "op"
        elif tok in "()":
            prev = tok
        else:
            operands.append(("-" if negative else "") + tok)
            negative = False
            prev = "atom"
    return operands, operators


def _ratio(num: int, den: int, other_empty: bool) -> float:
    if den == 0:
        return 1.0 if other_empty else 0.0
    return num / den


def reasoning_metrics(prediction: str, reference: str) -> dict[str, float]:
    """The reasoning metrics of one example (definitions in the module docstring)."""
    pred_list, ref_list = steps(prediction), steps(reference)
    p, r = set(pred_list), set(ref_list)
    both_empty = not p and not r
    inter = len(p & r)
    out = {
        "formula_precision": _ratio(inter, len(p), both_empty),
        "formula_recall": _ratio(inter, len(r), both_empty),
        "formula_iou": _ratio(inter, len(p | r), both_empty),
        "formula_dice": _ratio(2 * inter, len(p) + len(r), both_empty),
        "missing_steps": float(len(r - p)),
        "extra_steps": float(len(p - r)),
        "repetitions": float(len(pred_list) - len(p)),
    }
    ref_parsed = [_operands_operators(_expression(s)) for s in r]
    ref_binary = [m.groups() for s in r if (m := _BINARY.match(_expression(s)))]
    wrong = inverted = 0
    for step in p - r:
        operands, operators = _operands_operators(_expression(step))
        if operators and any(
            sorted(operands) == sorted(r_operands)
            and len(operators) == len(r_ops)
            and sorted(operators) != sorted(r_ops)
            for r_operands, r_ops in ref_parsed
        ):
            wrong += 1
        m = _BINARY.match(_expression(step))
        if m and m.group(2) not in "+*":
            a, op, b = m.groups()
            if a != b and (b, op, a) in ref_binary:
                inverted += 1
    out["wrong_operators"] = float(wrong)
    out["inverted_operands"] = float(inverted)
    return out


# --- scoring -------------------------------------------------------------------------------


def _as_spec(spec_or_task_name: TaskSpec | str, answer_pattern: str | None) -> TaskSpec:
    if isinstance(spec_or_task_name, TaskSpec):
        return spec_or_task_name
    from lossearch.tasks import task_spec

    return task_spec(spec_or_task_name, answer_pattern)


def score_each(
    spec_or_task_name: TaskSpec | str,
    predictions: Sequence[str],
    references: Sequence[str],
    answer_pattern: str | None = None,
) -> list[dict[str, float]]:
    """Per-example scores, in order: ``exact_match`` (0 or 1) and, for math tasks, each
    reasoning metric. The paired comparisons of ``lossearch confirm`` use these.

    Raises:
        LossearchError: as :func:`score`.
    """
    spec = _as_spec(spec_or_task_name, answer_pattern)
    if len(predictions) != len(references):
        raise LossearchError(
            f"{len(predictions)} predictions but {len(references)} references"
        )
    if not references:
        raise LossearchError("nothing to score: no predictions")
    rows = []
    for pred, ref in zip(predictions, references, strict=True):
        row = {"exact_match": exact_match(spec, pred, ref)}
        if spec.kind == "math":
            row.update(reasoning_metrics(pred, ref))
        rows.append(row)
    return rows


def score(
    spec_or_task_name: TaskSpec | str,
    predictions: Sequence[str],
    references: Sequence[str],
    answer_pattern: str | None = None,
) -> dict[str, float]:
    """Mean over examples of :func:`score_each`: ``exact_match`` and, for math tasks, each
    reasoning metric.

    Args:
        spec_or_task_name: a :class:`TaskSpec` or a registered task name.
        predictions: generated texts (cut as :func:`generate` returns them).
        references: the targets as the task formats them.
        answer_pattern: with a task *name* of kind ``string`` (``jsonl``), the answer regex.

    Raises:
        LossearchError: unknown task, lengths differ, no examples, or a reference has no
            answer.
    """
    rows = score_each(spec_or_task_name, predictions, references, answer_pattern)
    return {key: sum(r[key] for r in rows) / len(rows) for key in rows[0]}


def read_predictions(path: str | Path) -> tuple[list[str], list[str]]:
    """Read a JSONL file of ``{"prediction": str, "reference": str}`` objects.

    Raises:
        LossearchError: missing file, a directory, text that is not UTF-8, a line that is
            not a JSON object with both string fields (the message names the line), or no
            lines at all.
    """
    from lossearch.storage import read_local_text

    p = Path(path)
    preds: list[str] = []
    refs: list[str] = []
    for n, line in enumerate(read_local_text(p, "a predictions JSONL file").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise LossearchError(f"{p}, line {n}: not valid JSON") from None
        if not isinstance(row, dict):
            raise LossearchError(f"{p}, line {n}: expected a JSON object")
        for key in ("prediction", "reference"):
            if not isinstance(row.get(key), str):
                raise LossearchError(f"{p}, line {n}: needs a string field '{key}'")
        preds.append(row["prediction"])
        refs.append(row["reference"])
    if not refs:
        raise LossearchError(f"{p}: no predictions to score")
    return preds, refs


def score_file(
    path: str | Path, task: str, answer_pattern: str | None = None
) -> dict[str, float]:
    """:func:`score` of a predictions JSONL (see :func:`read_predictions`) under ``task``."""
    spec = _as_spec(task, answer_pattern)
    preds, refs = read_predictions(path)
    return score(spec, preds, refs)


# --- generation ----------------------------------------------------------------------------


def _answer_stop(tokenizer: Any, prompt_len: int) -> Any:
    from transformers import StoppingCriteria

    class _AnswerLineDone(StoppingCriteria):
        """Per row: stop once the generated text holds a complete ``#### number`` line."""

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            import torch

            texts = tokenizer.batch_decode(input_ids[:, prompt_len:], skip_special_tokens=True)
            done = [_ANSWER_LINE.search(t) is not None for t in texts]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return _AnswerLineDone()


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int = 40,
    batch_size: int = 64,
    stop_after_answer: bool = False,
) -> list[str]:
    """Greedy continuations of ``prompts``, in order.

    Prompts are encoded as in training (``[BOS] + ids(prompt)``, see
    :func:`lossearch.tasks.encode_prompt`), sorted by length, left-padded into batches of
    ``batch_size`` and decoded with ``model.generate`` (``do_sample=False``, KV cache) for at
    most ``max_new_tokens`` tokens. A row stops at EOS; with ``stop_after_answer`` (math
    tasks) also once its ``#### number`` line is complete, and its text is cut after that
    line. Returned texts hold only the continuation, special tokens removed. The model is put
    in eval mode and its previous mode restored.

    Raises:
        LossearchError: the tokenizer has neither an EOS nor a pad token.
    """
    import torch
    from transformers import GenerationConfig, StoppingCriteriaList

    from lossearch.tasks.tokenization import encode_prompts

    if not prompts:
        return []
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    if pad is None:
        raise LossearchError("the tokenizer has neither an eos nor a pad token")
    device = next(model.parameters()).device
    encoded = encode_prompts(tokenizer, prompts)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    gen_config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        use_cache=True,
        eos_token_id=eos,
        pad_token_id=pad,
    )
    outputs: list[str] = [""] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                width = max(len(encoded[i]) for i in rows)
                input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
                attention = torch.zeros((len(rows), width), dtype=torch.long)
                for k, i in enumerate(rows):
                    ids = encoded[i]
                    input_ids[k, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                    attention[k, width - len(ids) :] = 1
                stopping = (
                    StoppingCriteriaList([_answer_stop(tokenizer, width)])
                    if stop_after_answer
                    else None
                )
                out = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention.to(device),
                    generation_config=gen_config,
                    stopping_criteria=stopping,
                )
                for k, i in enumerate(rows):
                    new = out[k, width:].tolist()
                    if eos is not None and eos in new:
                        new = new[: new.index(eos)]
                    text = tokenizer.decode(new, skip_special_tokens=True)
                    outputs[i] = cut_after_answer(text) if stop_after_answer else text
    finally:
        model.train(was_training)
    return outputs


def summary_line(metrics: dict[str, Any], epochs: int | None = None) -> str:
    """``epoch 3/4  loss 0.412  exact_match 0.455 ...`` (``epoch 3`` without ``epochs``)."""
    keys = ["loss", "exact_match", "formula_iou", "test/exact_match", "tokens_per_s"]
    parts = []
    if "epoch" in metrics:
        parts.append(f"epoch {metrics['epoch']}" + (f"/{epochs}" if epochs else ""))
    for key in keys:
        if key in metrics:
            v = metrics[key]
            parts.append(f"{key} {v:.4g}" if isinstance(v, float) and math.isfinite(v) else
                         f"{key} {v}")
    return "  ".join(parts)
