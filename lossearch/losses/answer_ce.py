"""Cross-entropy on the answer tokens only: the control for every CE-mixed family."""

from __future__ import annotations

from torch import Tensor

from lossearch.losses import _functional as F
from lossearch.losses.ce import cross_entropy_from_log_probs


def answer_ce_from_log_probs(log_probs: Tensor, target: Tensor) -> Tensor:
    """Mean of ``-log p_t`` over the rows given; see :func:`answer_cross_entropy`.

    :class:`~lossearch.losses.composite.CompositeLoss` passes the answer rows only, as it
    does to every component other than ``ce``.
    """
    return cross_entropy_from_log_probs(log_probs, target)


def answer_cross_entropy(logits: Tensor, target: Tensor, ignore_index: int = -100) -> Tensor:
    """Token cross-entropy ``-(1/|A|) sum_{i in A} log softmax(logits_i)[t_i]`` over the
    answer tokens ``A``.

    As a function it is :func:`~lossearch.losses.cross_entropy` over the tokens it is given
    (the caller drops prompt tokens with ``ignore_index``); what makes it a separate loss is
    where the composite applies it. In a loss spec, ``ce`` covers every supervised token
    (``ce_scope: sequence``) and ``answer_ce`` the answer tokens only, so
    ``{ce: w, answer_ce: 1 - w}`` trains

        ``w · CE(sequence) + (1 - w) · CE(answer)``,

    which re-weights the answer tokens without changing the shape of the loss: the exact
    control for a family X mixed as ``w · CE + (1 - w) · X(answer)``. ``w = 0`` is
    completion-only CE.

    Args:
        logits: unnormalised scores, any float dtype (computed in float32; float64 kept).
        target: class index per token; tokens equal to ``ignore_index`` are dropped.
        ignore_index: target value of tokens that do not count. Default -100.

    Shape:
        - logits: ``[N, V]``
        - target: ``[N]``
        - output: scalar; 0 (with zero gradient) when every token is ignored.
    """
    log_probs, target = F.prepare(logits, target, ignore_index)
    return answer_ce_from_log_probs(log_probs, target)
