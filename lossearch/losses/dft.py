"""Dynamic Fine-Tuning (DFT): token cross-entropy scaled by the detached target probability."""

from __future__ import annotations

from torch import Tensor

from lossearch.losses import _functional as F


def dft_from_log_probs(log_probs: Tensor, target: Tensor) -> Tensor:
    """Mean of ``-sg(p_t) log p_t`` over the kept tokens; see :func:`dft_loss`."""
    if target.numel() == 0:
        return F.zero_loss(log_probs)
    log_p_t = F.target_log_probs(log_probs, target)
    return -(log_p_t.detach().exp() * log_p_t).mean()


def dft_loss(logits: Tensor, target: Tensor, ignore_index: int = -100) -> Tensor:
    """Dynamic Fine-Tuning loss: the mean over non-ignored tokens of ``-sg(p_t) log p_t``.

    ``p_t = softmax(logits)[t]`` is the probability of the target token and ``sg`` stops the
    gradient: each token's cross-entropy is weighted by how likely the model already finds
    it, so the gradient is ``p_t`` times CE's, ``d/dz = p_t (p - onehot(t))``. The value is
    ``-p_t log p_t``, in ``[0, 1/e]``; it is not the gradient's antiderivative (that would be
    ``1 - p_t``, :mod:`~lossearch.losses.prob_power` at ``alpha = 1``, whose gradient is
    the same ``p_t`` times CE's: the two train identically, and only the logged values
    differ).

    The mean divides by the number of kept tokens, as TRL's ``SFTTrainer(loss_type="dft")``
    does without gradient accumulation (TRL divides by ``num_items_in_batch`` when it is
    given, the kept tokens of the whole accumulated batch).

    Args:
        logits: unnormalised scores, any float dtype (computed in float32; float64 kept).
        target: class index per token; tokens equal to ``ignore_index`` are dropped.
        ignore_index: target value of tokens that do not count. Default -100.

    Shape:
        - logits: ``[N, V]``
        - target: ``[N]``
        - output: scalar; 0 (with zero gradient) when every token is ignored.

    Reference:
        Wu et al. "On the Generalization of SFT: A Reinforcement Learning Perspective with
        Reward Rectification", 2025.
        https://arxiv.org/abs/2508.05629
    """
    log_probs, target = F.prepare(logits, target, ignore_index)
    return dft_from_log_probs(log_probs, target)
