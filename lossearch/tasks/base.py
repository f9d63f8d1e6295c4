"""What every task shares: the example and spec types, and loading rows through ``datasets``.

A task turns rows of its data set's *native* field layout (the columns the Hugging Face Hub
copy has) into :class:`Example` pairs of prompt and target text. Rows come from local files
(``task.train_file`` / ``task.eval_file``, or the split files found in ``task.data_dir``; JSONL
or Parquet, read with the ``json`` / ``parquet`` builders of :func:`datasets.load_dataset`) or,
when no local file is named, from the task's Hub data set. After loading, both sources take
the same code path.

Every problem the user can fix (missing file, unreadable file, rows without the needed fields,
an empty split, no network for the Hub) raises :class:`~lossearch.errors.LossearchError` with
a one-line message.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from lossearch.errors import LossearchError

if TYPE_CHECKING:
    from lossearch.config import TaskConfig

TaskKind = Literal["math", "choice", "string"]

_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


@dataclass(frozen=True)
class Example:
    """One supervised pair: the model reads ``prompt`` and learns to continue with ``target``."""

    prompt: str
    target: str


@dataclass(frozen=True)
class TaskSpec:
    """How a task's outputs are scored.

    Attributes:
        name: the registry name (``gsm8k``, ``arith``, ...).
        kind: ``"math"`` (``#### number`` answers and ``<<expr=value>>`` steps: exact match
            plus the reasoning metrics), ``"choice"`` (an answer letter) or ``"string"``
            (exact string match, or the ``answer_pattern`` group).
        answer_pattern: for ``string`` tasks, an optional regex whose first group (or whole
            match, if it has no group) is the answer to compare.
    """

    name: str
    kind: TaskKind
    answer_pattern: str | None = None

    @property
    def stop_after_answer(self) -> bool:
        """True when generation may stop once the ``#### number`` line is complete."""
        return self.kind == "math"


@dataclass(frozen=True)
class TaskData:
    """A loaded task: training and held-out examples plus the scoring spec."""

    train: list[Example]
    eval: list[Example]
    spec: TaskSpec


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL/JSON or Parquet file into a list of row dicts via :mod:`datasets`.

    Raises:
        LossearchError: the file is missing, has an unknown suffix or cannot be parsed.
    """
    p = Path(path)
    if not p.is_file():
        raise LossearchError(f"file not found: {p}")
    builder = _SUFFIXES.get(p.suffix.lower())
    if builder is None:
        raise LossearchError(f"{p}: expected a .jsonl, .json or .parquet file")
    if p.stat().st_size == 0:
        return []
    import datasets

    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(builder, data_files=str(p), split="train")
    except Exception as exc:  # datasets wraps parse errors in several types
        raise LossearchError(f"could not read {p}: {_first_line(exc)}") from None
    return ds.to_list()


def save_jsonl(examples: Sequence[Example], path: str | Path) -> Path:
    """Write examples as JSONL with ``prompt`` and ``target`` fields (the ``jsonl`` task's
    default layout), e.g. to freeze a generated ``arith`` set; returns the path."""
    import json

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", encoding="utf-8") as fh:
        for ex in examples:
            fh.write(json.dumps({"prompt": ex.prompt, "target": ex.target}) + "\n")
    return p


def load_hub_split(path: str, config: str | None, split: str) -> list[dict[str, Any]]:
    """Load one split of a Hub data set; any failure (e.g. no network) is a LossearchError."""
    import datasets

    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(path, config, split=split)
    except Exception as exc:
        raise LossearchError(
            f"could not load {path} ({split}) from the Hugging Face Hub ({_first_line(exc)}); "
            "set task.data_dir or task.train_file/task.eval_file to local files"
        ) from None
    return ds.to_list()


def find_split_file(data_dir: str | Path, splits: Sequence[str]) -> Path:
    """The file for the first of ``splits`` present in ``data_dir``.

    For a split ``s`` it looks for ``s.jsonl``, ``s.json``, ``s.parquet`` and then the Hub's
    Parquet layout (``s-*.parquet``, ``*/s-*.parquet``, ``data/s-*.parquet``) and takes the
    first match in sorted order.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise LossearchError(f"data directory not found: {root}")
    for split in splits:
        for name in (f"{split}.jsonl", f"{split}.json", f"{split}.parquet"):
            if (root / name).is_file():
                return root / name
        for pattern in (f"{split}-*.parquet", f"*/{split}-*.parquet", f"data/{split}-*.parquet"):
            hits = sorted(root.glob(pattern))
            if hits:
                return hits[0]
    raise LossearchError(
        f"no {' or '.join(splits)} file (.jsonl, .json or .parquet) in {root}"
    )


def parse_number(text: str) -> float | None:
    """Parse a number written as in GSM8K answers: ``1,234``, ``-3``, ``2.50``, ``$7``, ``12.0``.

    Thousands commas, a leading ``$``, surrounding spaces and a trailing ``.`` or ``%`` are
    tolerated; anything else returns None.
    """
    s = text.strip().replace(",", "").lstrip("$").rstrip("%").strip()
    if s.endswith("."):
        s = s[:-1]
    try:
        value = float(s)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def format_number(value: float) -> str:
    """Render a computed value compactly: integers without ``.0``, others to at most 4 decimals."""
    if abs(value - round(value)) < 1e-9:
        return str(int(round(value)))
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


class Task:
    """A registered task. Subclasses set the class attributes and implement :meth:`to_example`.

    Class attributes:
        name: registry name.
        kind: scoring kind (see :class:`TaskSpec`).
        hub_path, hub_config: the Hub data set used when no local file is given.
        train_splits, eval_splits: split names to try, in order, for the Hub and for
            ``data_dir``.
        fields: the native columns every row must have.
    """

    name: ClassVar[str]
    kind: ClassVar[TaskKind]
    hub_path: ClassVar[str | None] = None
    hub_config: ClassVar[str | None] = None
    train_splits: ClassVar[tuple[str, ...]] = ("train",)
    eval_splits: ClassVar[tuple[str, ...]] = ("test", "validation")
    fields: ClassVar[tuple[str, ...]] = ()

    def spec(self, cfg: TaskConfig) -> TaskSpec:
        """The scoring spec for this task under ``cfg``."""
        return TaskSpec(name=self.name, kind=self.kind)

    def to_example(self, row: dict[str, Any], cfg: TaskConfig) -> Example:
        """Format one native row; raise ``ValueError`` for a row that cannot be formatted."""
        raise NotImplementedError

    def required_fields(self, cfg: TaskConfig) -> tuple[str, ...]:
        """Columns every row must carry (overridable when they depend on ``cfg``)."""
        return self.fields

    # -- loading ---------------------------------------------------------------------------

    def rows(self, cfg: TaskConfig, which: Literal["train", "eval"]) -> tuple[list[dict], str]:
        """Raw rows of one side and a label naming where they came from."""
        explicit = cfg.train_file if which == "train" else cfg.eval_file
        splits = self.train_splits if which == "train" else self.eval_splits
        if explicit:
            return read_rows(explicit), str(explicit)
        if cfg.data_dir:
            path = find_split_file(cfg.data_dir, splits)
            return read_rows(path), str(path)
        if self.hub_path is None:
            raise LossearchError(
                f"task '{self.name}' needs local data: set task.data_dir or task.{which}_file"
            )
        last: LossearchError | None = None
        for split in splits:
            try:
                return load_hub_split(self.hub_path, self.hub_config, split), (
                    f"{self.hub_path}:{split}"
                )
            except LossearchError as err:
                last = err
        assert last is not None
        raise last

    def examples(
        self, rows: list[dict[str, Any]], cfg: TaskConfig, source: str, limit: int | None
    ) -> list[Example]:
        """Check the fields and format the first ``limit`` rows (all when None)."""
        if not rows:
            raise LossearchError(f"{self.name}: no rows in {source}")
        need = self.required_fields(cfg)
        for i, row in enumerate(rows[: limit or len(rows)]):
            missing = [f for f in need if f not in row or row[f] is None]
            if missing:
                found = ", ".join(sorted(row)) or "none"
                raise LossearchError(
                    f"{self.name}: row {i + 1} of {source} lacks field(s) "
                    f"{', '.join(repr(m) for m in missing)} (found: {found})"
                )
        out = []
        for i, row in enumerate(rows[: limit or len(rows)]):
            try:
                out.append(self.to_example(row, cfg))
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                raise LossearchError(
                    f"{self.name}: row {i + 1} of {source} cannot be formatted: {_first_line(exc)}"
                ) from None
        return out

    def load(self, cfg: TaskConfig) -> TaskData:
        """Load and format both sides; ``train_size`` / ``eval_size`` keep the first rows."""
        train_rows, train_src = self.rows(cfg, "train")
        eval_rows, eval_src = self.rows(cfg, "eval")
        train = self.examples(train_rows, cfg, train_src, cfg.train_size)
        evals = self.examples(eval_rows, cfg, eval_src, cfg.eval_size)
        return TaskData(train=train, eval=evals, spec=self.spec(cfg))


_LETTERS = "ABCDEFGHIJ"


def letter(index: int) -> str:
    """``0 -> "A"``, ``1 -> "B"``, ..."""
    return _LETTERS[index]


def choices_line(texts: Sequence[str]) -> str:
    """``A) first B) second ...`` on one line, whitespace inside each choice collapsed."""
    return " ".join(f"{letter(i)}) {' '.join(str(t).split())}" for i, t in enumerate(texts))


_WS = re.compile(r"\s+")


def squash(text: str) -> str:
    """Collapse runs of whitespace to one space and strip the ends."""
    return _WS.sub(" ", str(text)).strip()
