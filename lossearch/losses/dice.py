"""Generalized Dice loss for tokens, pooled over the batch or per sequence."""

from __future__ import annotations

import torch
from torch import Tensor

from lossearch.losses import _functional as F


def generalized_dice_from_log_probs(
    log_probs: Tensor,
    target: Tensor,
    classes: str = "present",
    smooth: float = 1e-5,
    batch: bool = True,
    seq_ids: Tensor | None = None,
) -> Tensor:
    """Generalized Dice from precomputed log-probs of the kept tokens.

    ``seq_ids [N]`` (the sequence each kept token comes from) is required when
    ``batch=False``; see :func:`generalized_dice_loss` for everything else.
    """
    F.check_classes(classes)
    n, v = log_probs.shape
    if n == 0:
        return F.zero_loss(log_probs)
    if batch:
        seq_ids, b = torch.zeros_like(target), 1
    elif seq_ids is None:
        raise ValueError("batch=False needs the sequence index of every token (seq_ids)")
    else:
        seqs, seq_ids = torch.unique(seq_ids, return_inverse=True)  # sequences with tokens
        b = seqs.numel()
    dtype = log_probs.dtype
    # the (sequence, class) pairs that occur: one Dice term each
    pairs, pair_of_token, g = torch.unique(
        seq_ids * v + target, return_inverse=True, return_counts=True
    )
    pair_seq, pair_class = pairs // v, pairs % v
    g = g.to(dtype)
    w = g.square().reciprocal()  # w_c = 1 / G_c^2
    if classes == "present":
        # only the columns of the classes present somewhere in the batch: [N, C]
        present, column = torch.unique(target, return_inverse=True)
        probs = log_probs.index_select(1, present).exp()
        p_t = probs.gather(1, column.unsqueeze(1)).squeeze(1)
        pair_column = torch.searchsorted(present, pair_class)
        if b == 1:
            psum = probs.sum(0)[pair_column]
        else:
            psum = probs.new_zeros(b, present.numel()).index_add(0, seq_ids, probs)
            psum = psum[pair_seq, pair_column]
    else:
        # every column: one exp pass over [N, V]
        probs = log_probs.exp()
        p_t = probs.gather(1, target.unsqueeze(1)).squeeze(1)
        col = (
            probs.sum(0, keepdim=True)
            if b == 1
            else probs.new_zeros(b, v).index_add(0, seq_ids, probs)
        )
        psum = col[pair_seq, pair_class]
    inter = F.class_sums(p_t, pair_of_token, pairs.numel())  # I_c = sum p_c 1[t = c]
    numer = 2.0 * F.class_sums(w * inter, pair_seq, b) + smooth
    denom = F.class_sums(w * (psum + g), pair_seq, b) + smooth  # U_c = sum p_c + G_c
    if classes == "all":
        # absent classes: I_c = G_c = 0, weight = the largest present weight (MONAI's rule)
        w_max = w.new_zeros(b).scatter_reduce(0, pair_seq, w, reduce="amax", include_self=False)
        absent = col.index_put((pair_seq, pair_class), col.new_zeros(())).sum(1)
        denom = denom + w_max * absent
    return (1.0 - numer / denom).mean()


def generalized_dice_loss(
    logits: Tensor,
    target: Tensor,
    classes: str = "present",
    smooth: float = 1e-5,
    batch: bool = True,
    ignore_index: int = -100,
) -> Tensor:
    """Generalized Dice loss over the vocabulary, with softmax probabilities.

    With ``G_c`` the number of tokens of class ``c``, ``w_c = 1 / G_c^2``,
    ``I_c = sum_n p_nc 1[t_n = c]`` and ``U_c = sum_n p_nc + G_c``::

        loss = 1 - (2 sum_c w_c I_c + smooth) / (sum_c w_c U_c + smooth)

    Pooling. ``batch=True`` (default) pools the sums over all tokens of the batch: one
    Dice score, class weights from the batch's class counts. ``batch=False`` needs
    ``[B, L, V]`` logits and ``[B, L]`` targets and computes one score per sequence, with
    weights from that sequence's counts, then averages over the sequences that have at
    least one non-ignored token; that is how the paper's code pooled. The paper's code also
    weighted every vocabulary entry by ``1 / (G_c + 1e-10)^2``, so an absent token weighed
    ~1e20, the predicted mass of absent tokens swamped the denominator and the loss sat near
    1 whatever the present tokens got; that weighting is not offered. The closest
    well-defined variant is ``batch=False, classes="all"``.

    Cost. ``"present"``: per-class sums by ``index_add`` over the targets and a column sum
    of the ``[N, C]`` probabilities of the ``C`` present classes; no one-hot and no
    ``[N, V]`` temporary beyond the log-softmax. ``"all"``: one exp pass over ``[N, V]``
    (kept for the backward pass).

    Args:
        logits: unnormalised scores, any float dtype (computed in float32; float64 kept).
        target: class index per token; tokens equal to ``ignore_index`` are dropped.
        classes: ``"present"`` (default): the sums run over the classes present in the
            (kept) targets of the batch, or of the sequence with ``batch=False``. ``"all"``:
            over all ``V`` classes; an absent class has ``G_c = 0`` and gets the largest
            present weight, as MONAI's ``GeneralizedDiceLoss(softmax=True,
            w_type="square", batch=True)`` does.
        smooth: ``>= 0``, added to numerator and denominator (MONAI's ``smooth_nr`` and
            ``smooth_dr``). Default 1e-5.
        batch: pool over the whole batch (True, default) or per sequence (False).
        ignore_index: target value of tokens that do not count. Default -100.

    Shape:
        - logits: ``[N, V]`` or ``[B, L, V]`` (``[B, L, V]`` required with ``batch=False``)
        - target: ``[N]`` or ``[B, L]``
        - output: scalar; 0 when every token is ignored.

    Reference:
        Sudre, Li, Vercauteren, Ourselin, Cardoso. "Generalised Dice overlap as a deep
        learning loss function for highly unbalanced segmentations", DLMIA 2017.
        https://arxiv.org/abs/1707.03237
    """
    F.check_classes(classes)
    seq_ids = None
    if logits.dim() == 3:
        if target.shape != logits.shape[:2]:
            raise ValueError(
                f"target must be [B, L] = {list(logits.shape[:2])}, got {list(target.shape)}"
            )
        seq_ids = torch.arange(logits.shape[0], device=target.device).repeat_interleave(
            logits.shape[1]
        )
        logits, target = logits.reshape(-1, logits.shape[-1]), target.reshape(-1)
    elif not batch:
        raise ValueError("batch=False needs [B, L, V] logits and [B, L] targets")
    F.check_inputs(logits, target)
    if seq_ids is not None:
        seq_ids = seq_ids[target != ignore_index]
    log_probs, target = F.prepare(logits, target, ignore_index)
    return generalized_dice_from_log_probs(
        log_probs, target, classes=classes, smooth=smooth, batch=batch, seq_ids=seq_ids
    )
