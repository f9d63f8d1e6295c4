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

from lossearch.losses.answer_ce import answer_cross_entropy
from lossearch.losses.composite import CompositeLoss, LossOutput, build_loss
from lossearch.losses.cross_entropy import cross_entropy
from lossearch.losses.dft import dft_loss
from lossearch.losses.dice import generalized_dice_loss
from lossearch.losses.focal import focal_loss
from lossearch.losses.lovasz import lovasz_softmax_loss
from lossearch.losses.params import LossParams
from lossearch.losses.poly1 import poly1_loss
from lossearch.losses.prob_power import prob_power_loss
from lossearch.losses.registry import (
    CE_SCOPES,
    LOSSES,
    LossInfo,
    loss_family,
    normalize_spec,
)
from lossearch.losses.sadl import self_adjusting_dice_loss
from lossearch.losses.tversky import tversky_loss

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
