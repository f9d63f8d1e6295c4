"""What every task shares: the example and spec types, and loading rows through ``datasets``.

A task turns rows of its data set's *native* field layout (the columns the Hugging Face Hub
copy has) into :class:`Example` pairs of prompt and target text, in three splits:

* ``train``: what the model trains on;
* ``validation``: scored every epoch; the only held-out split a search sees. A data set
  that ships one uses it; otherwise ``task.val_size`` examples (a count, or a fraction of
  train) are carved out of train by a shuffle seeded with ``task.data_seed`` (:func:`carve`)
  and removed from the examples trained on;
* ``test``: scored only after training (``lossearch train``'s last epoch, ``lossearch
  confirm``), loaded only when asked for.

Rows come from local files (``task.train_file`` / ``task.validation_file`` /
``task.test_file``, or the split files found in ``task.data_dir``; JSONL or Parquet, read with
the ``json`` / ``parquet`` builders of :func:`datasets.load_dataset`) or, when no local file
is named, from the task's Hub data set. After loading, both sources take the same code path.

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

# File names a ``data_dir`` validation split may have (``validation.jsonl``, ``dev.parquet``...).
DIR_VALIDATION_NAMES = ("validation", "val", "dev")

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


Split = Literal["train", "validation", "test"]


@dataclass(frozen=True)
class TaskData:
    """A loaded task: its three splits plus the scoring spec.

    ``test`` is empty unless the test split was asked for; ``validation_source`` says where
    the validation examples came from (a file, a Hub split, or ``carved from train``).
    """

    train: list[Example]
    validation: list[Example]
    test: list[Example]
    spec: TaskSpec
    validation_source: str = ""


def _first_line(exc: BaseException) -> str:
    """The first line of the innermost exception ``exc`` was raised from (``datasets`` wraps
    a parse error, "JSON parse error: ... in row 0", in a generic one)."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
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
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its own line of a parse error
    try:
        ds = datasets.load_dataset(builder, data_files=str(p), split="train")
    except Exception as exc:  # datasets wraps parse errors in several types
        raise LossearchError(f"could not read {p}: {_first_line(exc)}") from None
    finally:
        datasets.logging.set_verbosity(verbosity)
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
            "set task.data_dir or task.train_file/task.test_file to local files"
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
        train_splits, validation_splits, test_splits: split names to try, in order, for the
            Hub; no ``validation_splits`` means the Hub copy's validation is carved out of
            train. In ``data_dir`` a validation file is any of :data:`DIR_VALIDATION_NAMES`
            that is not a test split name.
        fields: the native columns every row must have.
    """

    name: ClassVar[str]
    kind: ClassVar[TaskKind]
    hub_path: ClassVar[str | None] = None
    hub_config: ClassVar[str | None] = None
    train_splits: ClassVar[tuple[str, ...]] = ("train",)
    validation_splits: ClassVar[tuple[str, ...]] = ("validation", "val", "dev")
    test_splits: ClassVar[tuple[str, ...]] = ("test",)
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

    def rows(self, cfg: TaskConfig, which: Split) -> tuple[list[dict], str] | None:
        """Raw rows of one split and a label naming where they came from.

        None for a validation split the data does not have (it is then carved out of train);
        a missing train or test split raises.
        """
        explicit = {
            "train": cfg.train_file, "validation": cfg.validation_file, "test": cfg.test_file
        }[which]
        splits = {
            "train": self.train_splits,
            "validation": self.validation_splits,
            "test": self.test_splits,
        }[which]
        if explicit:
            return read_rows(explicit), str(explicit)
        if cfg.data_dir:
            if which == "validation":  # any of the usual names that is not the test split
                splits = tuple(s for s in DIR_VALIDATION_NAMES if s not in self.test_splits)
            try:
                path = find_split_file(cfg.data_dir, splits)
            except LossearchError:
                if which == "validation" and Path(cfg.data_dir).is_dir():
                    return None
                raise
            return read_rows(path), str(path)
        if which == "validation" and not splits:
            return None
        if self.hub_path is None:
            if which == "validation":
                return None
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

    def load(self, cfg: TaskConfig, *, test: bool = True) -> TaskData:
        """Load and format the splits (``test`` only when asked for).

        Validation: the data set's own split (its first ``val_size`` rows, or that fraction
        of them) or, without one, :func:`carve` of train. Then ``train_size`` keeps the first
        remaining training rows and ``test_size`` the first test rows.
        """
        train_rows, train_src = self.rows(cfg, "train")
        if not train_rows:
            raise LossearchError(f"{self.name}: no rows in {train_src}")
        found = self.rows(cfg, "validation")
        val_limit = cfg.val_size if isinstance(cfg.val_size, int) else None
        if found is None:
            train_rows, val_rows = carve(train_rows, cfg.val_size, cfg.data_seed, train_src)
            val_src = (
                f"{len(val_rows)} examples ({cfg.val_size:g} of train) carved from {train_src} "
                f"(data_seed {cfg.data_seed})"
            )
        else:
            val_rows, val_src = found
            if val_limit is None:  # a fraction of the data set's own validation split
                val_limit = max(1, math.ceil(cfg.val_size * len(val_rows)))
        train = self.examples(train_rows, cfg, train_src, cfg.train_size)
        validation = self.examples(val_rows, cfg, val_src, val_limit)
        tests: list[Example] = []
        if test:
            test_rows, test_src = self.rows(cfg, "test")  # type: ignore[misc]
            tests = self.examples(test_rows, cfg, test_src, cfg.test_size)
        return TaskData(train, validation, tests, self.spec(cfg), validation_source=val_src)


def carve(
    rows: list[dict[str, Any]], size: int | float, seed: int, source: str = "train"
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split ``rows`` into ``(rest, held_out)``.

    ``size`` an int (a count): the held-out rows are the first ``size`` positions of a
    permutation of ``range(len(rows))`` drawn by ``random.Random(seed)``; the rest keep
    their original order.

    ``size`` a float in (0, 1) (a fraction): exactly what ``datasets.Dataset.train_test_split(
    test_size=size, seed=seed)`` does (datasets 2.x to 5.x), so ``0.1`` with seed 42 is the
    paper's GSM8K split: ``n = ceil(size * len(rows))`` held out, the first ``n`` positions of
    ``numpy.random.default_rng(seed).permutation(len(rows))``; the rest are the remaining
    positions *in that permutation's order* (as the paper's training file had them).

    Disjoint by position, so a duplicated row can sit on both sides only if the data set
    repeats it.

    Raises:
        LossearchError: ``size`` leaves no training rows.
    """
    import random

    if isinstance(size, float):
        import numpy as np

        n = math.ceil(size * len(rows))
        if n >= len(rows):
            raise LossearchError(
                f"task.val_size {size:g} of the {len(rows)} training examples of {source} "
                "leaves none to train on: lower task.val_size or give a validation file"
            )
        perm = np.random.default_rng(seed).permutation(len(rows)).tolist()
        return [rows[i] for i in perm[n:]], [rows[i] for i in perm[:n]]
    if size >= len(rows):
        raise LossearchError(
            f"task.val_size {size} is not smaller than the {len(rows)} training examples "
            f"of {source}: lower task.val_size or give a validation file"
        )
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held = set(order[:size])
    return [r for i, r in enumerate(rows) if i not in held], [rows[i] for i in order[:size]]


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
