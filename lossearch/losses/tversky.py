"""Tversky loss for tokens, pooled over the batch."""

from __future__ import annotations

from torch import Tensor

from lossearch.losses import _functional as F


def tversky_from_log_probs(
    log_probs: Tensor,
    target: Tensor,
    alpha: float = 0.5,
    beta: float = 0.5,
    classes: str = "present",
    smooth: float = 1e-5,
) -> Tensor:
    """Tversky loss from precomputed log-probs of the kept tokens; see :func:`tversky_loss`."""
    F.check_classes(classes)
    n, v = log_probs.shape
    if n == 0:
        return F.zero_loss(log_probs)
    present, inverse, g = F.present_classes(target)
    c = present.numel()
    if classes == "present":
        selected = log_probs.index_select(1, present)  # [N, C]
        log_p_t = selected.gather(1, inverse.unsqueeze(1)).squeeze(1)
        psum = selected.exp().sum(0)
    else:
        log_p_t = F.target_log_probs(log_probs, target)
        col = log_probs.exp().sum(0)  # sum_n p_nc for every class: one exp pass over [N, V]
        psum = col[present]
    inter = F.class_sums(log_p_t.exp(), inverse, c)  # I_c = sum p_c 1[t = c]
    fn = F.class_sums(F.one_minus_p(log_p_t), inverse, c)  # sum (1 - p_c) 1[t = c]
    fp = (psum - inter).clamp_min(0.0)  # sum p_c 1[t != c]
    denom = (inter + alpha * fp + beta * fn + smooth).clamp_min(F.tiny(inter.dtype))
    total = (1.0 - (inter + smooth) / denom).sum()
    if classes == "present":
        return total / c
    # absent classes: I_c = FN_c = 0, FP_c = sum_n p_nc, so 1 - TI_c = a FP / (a FP + smooth)
    a_fp = alpha * col
    absent = (a_fp / (a_fp + smooth).clamp_min(F.tiny(col.dtype))).index_fill(0, present, 0.0)
    return (total + absent.sum()) / v


def tversky_loss(
    logits: Tensor,
    target: Tensor,
    alpha: float = 0.5,
    beta: float = 0.5,
    classes: str = "present",
    smooth: float = 1e-5,
    ignore_index: int = -100,
) -> Tensor:
    """Tversky loss over the vocabulary, tokens pooled over the batch.

    Per class ``c``, with ``I_c = sum_n p_nc 1[t_n = c]``, ``FP_c = sum_n p_nc 1[t_n != c]``
    and ``FN_c = sum_n (1 - p_nc) 1[t_n = c]``::

        TI_c = (I_c + smooth) / (I_c + alpha FP_c + beta FN_c + smooth)
        loss = mean over classes of (1 - TI_c)

    ``alpha = beta = 0.5`` is the soft Dice loss per class; ``beta > alpha`` weighs false
    negatives (missed target tokens) more.

    Cost. ``"present"``: per-class sums by ``index_add`` over the targets and a column sum
    of the ``[N, C]`` probabilities of the present classes; no one-hot, no class loop.
    ``"all"``: one exp pass over ``[N, V]`` for the column sums of every class.

    Args:
        logits: unnormalised scores, any float dtype (computed in float32; float64 kept).
        target: class index per token; tokens equal to ``ignore_index`` are dropped.
        alpha: weight of false positives, in ``[0, 1]``. Default 0.5.
        beta: weight of false negatives, in ``[0, 1]``. Default 0.5.
        classes: ``"present"`` (default) averages over the classes present in the kept
            targets; ``"all"`` over all ``V`` classes (an absent class contributes
            ``alpha FP_c / (alpha FP_c + smooth)``, close to 1 unless it gets no mass).
        smooth: ``>= 0``, added to numerator and denominator. Default 1e-5.
        ignore_index: target value of tokens that do not count. Default -100.

    Shape:
        - logits: ``[N, V]``
        - target: ``[N]``
        - output: scalar; 0 when every token is ignored.

    Reference:
        Salehi, Erdogmus, Gholipour. "Tversky loss function for image segmentation using 3D
        fully convolutional deep networks", MLMI 2017. https://arxiv.org/abs/1706.05721
    """
    F.check_classes(classes)
    log_probs, target = F.prepare(logits, target, ignore_index)
    return tversky_from_log_probs(
        log_probs, target, alpha=alpha, beta=beta, classes=classes, smooth=smooth
    )
