"""Token-level losses for fine-tuning causal language models, and the composite loss.

Every loss takes ``logits [N, V]`` (any float dtype, computed in float32) and
``target [N]`` and returns the mean over the tokens whose target is not ``ignore_index``
(those are dropped). Each ``<name>.py`` also has a ``*_from_log_probs`` entry point that
takes precomputed log-probs of the kept tokens; :class:`CompositeLoss` computes the
log-softmax once per step and hands it to every component.

Names in a loss spec (``LOSSES``): ``ce``, ``focal``, ``lovasz``, ``gdice``, ``sadl``,
``tversky``, ``poly1``, ``answer_ce`` (CE on the answer tokens only, whatever
``ce_scope`` says), ``dft`` (Dynamic Fine-Tuning), ``prob_power`` ((1 - p^alpha) / alpha).
``ce`` takes ``label_smoothing``. Each loss's parameters, with their defaults and ranges, are
its pydantic model ``LOSSES[name].params`` (:mod:`lossearch.losses.params`).
"""

from __future__ import annotations

from lossearch.lazy import lazy_exports
from lossearch.losses.params import LossParams
from lossearch.losses.registry import (
    CE_SCOPES,
    LOSSES,
    LossInfo,
    loss_family,
    normalize_spec,
)

# Names that need torch, imported on first access (PEP 562): checking a spec does not.
_LAZY = {
    "CompositeLoss": "composite",
    "LossOutput": "composite",
    "build_loss": "composite",
    "answer_cross_entropy": "answer_ce",
    "cross_entropy": "ce",
    "dft_loss": "dft",
    "focal_loss": "focal",
    "generalized_dice_loss": "dice",
    "lovasz_softmax_loss": "lovasz",
    "poly1_loss": "poly1",
    "prob_power_loss": "prob_power",
    "self_adjusting_dice_loss": "sadl",
    "tversky_loss": "tversky",
}

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())


__all__ = [
    "CE_SCOPES",
    "LOSSES",
    "CompositeLoss",
    "LossInfo",
    "LossOutput",
    "LossParams",
    "answer_cross_entropy",
    "build_loss",
    "cross_entropy",
    "dft_loss",
    "focal_loss",
    "generalized_dice_loss",
    "lovasz_softmax_loss",
    "loss_family",
    "normalize_spec",
    "poly1_loss",
    "prob_power_loss",
    "self_adjusting_dice_loss",
    "tversky_loss",
]
