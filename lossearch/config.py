"""The training configuration: one pydantic schema, loaded from YAML plus ``key=value`` overrides.

A run is fully described by :class:`TrainConfig`. Every field has a default, so a YAML that
names only ``task.name``, ``model.name_or_path``, ``loss`` and ``seed`` is complete; for
``arith`` + ``tiny`` the defaults are the calibrated CPU run.

Overrides use dotted paths into the YAML tree (``optim.lr=3e-4``, ``loss.focal.gamma=1``);
values are parsed as YAML scalars. Unknown keys and out-of-range values raise
:class:`~lossearch.errors.LossearchError` with the key's dotted path in the message.
"""

from __future__ import annotations

import copy
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from lossearch.errors import LossearchError
from lossearch.storage import absolute_path, is_uri, read_local_text
from lossearch.tiny import TINY

M = TypeVar("M", bound=BaseModel)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# Keys of earlier releases: a config that still uses one fails with the new key's name.
_RENAMED_TASK_KEYS = {
    "eval_size": "task.val_size (validation, used by the search) or task.test_size",
    "eval_file": "task.validation_file or task.test_file",
}


class IgnoredKeyWarning(UserWarning):
    """A request in a config that the training will not honour as written: a key another
    task reads (:func:`ignored_task_keys`), a step count beyond the epochs, ... (see
    :func:`lossearch.preflight.preflight`)."""


_ONE_TASK_KEYS = {
    "target_format": "gsm8k",
    "arith_steps": "arith",
    "arith_max_operand": "arith",
    "arith_ops": "arith",
    "arith_train_size": "arith",
    "prompt_field": "jsonl",
    "target_field": "jsonl",
    "answer_pattern": "jsonl",
}
"""The task keys only one task reads, and that task."""


class TaskConfig(_Section):
    """Which data set, where its three splits come from, and how it is cut to length.

    Splits: ``train`` (trained on), ``validation`` (scored every epoch; the only split a
    search sees) and ``test`` (scored after the last epoch of ``lossearch train`` and by
    ``lossearch confirm``; never during a search). A data set without a validation split has
    ``val_size`` examples carved out of train with ``data_seed``, disjoint from the examples
    trained on. ``test_size`` keeps the first test rows (None: the whole test split; for
    ``arith``, whose problems are generated, 200).
    """

    name: str = "arith"
    data_dir: str | None = None
    train_file: str | None = None
    validation_file: str | None = None
    test_file: str | None = None
    train_size: int | None = Field(default=None, ge=1)
    # an int >= 1 is a count; a float in (0, 1) a fraction of train (carved; see tasks.base.carve)
    val_size: int | float = Field(default=200, gt=0)
    test_size: int | None = Field(default=None, ge=1)
    max_length: int = Field(default=128, ge=8)
    # gsm8k: formulas (ours) | formulas_paper (the paper's exact string) | full
    target_format: Literal["formulas", "formulas_paper", "full"] = "formulas"
    # arith: synthetic problems (see lossearch/tasks/arith.py); data_seed seeds the problems,
    # independently of the training seed
    arith_steps: int = Field(default=1, ge=1, le=8)
    arith_max_operand: int = Field(default=12, ge=2)
    arith_ops: str = Field(default="+-*", pattern=r"^[-+*/]+$")
    arith_train_size: int = Field(default=6400, ge=1)
    data_seed: int = 0
    # jsonl: field names and optional numeric answer pattern
    prompt_field: str = "prompt"
    target_field: str = "target"
    answer_pattern: str | None = None

    @field_validator("data_dir", "train_file", "validation_file", "test_file")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        return absolute_path(value) if value is not None and not is_uri(value) else value

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for old, new in _RENAMED_TASK_KEYS.items():
                if old in data:
                    raise ValueError(f"'task.{old}' was renamed: use {new}")
        return data

    @field_validator("val_size", mode="before")
    @classmethod
    def _val_size(cls, value: Any) -> Any:
        # a whole number is a count (1, 200, 200.0); anything else must be a fraction in (0, 1)
        if not isinstance(value, (int, float)):
            return value  # pydantic reports the type
        if not isinstance(value, bool) and math.isfinite(value):
            if value == int(value) and value >= 1:
                return int(value)
            if 0 < value < 1:
                return float(value)
        raise ValueError(f"must be a count >= 1 or a fraction of train in (0, 1), got {value!r}")

    @model_validator(mode="after")
    def _fraction_needs_train(self) -> TaskConfig:
        if isinstance(self.val_size, float) and self.name == "arith":
            raise ValueError(
                "task.val_size: arith generates its validation problems, so it takes a count, "
                f"not a fraction ({self.val_size})"
            )
        return self


def ignored_task_keys(task: TaskConfig) -> list[str]:
    """The keys of ``task`` that only another task reads, set away from their defaults (a
    search space tuned for ``arith`` run with ``task.name=jsonl``, say), each as
    ``task.<key> <value> (task <t> only)``. A resolved config holds every key at its
    default, so only what someone set is named."""
    return [
        f"task.{key} {getattr(task, key)!r} ({owner} only)"
        for key, owner in _ONE_TASK_KEYS.items()
        if task.name != owner and getattr(task, key) != TaskConfig.model_fields[key].default
    ]


class LoraConfig(_Section):
    r: int = Field(default=8, ge=1)
    alpha: float = Field(default=16, gt=0)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    # auto: the attention projections of the model's family (peft's own default list for a
    # family lossearch does not list); paper: the paper's targets for its model families
    # (lossearch.models.PAPER_LORA_TARGETS); all-linear: peft's every linear layer but the
    # output layer; or an explicit list of names
    target_modules: Literal["auto", "paper", "all-linear"] | list[str] = "auto"


def looks_like_path(name: str) -> bool:
    """``model.name_or_path`` names a local path (absolute, relative, ``~``, or an existing
    directory), not a Hugging Face hub id."""
    return name.startswith(("/", "./", "../", "~")) or name in (".", "..") or os.path.isdir(name)


class ModelConfig(_Section):
    """``tiny`` builds the built-in Llama-style model; anything else is a local path or hub id."""

    name_or_path: str = "tiny"
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    lora: LoraConfig | None = None
    gradient_checkpointing: bool = False

    @field_validator("name_or_path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        return absolute_path(value) if value != TINY and looks_like_path(value) else value


class OptimConfig(_Section):
    """Optimizer, schedule, batching and numeric precision of the training steps.

    ``grad_accum`` micro-batches of ``batch_size`` (per worker) make one optimizer step; an
    epoch trains whole accumulation groups only. ``mixed_precision``: ``auto`` (the default)
    is bf16 autocast on CUDA and full precision on CPU; ``no`` never autocasts; ``bf16``
    autocasts to bfloat16; ``fp16`` autocasts to float16 and scales the loss with
    ``torch.amp.GradScaler`` (both also run on CPU). The weights stay in ``model.dtype``.
    """

    lr: float = Field(default=3e-3, gt=0)
    epochs: int = Field(default=3, ge=1)
    max_steps: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=32, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    warmup_steps: int = Field(default=30, ge=0)
    weight_decay: float = Field(default=0.0, ge=0)
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"


class EvalConfig(_Section):
    batch_size: int = Field(default=64, ge=1)
    max_new_tokens: int = Field(default=40, ge=1)
    every_epochs: int = Field(default=1, ge=1)


class ScalingConfig(_Section):
    num_workers: int = Field(default=1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(default=1.0, gt=0)
    gpus_per_worker: float = Field(default=1.0, ge=0)


class TrainConfig(_Section):
    """The whole run. ``loss`` is the composite spec, see :func:`lossearch.losses.build_loss`."""

    task: TaskConfig = Field(default_factory=TaskConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: dict[str, Any] = Field(default_factory=lambda: {"ce": 1.0}, validate_default=True)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    seed: int = 0
    name: str = "run"

    @field_validator("name")
    @classmethod
    def _folder_name(cls, name: str) -> str:
        # `lossearch train` writes runs/<name>-<time>/: a path would land elsewhere
        if not name.strip() or name in (".", "..") or any(c in name for c in "/\\"):
            raise ValueError(f"must be a folder name (no '/'), got {name!r}")
        return name

    @field_validator("loss")
    @classmethod
    def _check_loss(cls, spec: dict[str, Any]) -> dict[str, Any]:
        from lossearch.losses import normalize_spec

        return normalize_spec(spec)

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML-safe dict of every field (the resolved config)."""
        return self.model_dump(mode="json")


def _format_error(err: ValidationError) -> str:
    first = err.errors()[0]
    path = ".".join(str(p) for p in first["loc"])
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return f"config key '{path}': {msg}" if path else f"config: {msg}"


class UserYamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but ``1e-3`` is a float, as in YAML 1.2 (and JSON), and a key
    written twice in one mapping is an error, as YAML 1.2 says.

    PyYAML follows YAML 1.1, whose floats need a dot (``1.0e-3``): ``lr: 1e-3`` was the
    string ``"1e-3"``, which a search space's ``low``/``high`` refused as "not a valid
    number". PyYAML keeps the last of duplicate keys: a second ``optim:`` section silently
    dropped the first one's ``lr``. Used for every YAML a user writes: configs, spaces,
    ``key=value`` overrides.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` merges; its keys may repeat
                continue
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) or key is None:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key '{key}'", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


UserYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.?[0-9_]*|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_user_yaml(text: str) -> Any:
    """Parse YAML a user wrote (:class:`UserYamlLoader`); raises ``yaml.YAMLError``."""
    return yaml.load(text, Loader=UserYamlLoader)  # noqa: S506 (a SafeLoader subclass)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into its path and a YAML-parsed value."""
    if "=" not in text:
        raise LossearchError(f"override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise LossearchError(f"override '{text}' has an empty key")
    try:
        value = load_user_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or ""
        if problem.startswith("duplicate key"):
            raise LossearchError(f"override '{text}': {problem}") from None
        value = raw
    return key.split("."), value


def set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    """Set ``tree[p0][p1]...= value``, creating dicts; a scalar loss weight becomes a dict."""
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            if path[0] == "loss" and isinstance(child, (int, float)):
                child = node[part] = {"weight": child}
            else:
                raise LossearchError(f"override '{'.'.join(path)}': '{part}' is not a section")
        node = child
    node[path[-1]] = value


def flatten(tree: Mapping[str, Any], sep: str = ".") -> dict[str, Any]:
    """Nested mappings as one level of joined keys: ``{"optim": {"lr": 1e-3}}`` ->
    ``{"optim.lr": 1e-3}`` (``sep`` joins the parts). Everything else (lists too) is a leaf;
    an empty nested mapping contributes no key."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update({f"{key}{sep}{k}": v for k, v in flatten(value, sep).items()})
        else:
            out[str(key)] = value
    return out


def refuse_repeated_keys(keys: list[str]) -> None:
    """One line for the first dotted override key given twice (``optim.lr=1e-3
    optim.lr=3e-3``): applied in turn, the last would win without a word."""
    twice = next((k for i, k in enumerate(keys) if k in keys[:i]), None)
    if twice is not None:
        raise LossearchError(f"override '{twice}' given more than once; give it once")


def apply_overrides(tree: dict[str, Any], overrides: list[str] | dict[str, Any]) -> dict[str, Any]:
    """Return a copy of ``tree`` with overrides (``["a.b=1"]`` or ``{"a.b": 1}``) applied.

    An override changes the config the tree stands for: a ``loss.*`` key where the tree has
    no ``loss`` applies to the default loss (``{ce: 1.0}``), so ``loss.ce.label_smoothing=0.1``
    keeps CE's weight and ``loss.focal.weight=0.4`` adds focal to it. A key given twice is
    an error (the last would win without a word).
    """
    out = copy.deepcopy(tree)
    items = (
        [parse_override(o) for o in overrides]
        if isinstance(overrides, list)
        else [(k.split("."), v) for k, v in overrides.items()]
    )
    refuse_repeated_keys([".".join(path) for path, _ in items])
    if "loss" not in out and any(path[0] == "loss" and len(path) > 1 for path, _ in items):
        out["loss"] = TrainConfig.model_fields["loss"].default_factory()
    for path, value in items:
        set_path(out, path, value)
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; missing file or malformed YAML is a one-line LossearchError."""
    p = Path(path)
    try:
        data = load_user_yaml(read_local_text(p, "a YAML file"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None)
        what = f": {problem}" if problem and problem.startswith("duplicate key") else ""
        raise LossearchError(f"malformed YAML in {p}{where}{what}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LossearchError(f"{p}: expected a mapping at the top level")
    return data


def validate_as(model: type[M], tree: Any) -> M:
    """``model.model_validate(tree)``; a failure is one ``LossearchError`` line naming the
    first offending dotted key (every file lossearch reads is checked through this)."""
    try:
        return model.model_validate(tree)
    except ValidationError as err:
        raise LossearchError(_format_error(err)) from None


def validate(tree: dict[str, Any]) -> TrainConfig:
    """Validate a raw training-config tree; errors name the offending key."""
    return validate_as(TrainConfig, tree)


def load_config(
    path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None
) -> TrainConfig:
    """Load YAML (or defaults when ``path`` is None), apply overrides, validate. A search
    space file given here (top-level ``base`` with ``space`` or ``grid``) is named as one."""
    tree = read_yaml(path) if path is not None else {}
    if "base" in tree and ("space" in tree or "grid" in tree):
        raise LossearchError(
            f"{path} is a search space, not a training config: use lossearch search --space "
            f"{path} (or its base: section as a config)"
        )
    if overrides:
        tree = apply_overrides(tree, overrides)
    return validate(tree)


def dump_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
