"""Focal loss for tokens."""

from __future__ import annotations

from torch import Tensor

from lossearch.losses import _functional as F


def focal_from_log_probs(
    log_probs: Tensor, target: Tensor, gamma: float = 2.0, alpha: float | Tensor | None = None
) -> Tensor:
    """Focal loss from precomputed log-probs of the kept tokens; see :func:`focal_loss`."""
    if target.numel() == 0:
        return F.zero_loss(log_probs)
    log_pt = F.target_log_probs(log_probs, target)
    loss = -log_pt
    if gamma != 0:
        # floor: (1 - p)^gamma with gamma < 1 has an infinite slope at p = 1
        modulator = F.one_minus_p(log_pt, floor=F.tiny(log_pt.dtype)) ** gamma
        loss = modulator * loss
    if alpha is not None:
        if isinstance(alpha, Tensor):
            if alpha.dim() != 1 or alpha.shape[0] != log_probs.shape[1]:
                raise ValueError(
                    f"per-class alpha must be [V] with V = {log_probs.shape[1]}, "
                    f"got shape {tuple(alpha.shape)}"
                )
            loss = alpha.to(device=loss.device, dtype=loss.dtype)[target] * loss
        else:
            loss = float(alpha) * loss
    return loss.mean()


def focal_loss(
    logits: Tensor,
    target: Tensor,
    gamma: float = 2.0,
    alpha: float | Tensor | None = None,
    ignore_index: int = -100,
) -> Tensor:
    """Focal loss: the mean over non-ignored tokens of ``-alpha_t (1 - p_t)^gamma log p_t``.

    ``p_t`` is the softmax probability of the target token. With ``gamma=0`` and
    ``alpha=None`` this is exactly :func:`~lossearch.losses.cross_entropy`.

    Args:
        logits: unnormalised scores, any float dtype (computed in float32; float64 kept).
        target: class index per token; tokens equal to ``ignore_index`` are dropped.
        gamma: focusing parameter, ``>= 0``. Default 2.0.
        alpha: class balancing factor ``alpha_t``:

            - ``None`` (default): no balancing, ``alpha_t = 1``;
            - a float in ``[0, 1]``: the same factor for every token (a vocabulary has no
              single "positive" class, so the binary ``alpha`` / ``1 - alpha`` split of the
              paper does not apply; a scalar just scales the loss);
            - a tensor ``[V]``: ``alpha_t = alpha[target]``, a per-class weight.

            The mean divides by the number of tokens, not by the sum of ``alpha_t``.
        ignore_index: target value of tokens that do not count. Default -100.

    Shape:
        - logits: ``[N, V]``
        - target: ``[N]``
        - output: scalar; 0 when every token is ignored.

    Reference:
        Lin, Goyal, Girshick, He, Dollar. "Focal Loss for Dense Object Detection", ICCV 2017.
        https://arxiv.org/abs/1708.02002
    """
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    log_probs, target = F.prepare(logits, target, ignore_index)
    return focal_from_log_probs(log_probs, target, gamma=gamma, alpha=alpha)
