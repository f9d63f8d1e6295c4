"""The probability-power family ``(1 - p_t^alpha) / alpha`` of "Beyond Log Likelihood"."""

from __future__ import annotations

import torch
from torch import Tensor

from lossearch.losses import _functional as F


def check_alpha(alpha: float) -> None:
    """Raise ``ValueError`` unless ``alpha > 0``."""
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")


def prob_power_from_log_probs(log_probs: Tensor, target: Tensor, alpha: float = 1.0) -> Tensor:
    """Mean of ``(1 - p_t^alpha) / alpha`` over the kept tokens; see :func:`prob_power_loss`."""
    if target.numel() == 0:
        return F.zero_loss(log_probs)
    log_p_t = F.target_log_probs(log_probs, target)
    # 1 - p^a = -expm1(a log p): no cancellation for small a, exact CE in the limit a -> 0
    return (-torch.expm1(alpha * log_p_t) / alpha).mean()


def prob_power_loss(
    logits: Tensor, target: Tensor, alpha: float = 1.0, ignore_index: int = -100
) -> Tensor:
    """Probability-power loss: the mean over non-ignored tokens of ``(1 - p_t^alpha) / alpha``.

    ``p_t = softmax(logits)[t]`` is the probability of the target token. The family
    interpolates between CE and the probability itself:

    - ``alpha -> 0``: ``-log p_t``, token cross-entropy (value and gradient);
    - ``alpha = 1``: ``1 - p_t`` (the paper's ``-p`` objective, shifted by the constant 1);
    - ``alpha = 10``: ``(1 - p_t^10) / 10`` (the paper's ``-p^10``, scaled and shifted).

    Its gradient is ``p_t^alpha`` times CE's, ``d/dz = p_t^alpha (p - onehot(t))``: larger
    ``alpha`` down-weights tokens the model finds unlikely ("prior-leaning"), as
    :func:`~lossearch.losses.dft_loss` does at ``alpha = 1``.

    Args:
        logits: unnormalised scores, any float dtype (computed in float32; float64 kept).
        target: class index per token; tokens equal to ``ignore_index`` are dropped.
        alpha: exponent, ``> 0``. Default 1.0 (the ``1 - p`` loss).
        ignore_index: target value of tokens that do not count. Default -100.

    Shape:
        - logits: ``[N, V]``
        - target: ``[N]``
        - output: scalar, in ``[0, 1/alpha]``; 0 (with zero gradient) when every token is
          ignored.

    Reference:
        Li, Qiu, Chen, Ji, Tong. "Beyond Log Likelihood: Probability-Based Objectives for
        Supervised Fine-Tuning across the Model Capability Continuum", 2025.
        https://arxiv.org/abs/2510.00526 (``f_alpha(p) = (1 - p^alpha) / alpha``). The
        paper's thresholded variants are not implemented; see ``docs/losses.md``.
    """
    check_alpha(alpha)
    log_probs, target = F.prepare(logits, target, ignore_index)
    return prob_power_from_log_probs(log_probs, target, alpha=alpha)
