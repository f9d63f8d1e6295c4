"""Tokenisation and collation of :class:`~lossearch.tasks.base.Example` pairs.

Each example becomes ``[BOS] + ids(prompt) + ids(target) + [EOS]``. Prompt and target are
tokenised separately (no special tokens) and their ids concatenated, so the boundary of the
answer mask is exact for any Hugging Face tokenizer (char-level or BPE). BOS is prepended
only when the tokenizer has one *and* adds it itself (``tokenizer("x")`` starts with it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from lossearch.errors import LossearchError
from lossearch.tasks.base import Example

if TYPE_CHECKING:
    import torch

IGNORE_INDEX = -100


@dataclass(frozen=True)
class TruncationStats:
    """What :func:`tokenize` did to fit ``max_length``.

    Attributes:
        total: examples given.
        kept: examples returned (``total - dropped``), truncated ones included.
        truncated: kept examples whose target (or its EOS) was cut at ``max_length``.
        dropped: examples whose BOS + prompt alone reach ``max_length`` (no target token fits).
        max_length: the limit applied, in tokens.
    """

    total: int
    kept: int
    truncated: int
    dropped: int
    max_length: int

    def summary(self) -> str:
        """One line for logs: ``kept 98/100 (3 truncated, 2 dropped) at max_length=128``."""
        return (
            f"kept {self.kept}/{self.total} ({self.truncated} truncated, {self.dropped} dropped)"
            f" at max_length={self.max_length}"
        )


def _bos_prefix(tokenizer: Any) -> list[int]:
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return []
    probe = tokenizer("x")["input_ids"]
    return [bos] if probe[:1] == [bos] else []


def _eos_id(tokenizer: Any) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise LossearchError("the tokenizer has no eos_token; set one before training")
    return int(eos)


def _encode(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """The ids a prompt has inside a training example: ``[BOS] + ids(prompt)``."""
    return _bos_prefix(tokenizer) + _encode(tokenizer, [prompt])[0]


def encode_prompts(tokenizer: Any, prompts: Sequence[str]) -> list[list[int]]:
    """:func:`encode_prompt` for many prompts (one batched tokenizer call)."""
    bos = _bos_prefix(tokenizer)
    return [bos + ids for ids in _encode(tokenizer, prompts)]


def tokenize(
    examples: Sequence[Example], tokenizer: Any, max_length: int
) -> tuple[list[dict[str, list[int]]], TruncationStats]:
    """Tokenise examples for training.

    Returns one dict per kept example with ``input_ids``, ``labels`` (equal to
    ``input_ids``; the collator adds -100 on padding) and ``answer_mask`` (1 on target tokens
    and EOS, 0 on BOS and prompt), all of the same length ``<= max_length``, and the
    :class:`TruncationStats`. An example whose ``[BOS] + prompt`` has ``>= max_length`` tokens
    is dropped; one whose target or EOS does not fit is cut at ``max_length`` and counted as
    truncated.

    Raises:
        LossearchError: no examples, the tokenizer has no EOS, or every example is dropped
            ("every prompt is longer than max_length=...").
    """
    if not examples:
        raise LossearchError("no examples to tokenize")
    eos = _eos_id(tokenizer)
    bos = _bos_prefix(tokenizer)
    prompts = _encode(tokenizer, [e.prompt for e in examples])
    targets = _encode(tokenizer, [e.target for e in examples])
    features: list[dict[str, list[int]]] = []
    truncated = dropped = 0
    for p_ids, t_ids in zip(prompts, targets, strict=True):
        head = bos + p_ids
        if len(head) >= max_length:
            dropped += 1
            continue
        tail = t_ids + [eos]
        if len(head) + len(tail) > max_length:
            tail = tail[: max_length - len(head)]
            truncated += 1
        ids = head + tail
        mask = [0] * len(head) + [1] * len(tail)
        features.append({"input_ids": ids, "labels": list(ids), "answer_mask": mask})
    stats = TruncationStats(
        total=len(examples), kept=len(features), truncated=truncated, dropped=dropped,
        max_length=max_length,
    )
    if not features:
        raise LossearchError(
            f"every prompt is longer than max_length={max_length} "
            f"({len(examples)} examples dropped); raise task.max_length"
        )
    return features, stats


def collate(
    features: Sequence[dict[str, list[int]]],
    pad_id: int,
    padding_side: Literal["right", "left"] = "right",
) -> dict[str, torch.Tensor]:
    """Pad features from :func:`tokenize` into a batch of ``[B, L]`` int64 tensors.

    Returns ``input_ids`` (``pad_id`` on padding), ``attention_mask`` (1 on real tokens),
    ``labels`` (-100 on padding) and ``answer_mask`` (0 on padding); ``L`` is the longest
    feature. Right padding is for training; left padding for generation.
    """
    import torch

    if not features:
        raise ValueError("collate needs at least one feature")
    width = max(len(f["input_ids"]) for f in features)
    out = {
        "input_ids": torch.full((len(features), width), pad_id, dtype=torch.long),
        "attention_mask": torch.zeros((len(features), width), dtype=torch.long),
        "labels": torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long),
        "answer_mask": torch.zeros((len(features), width), dtype=torch.long),
    }
    for row, f in enumerate(features):
        n = len(f["input_ids"])
        cols = slice(0, n) if padding_side == "right" else slice(width - n, width)
        out["input_ids"][row, cols] = torch.tensor(f["input_ids"], dtype=torch.long)
        out["attention_mask"][row, cols] = 1
        out["labels"][row, cols] = torch.tensor(f["labels"], dtype=torch.long)
        out["answer_mask"][row, cols] = torch.tensor(f["answer_mask"], dtype=torch.long)
    return out
