"""The loss registry: names, entry points, parameter models, and the validation of a loss spec.

A loss spec is the config's ``loss`` section: component names mapped to a weight or to
``{weight: w, <params>}``, plus ``ce_scope``. :func:`normalize_spec` checks it and fills
every default; every user error is a one-line :class:`~lossearch.errors.LossearchError`
naming the loss and the parameter. Each loss's parameters (defaults, types, ranges) are the
pydantic model in :mod:`lossearch.losses.params`; nothing else lists them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lossearch.errors import LossearchError
from lossearch.losses.param_text import validate_params
from lossearch.losses.params import (
    CeParams,
    FocalParams,
    GdiceParams,
    LossParams,
    LovaszParams,
    Poly1Params,
    ProbPowerParams,
    SadlParams,
    TverskyParams,
    with_weight,
)

CE_SCOPES = ("sequence", "answer")
DEFAULT_CE_SCOPE = "sequence"


@dataclass(frozen=True)
class LossInfo:
    """A registered loss: the public function, its log-probs entry point, its parameters.

    ``from_log_probs(log_probs [N, V] float32, target [N], **params)`` is what
    :class:`~lossearch.losses.composite.CompositeLoss` calls with the shared log-softmax.
    ``params`` is the pydantic model of those keyword arguments (names, defaults, ranges).
    ``per_sequence`` marks a loss whose entry point also takes ``seq_ids``. ``target_only``
    marks a loss that reads each token's ``log p_t`` and no other class (see
    :meth:`uses_target_only`).

    Both functions live in ``lossearch.losses.<module>`` and are imported on first use, so
    checking a loss spec (a config, a search space) does not import torch.
    """

    name: str
    module: str
    fn_name: str
    from_log_probs_name: str
    params: type[LossParams] = LossParams
    summary: str = ""
    per_sequence: bool = False
    target_only: bool = False

    @property
    def fn(self) -> Callable[..., Any]:
        """The public loss ``fn(logits [N, V], target [N], **params) -> scalar``."""
        return getattr(importlib.import_module(f"lossearch.losses.{self.module}"), self.fn_name)

    @property
    def from_log_probs(self) -> Callable[..., Any]:
        """The entry point on precomputed log-probs (see the class docstring)."""
        module = importlib.import_module(f"lossearch.losses.{self.module}")
        return getattr(module, self.from_log_probs_name)

    def uses_target_only(self, params: Mapping[str, Any]) -> bool:
        """True when the loss at ``params`` is a function of each token's ``log p_t`` alone:
        then ``from_log_probs(log_probs, target, **params)`` equals, in value and gradient,
        ``from_log_probs(log_probs.gather(1, target[:, None]), zeros [N], **params)``, its
        entry point on the ``[N, 1]`` column of target log-probs with every target 0.

        Not for a loss without ``target_only``, nor where ``params`` read the class axis:
        CE's ``label_smoothing > 0`` (the mean over all ``V`` log-probs) or a per-class
        tensor (focal's ``alpha [V]``).
        """
        if not self.target_only or params.get("label_smoothing"):
            return False
        return not any(hasattr(value, "shape") for value in params.values())

    def defaults(self) -> dict[str, Any]:
        """Every parameter's default, in declaration order."""
        return self.params().model_dump()

    def check_params(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """All parameters (defaults filled, declaration order), each checked; a bad one is a
        one-line ``LossearchError`` naming this loss and the parameter."""
        return validate_params(self.name, self.params, dict(given)).model_dump()

    def check_component(self, value: Any) -> dict[str, Any]:
        """A spec entry (a bare weight, or ``{weight: w, <params>}``) as ``{"weight": w,
        <every param>}``; errors as :meth:`check_params`, plus ``missing 'weight'``."""
        given = dict(value) if isinstance(value, Mapping) else {"weight": value}
        return validate_params(self.name, with_weight(self.params), given).model_dump()


LOSSES: dict[str, LossInfo] = {
    info.name: info
    for info in (
        LossInfo(
            "ce",
            "ce",
            "cross_entropy",
            "cross_entropy_from_log_probs",
            CeParams,
            "token cross-entropy, optionally label-smoothed",
            target_only=True,
        ),
        LossInfo(
            "focal",
            "focal",
            "focal_loss",
            "focal_from_log_probs",
            FocalParams,
            "focal loss (Lin et al. 2017)",
            target_only=True,
        ),
        LossInfo(
            "lovasz",
            "lovasz",
            "lovasz_softmax_loss",
            "lovasz_from_log_probs",
            LovaszParams,
            "Lovász-softmax (Berman et al. 2018)",
        ),
        LossInfo(
            "gdice",
            "dice",
            "generalized_dice_loss",
            "generalized_dice_from_log_probs",
            GdiceParams,
            "generalized Dice (Sudre et al. 2017); variant 'paper' is the paper's code, bug "
            "for bug",
            per_sequence=True,
        ),
        LossInfo(
            "sadl",
            "sadl",
            "self_adjusting_dice_loss",
            "self_adjusting_dice_from_log_probs",
            SadlParams,
            "self-adjusting Dice (Li et al. 2020)",
            target_only=True,
        ),
        LossInfo(
            "tversky",
            "tversky",
            "tversky_loss",
            "tversky_from_log_probs",
            TverskyParams,
            "Tversky (Salehi et al. 2017)",
        ),
        LossInfo(
            "poly1",
            "poly1",
            "poly1_loss",
            "poly1_from_log_probs",
            Poly1Params,
            "Poly-1 (Leng et al. 2022)",
            target_only=True,
        ),
        LossInfo(
            "answer_ce",
            "answer_ce",
            "answer_cross_entropy",
            "answer_ce_from_log_probs",
            LossParams,
            "token cross-entropy on the answer tokens only",
            target_only=True,
        ),
        LossInfo(
            "dft",
            "dft",
            "dft_loss",
            "dft_from_log_probs",
            LossParams,
            "Dynamic Fine-Tuning, CE scaled by the detached p_t (Wu et al. 2025)",
            target_only=True,
        ),
        LossInfo(
            "prob_power",
            "prob_power",
            "prob_power_loss",
            "prob_power_from_log_probs",
            ProbPowerParams,
            "(1 - p_t^alpha) / alpha (Li et al. 2025)",
            target_only=True,
        ),
    )
}


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
        if name not in LOSSES:
            raise LossearchError(f"unknown loss '{name}' (known: {', '.join(LOSSES)})")
        out[name] = LOSSES[name].check_component(value)
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
