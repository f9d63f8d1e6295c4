"""The loss registry: names, parameters, their ranges, and the validation of a loss spec.

A loss spec is the config's ``loss`` section: component names mapped to a weight or to
``{weight: w, <params>}``, plus ``ce_scope``. :func:`normalize_spec` checks it and fills
every default; every user error is a one-line :class:`~lossearch.errors.LossearchError`
naming the loss and the parameter.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lossearch.errors import LossearchError
from lossearch.losses.answer_ce import answer_ce_from_log_probs, answer_cross_entropy
from lossearch.losses.cross_entropy import cross_entropy, cross_entropy_from_log_probs
from lossearch.losses.dft import dft_from_log_probs, dft_loss
from lossearch.losses.dice import generalized_dice_from_log_probs, generalized_dice_loss
from lossearch.losses.focal import focal_from_log_probs, focal_loss
from lossearch.losses.lovasz import lovasz_from_log_probs, lovasz_softmax_loss
from lossearch.losses.poly1 import poly1_from_log_probs, poly1_loss
from lossearch.losses.prob_power import prob_power_from_log_probs, prob_power_loss
from lossearch.losses.sadl import self_adjusting_dice_from_log_probs, self_adjusting_dice_loss
from lossearch.losses.tversky import tversky_from_log_probs, tversky_loss

CE_SCOPES = ("sequence", "answer")
DEFAULT_CE_SCOPE = "sequence"


def _fmt(x: float) -> str:
    return f"{x:g}"


@dataclass(frozen=True)
class Param:
    """One parameter of a loss: its default and the values it accepts.

    ``kind`` is ``"float"`` (optionally bounded by ``low``/``high``, inclusive unless
    ``low_open``/``high_open``), ``"optional_float"`` (``None`` or a bounded float),
    ``"choice"`` (one of ``choices``) or ``"bool"``. Numbers may be given as numeric strings
    (YAML reads ``1e-5`` as a string).
    """

    name: str
    default: Any
    kind: str = "float"
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    low_open: bool = False
    high_open: bool = False

    def check(self, loss: str, value: Any) -> Any:
        """Return ``value`` in canonical form or raise ``LossearchError``."""
        where = f"loss '{loss}': {self.name}"
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise LossearchError(f"{where} must be true or false, got {value!r}")
            return value
        if self.kind == "choice":
            if value not in self.choices:
                allowed = ", ".join(repr(c) for c in self.choices)
                raise LossearchError(f"{where} must be one of {allowed}, got {value!r}")
            return value
        if self.kind == "optional_float" and value is None:
            return None
        number = to_number(value)
        if number is None:
            what = "null or a number" if self.kind == "optional_float" else "a number"
            raise LossearchError(f"{where} must be {what}, got {value!r}")
        too_low = self.low is not None and (
            number <= self.low if self.low_open else number < self.low
        )
        too_high = self.high is not None and (
            number >= self.high if self.high_open else number > self.high
        )
        if too_low or too_high:
            raise LossearchError(f"{where} must be {self._range()}, got {value!r}")
        return number

    def _range(self) -> str:
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"in {left}{_fmt(self.low)}, {_fmt(self.high)}{right}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {_fmt(self.low)}"
        return f"{'<' if self.high_open else '<='} {_fmt(self.high)}"


def to_number(value: Any) -> float | None:
    """A finite float from an int, float or numeric string; ``None`` for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class LossInfo:
    """A registered loss: the public function, its log-probs entry point, its parameters.

    ``from_log_probs(log_probs [N, V] float32, target [N], **params)`` is what
    :class:`~lossearch.losses.composite.CompositeLoss` calls with the shared log-softmax.
    ``per_sequence`` marks a loss whose entry point also takes ``seq_ids``.
    """

    name: str
    fn: Callable[..., Any]
    from_log_probs: Callable[..., Any]
    params: tuple[Param, ...] = ()
    summary: str = ""
    per_sequence: bool = False
    _by_name: dict[str, Param] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {p.name: p for p in self.params})

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def check_params(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """All parameters (defaults filled, declaration order), each checked."""
        for key in given:
            if key not in self._by_name:
                allowed = ", ".join(["weight", *self._by_name])
                raise LossearchError(
                    f"loss '{self.name}': unknown parameter '{key}' (allowed: {allowed})"
                )
        return {
            p.name: p.check(self.name, given[p.name]) if p.name in given else p.default
            for p in self.params
        }


_CLASSES = Param("classes", "present", kind="choice", choices=("present", "all"))
_SMOOTH = Param("smooth", 1e-5, low=0.0)

LOSSES: dict[str, LossInfo] = {
    info.name: info
    for info in (
        LossInfo(
            "ce",
            cross_entropy,
            cross_entropy_from_log_probs,
            (Param("label_smoothing", 0.0, low=0.0, high=1.0, high_open=True),),
            "token cross-entropy, optionally label-smoothed",
        ),
        LossInfo(
            "focal",
            focal_loss,
            focal_from_log_probs,
            (Param("gamma", 2.0, low=0.0), Param("alpha", None, "optional_float", 0.0, 1.0)),
            "focal loss (Lin et al. 2017)",
        ),
        LossInfo(
            "lovasz",
            lovasz_softmax_loss,
            lovasz_from_log_probs,
            (_CLASSES,),
            "Lovász-softmax (Berman et al. 2018)",
        ),
        LossInfo(
            "gdice",
            generalized_dice_loss,
            generalized_dice_from_log_probs,
            (
                _CLASSES,
                _SMOOTH,
                Param("batch", True, kind="bool"),
                Param("variant", "standard", kind="choice", choices=("standard", "paper")),
            ),
            "generalized Dice (Sudre et al. 2017); variant 'paper' is the paper's code, bug "
            "for bug",
            per_sequence=True,
        ),
        LossInfo(
            "sadl",
            self_adjusting_dice_loss,
            self_adjusting_dice_from_log_probs,
            (Param("alpha", 1.0, low=0.0), Param("gamma", 1.0, low=0.0)),
            "self-adjusting Dice (Li et al. 2020)",
        ),
        LossInfo(
            "tversky",
            tversky_loss,
            tversky_from_log_probs,
            (
                Param("alpha", 0.5, low=0.0, high=1.0),
                Param("beta", 0.5, low=0.0, high=1.0),
                _CLASSES,
                _SMOOTH,
            ),
            "Tversky (Salehi et al. 2017)",
        ),
        LossInfo(
            "poly1",
            poly1_loss,
            poly1_from_log_probs,
            (Param("epsilon", 1.0, low=-1.0),),
            "Poly-1 (Leng et al. 2022)",
        ),
        LossInfo(
            "answer_ce",
            answer_cross_entropy,
            answer_ce_from_log_probs,
            (),
            "token cross-entropy on the answer tokens only",
        ),
        LossInfo(
            "dft",
            dft_loss,
            dft_from_log_probs,
            (),
            "Dynamic Fine-Tuning, CE scaled by the detached p_t (Wu et al. 2025)",
        ),
        LossInfo(
            "prob_power",
            prob_power_loss,
            prob_power_from_log_probs,
            (Param("alpha", 1.0, low=0.0, low_open=True),),
            "(1 - p_t^alpha) / alpha (Li et al. 2025)",
        ),
    )
}


def _component(name: str, value: Any) -> dict[str, Any]:
    if name not in LOSSES:
        known = ", ".join(LOSSES)
        raise LossearchError(f"unknown loss '{name}' (known: {known})")
    if isinstance(value, Mapping):
        params = dict(value)
        if "weight" not in params:
            raise LossearchError(f"loss '{name}': missing 'weight'")
        raw_weight = params.pop("weight")
    else:
        params, raw_weight = {}, value
    weight = to_number(raw_weight)
    if weight is None:
        raise LossearchError(f"loss '{name}': weight must be a number, got {raw_weight!r}")
    if weight < 0:
        raise LossearchError(f"loss '{name}': weight must be >= 0, got {raw_weight!r}")
    return {"weight": weight, **LOSSES[name].check_params(params)}


def normalize_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Check a loss spec and return its complete form.

    Accepts ``{ce: 0.6, focal: 0.4}``, dict components ``{focal: {weight: 0.4, gamma: 1}}``
    and an optional ``ce_scope`` (``"sequence"``, the default: CE over every supervised
    token; ``"answer"``: CE over answer tokens only). Returns
    ``{"ce_scope": ..., <name>: {"weight": w, <every param, defaults filled>}, ...}`` in the
    order given; normalising a normalised spec returns it unchanged. Weights are explicit,
    ``>= 0``, and at least one is positive.

    Raises:
        LossearchError: unknown loss or parameter, missing, negative or non-numeric weight,
            all weights zero, a parameter out of range or of the wrong type.
    """
    if not isinstance(spec, Mapping):
        raise LossearchError(
            f"loss: expected a mapping of loss names to weights, got {type(spec).__name__}"
        )
    scope = spec.get("ce_scope", DEFAULT_CE_SCOPE)
    if scope not in CE_SCOPES:
        raise LossearchError(f"loss: ce_scope must be 'sequence' or 'answer', got {scope!r}")
    out: dict[str, Any] = {"ce_scope": scope}
    for name, value in spec.items():
        if name == "ce_scope":
            continue
        if not isinstance(name, str):
            raise LossearchError(f"loss: component names must be strings, got {name!r}")
        out[name] = _component(name, value)
    if not any(v["weight"] > 0 for k, v in out.items() if k != "ce_scope"):
        raise LossearchError("loss: at least one component needs a positive weight")
    return out


def components(spec: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The components of a spec (normalised first), without ``ce_scope``."""
    norm = normalize_spec(spec)
    return {k: v for k, v in norm.items() if k != "ce_scope"}


def loss_family(spec: Mapping[str, Any]) -> str:
    """``"ce"`` when CE is the only positively weighted component, else the other
    positively weighted names, sorted and joined by ``"+"`` (``"focal"``, ``"focal+lovasz"``).
    """
    active = [k for k, v in components(spec).items() if v["weight"] > 0 and k != "ce"]
    return "+".join(sorted(active)) if active else "ce"
