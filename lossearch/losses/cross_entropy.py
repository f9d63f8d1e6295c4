"""Token cross-entropy."""

from __future__ import annotations

from torch import Tensor

from lossearch.losses import _functional as F


def cross_entropy_from_log_probs(log_probs: Tensor, target: Tensor) -> Tensor:
    """Mean of ``-log p_t`` over the kept tokens; see :func:`cross_entropy`."""
    if target.numel() == 0:
        return F.zero_loss(log_probs)
    return -F.target_log_probs(log_probs, target).mean()


def cross_entropy(logits: Tensor, target: Tensor, ignore_index: int = -100) -> Tensor:
    """Token cross-entropy, the mean of ``-log softmax(logits)[t]`` over non-ignored tokens.

    Args:
        logits: unnormalised scores, any float dtype (computed in float32; float64 kept).
        target: class index per token; tokens equal to ``ignore_index`` are dropped.
        ignore_index: target value of tokens that do not count. Default -100.

    Shape:
        - logits: ``[N, V]``
        - target: ``[N]``
        - output: scalar (float32, or float64 for float64 logits); 0 when every token
          is ignored.

    Reference:
        Equal to ``torch.nn.functional.cross_entropy(logits, target, ignore_index=...)``.
    """
    log_probs, target = F.prepare(logits, target, ignore_index)
    return cross_entropy_from_log_probs(log_probs, target)
