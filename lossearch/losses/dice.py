"""Generalized Dice loss for tokens, pooled over the batch or per sequence.

Two variants: ``standard`` (the default, Sudre et al.'s loss) and ``paper``, a bug-for-bug
copy of the paper's code, kept only to reproduce its runs (see
:func:`paper_generalized_dice_from_log_probs`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lossearch.losses import _functional as F

VARIANTS = ("standard", "paper")

PAPER_EPS = 1e-10
"""The paper's code weights class ``c`` by ``1 / (G_c + PAPER_EPS)^2``, absent classes too."""


def generalized_dice_from_log_probs(
    log_probs: Tensor,
    target: Tensor,
    classes: str = "present",
    smooth: float = 1e-5,
    batch: bool = True,
    seq_ids: Tensor | None = None,
    variant: str = "standard",
) -> Tensor:
    """Generalized Dice from precomputed log-probs of the kept tokens.

    ``seq_ids [N]`` (the sequence each kept token comes from) is required when
    ``batch=False``; see :func:`generalized_dice_loss` for everything else.
    """
    F.check_classes(classes)
    check_variant(variant)
    n, v = log_probs.shape
    if n == 0:
        return F.zero_loss(log_probs)
    seq_ids, b = _sequences(target, batch, seq_ids)
    if variant == "paper":
        return paper_generalized_dice_from_log_probs(log_probs, target, seq_ids, b, smooth)
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


def check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be 'standard' or 'paper', got {variant!r}")


def _sequences(target: Tensor, batch: bool, seq_ids: Tensor | None) -> tuple[Tensor, int]:
    """``(seq_ids [N] in 0..b-1, b)``: one group for ``batch=True``, else one per sequence
    that has kept tokens."""
    if batch:
        return torch.zeros_like(target), 1
    if seq_ids is None:
        raise ValueError("batch=False needs the sequence index of every token (seq_ids)")
    seqs, seq_ids = torch.unique(seq_ids, return_inverse=True)
    return seq_ids, seqs.numel()


def paper_generalized_dice_from_log_probs(
    log_probs: Tensor, target: Tensor, seq_ids: Tensor, b: int, smooth: float = 1e-5
) -> Tensor:
    """The paper's Generalized Dice, **bug for bug**: do not use it to train.

    What the paper's code (``GDiceLoss`` in DarthReca/segmentation-losses-nlp,
    ``loss/dice_loss.py``) computes, per group ``s`` of tokens (a sequence, or the batch),
    with ``G_sc`` the count of class ``c`` in the group and ``P_sc = sum_n p_nc``::

        w_sc = 1 / (G_sc + 1e-10)^2                  for EVERY vocabulary entry c
        loss = mean_s  -2 (sum_c w_sc I_sc + smooth) / (sum_c w_sc (P_sc + G_sc) + smooth)

    The bug: a token absent from the group gets the weight ``1e20``, so the denominator is
    ``~1e20 x`` the probability mass on absent tokens and the loss is ``~-1e-20`` with a
    gradient ``~1e-22``: a numerical no-op. Runs of the paper's "0.6 CE + 0.4 GDice" trained
    on ``0.6 CE`` alone. (The loss is negative, without the ``1 -`` of the standard form.)

    Differences that remain: the paper's code kept ignored positions before each sequence's
    answer as class 0 with zeroed logits (a uniform softmax row); here they are dropped, as
    for every lossearch loss. Computed in float32 (float64 kept); the paper's weights are
    float32.

    Args:
        log_probs: ``[N, V]`` log-probabilities of the kept tokens.
        target: ``[N]`` class indices.
        seq_ids: ``[N]`` group of each token, ``0 .. b-1``.
        b: number of groups.
        smooth: added to the numerator sum and the denominator, as in the paper's code.
    """
    v = log_probs.shape[1]
    probs = log_probs.exp()
    # G_sc and P_sc dense over the whole vocabulary: [b, V] (the paper's einsums)
    g = probs.new_zeros(b, v).index_put((seq_ids, target), probs.new_ones(()), accumulate=True)
    p_sum = probs.new_zeros(b, v).index_add(0, seq_ids, probs)
    p_t = probs.gather(1, target.unsqueeze(1)).squeeze(1)
    inter = probs.new_zeros(b, v).index_put((seq_ids, target), p_t, accumulate=True)
    w = (g + PAPER_EPS).square().reciprocal()
    numer = (w * inter).sum(1) + smooth
    denom = (w * (p_sum + g)).sum(1) + smooth
    return (-2.0 * numer / denom).mean()


def generalized_dice_loss(
    logits: Tensor,
    target: Tensor,
    classes: str = "present",
    smooth: float = 1e-5,
    batch: bool = True,
    ignore_index: int = -100,
    variant: str = "standard",
) -> Tensor:
    """Generalized Dice loss over the vocabulary, with softmax probabilities.

    With ``G_c`` the number of tokens of class ``c``, ``w_c = 1 / G_c^2``,
    ``I_c = sum_n p_nc 1[t_n = c]`` and ``U_c = sum_n p_nc + G_c``::

        loss = 1 - (2 sum_c w_c I_c + smooth) / (sum_c w_c U_c + smooth)

    Pooling. ``batch=True`` (default) pools the sums over all tokens of the batch: one
    Dice score, class weights from the batch's class counts. ``batch=False`` needs
    ``[B, L, V]`` logits and ``[B, L]`` targets and computes one score per sequence, with
    weights from that sequence's counts, then averages over the sequences that have at
    least one non-ignored token; that is how the paper's code pooled.

    Variant. ``"standard"`` (default) is the loss above. ``"paper"`` is the paper's code
    bug for bug (:func:`paper_generalized_dice_from_log_probs`): every vocabulary entry
    weighted by ``1 / (G_c + 1e-10)^2``, so an absent token weighs 1e20, the loss is
    ``~-1e-20`` and its gradient ``~1e-22``, whatever the model predicts. It exists to
    reproduce the paper's runs (which therefore trained on their CE term alone); ``classes``
    does not apply to it (always the whole vocabulary). The paper's intended loss with the
    paper's pooling is ``batch=False`` with the standard variant.

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
        variant: ``"standard"`` (default) or ``"paper"`` (the paper's code, bug for bug:
            a numerical no-op, see above).

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
    check_variant(variant)
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
        log_probs,
        target,
        classes=classes,
        smooth=smooth,
        batch=batch,
        seq_ids=seq_ids,
        variant=variant,
    )
