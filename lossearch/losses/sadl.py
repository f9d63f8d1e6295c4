"""Self-adjusting Dice loss (DSC loss) for tokens."""

from __future__ import annotations

from torch import Tensor

from lossearch.losses import _functional as F


def self_adjusting_dice_from_log_probs(
    log_probs: Tensor, target: Tensor, alpha: float = 1.0, gamma: float = 1.0
) -> Tensor:
    """Self-adjusting Dice from precomputed log-probs of the kept tokens; see
    :func:`self_adjusting_dice_loss`."""
    if target.numel() == 0:
        return F.zero_loss(log_probs)
    log_p_t = F.target_log_probs(log_probs, target)
    q = log_p_t.exp()
    if alpha != 0:
        # floor: (1 - p)^alpha with alpha < 1 has an infinite slope at p = 1
        q = F.one_minus_p(log_p_t, floor=F.tiny(q.dtype)) ** alpha * q
    return (1.0 - (2.0 * q + gamma) / (q + 1.0 + gamma)).mean()


def self_adjusting_dice_loss(
    logits: Tensor,
    target: Tensor,
    alpha: float = 1.0,
    gamma: float = 1.0,
    ignore_index: int = -100,
) -> Tensor:
    """Self-adjusting Dice loss: the token mean of ``1 - (2 q + gamma) / (q + 1 + gamma)``.

    ``q = (1 - p_t)^alpha p_t``, with ``p_t`` the softmax probability of the target token:
    the ``(1 - p_t)^alpha`` factor down-weights easy (confident) tokens as the focal loss
    does, and ``gamma`` smooths the Dice ratio.

    Args:
        logits: unnormalised scores, any float dtype (computed in float32; float64 kept).
        target: class index per token; tokens equal to ``ignore_index`` are dropped.
        alpha: decay exponent of the self-adjusting factor, ``>= 0`` (0 gives the plain
            token Dice loss). Default 1.0.
        gamma: smoothing added to numerator and denominator, ``>= 0``. Default 1.0.
        ignore_index: target value of tokens that do not count. Default -100.

    Shape:
        - logits: ``[N, V]``
        - target: ``[N]``
        - output: scalar; 0 when every token is ignored.

    Reference:
        Li, Sun, Meng, Liang, Wu, Li. "Dice Loss for Data-imbalanced NLP Tasks", ACL 2020.
        https://arxiv.org/abs/1911.02855
    """
    log_probs, target = F.prepare(logits, target, ignore_index)
    return self_adjusting_dice_from_log_probs(log_probs, target, alpha=alpha, gamma=gamma)
