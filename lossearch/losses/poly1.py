"""Poly-1 loss: cross-entropy plus a first-order polynomial term."""

from __future__ import annotations

from torch import Tensor

from lossearch.losses import _functional as F


def poly1_from_log_probs(log_probs: Tensor, target: Tensor, epsilon: float = 1.0) -> Tensor:
    """Poly-1 from precomputed log-probs of the kept tokens; see :func:`poly1_loss`."""
    if target.numel() == 0:
        return F.zero_loss(log_probs)
    log_p_t = F.target_log_probs(log_probs, target)
    return (epsilon * F.one_minus_p(log_p_t) - log_p_t).mean()


def poly1_loss(
    logits: Tensor, target: Tensor, epsilon: float = 1.0, ignore_index: int = -100
) -> Tensor:
    """Poly-1 loss: the token mean of ``-log p_t + epsilon (1 - p_t)``.

    ``epsilon`` moves the weight of the first term of CE's polynomial expansion
    ``sum_j (1 - p_t)^j / j``; ``epsilon = 0`` is cross-entropy, ``epsilon = -1`` removes
    the first-order term.

    Args:
        logits: unnormalised scores, any float dtype (computed in float32; float64 kept).
        target: class index per token; tokens equal to ``ignore_index`` are dropped.
        epsilon: coefficient of ``(1 - p_t)``, ``>= -1`` (below -1 the loss is no longer
            decreasing in ``p_t``). Default 1.0.
        ignore_index: target value of tokens that do not count. Default -100.

    Shape:
        - logits: ``[N, V]``
        - target: ``[N]``
        - output: scalar; 0 when every token is ignored.

    Reference:
        Leng, Xu, Tan, Wang, Li, Cheng, Chen, Anguelov. "PolyLoss: A Polynomial Expansion
        Perspective of Classification Loss Functions", ICLR 2022.
        https://arxiv.org/abs/2204.12511
    """
    log_probs, target = F.prepare(logits, target, ignore_index)
    return poly1_from_log_probs(log_probs, target, epsilon=epsilon)
