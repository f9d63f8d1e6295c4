"""The composite training loss: a weighted sum of registered losses on one log-softmax."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor

from lossearch.losses import _functional
from lossearch.losses.registry import LOSSES, loss_family, normalize_spec

IGNORE_INDEX = -100


class LossOutput(NamedTuple):
    """``total``: the scalar to backpropagate. ``components``: each positively weighted
    component's unweighted value (detached, for logging), so that
    ``total == sum(weight[name] * components[name])``."""

    total: Tensor
    components: dict[str, Tensor]


class CompositeLoss(torch.nn.Module):
    """Weighted sum of losses for next-token prediction, built from a loss spec.

    ``forward(logits [B, L, V], labels [B, L], answer_mask [B, L]) -> LossOutput``.

    1. Shift: position ``i`` predicts ``labels[:, i + 1]``; the last position is dropped.
    2. Select tokens: *supervised* tokens have a label other than -100; *answer* tokens
       are supervised tokens with ``answer_mask == 1`` (after the same shift).
    3. One log-softmax (float32) over the selected rows, answer rows first, so the answer
       rows are a slice (a view) of the same tensor. This is the only ``[N, V]`` pass that
       all components share.
    4. CE (``"ce"``) uses every supervised row with ``ce_scope: sequence`` (the paper's
       choice) or the answer rows with ``ce_scope: answer``; every other component uses
       the answer rows (``answer_ce`` among them: CE on the answer rows whatever
       ``ce_scope`` says, so ``{ce: w, answer_ce: 1 - w}`` is
       ``w · CE(sequence) + (1 - w) · CE(answer)``; ``dft`` and ``prob_power`` too). Each
       loss is a mean over its rows. Components with weight 0 are not computed. CE's
       ``label_smoothing`` applies to ``ce`` only, not to ``answer_ce``.
    5. A component that reads each token's ``log p_t`` alone
       (:meth:`~lossearch.losses.registry.LossInfo.uses_target_only`: CE without label
       smoothing, focal, poly1, SADL, answer CE, DFT, prob-power) gets the ``[N, 1]``
       column of target log-probs, gathered once from the ``[N, V]`` ones (its targets: 0).
       The values and gradients are those of step 4, but the backward pass scatters into a
       ``[N, V]`` gradient once for all such components, where each gather of its own made
       one: CE mixed with any of them holds the memory of CE alone.

    A batch with no answer tokens gives 0 for the answer-only components (gradient 0).
    ``gdice`` with ``batch: false`` pools per sequence of the batch.

    Args:
        spec: a loss spec, raw or normalised (see :func:`~lossearch.losses.normalize_spec`).
    """

    def __init__(self, spec: Mapping[str, Any]) -> None:
        super().__init__()
        self.spec = normalize_spec(spec)
        self.ce_scope: str = self.spec["ce_scope"]
        self.family = loss_family(self.spec)
        self.weights = {
            k: v["weight"] for k, v in self.spec.items() if k != "ce_scope" and v["weight"] > 0
        }
        self._params = {
            k: {p: x for p, x in self.spec[k].items() if p != "weight"} for k in self.weights
        }
        self._target_only = {k: LOSSES[k].uses_target_only(self._params[k]) for k in self.weights}

    def extra_repr(self) -> str:
        return f"spec={self.spec}"

    def forward(self, logits: Tensor, labels: Tensor, answer_mask: Tensor) -> LossOutput:
        if logits.dim() != 3:
            raise ValueError(f"logits must be [B, L, V], got shape {tuple(logits.shape)}")
        b, length, v = logits.shape
        for name, t in (("labels", labels), ("answer_mask", answer_mask)):
            if t.shape != (b, length):
                raise ValueError(f"{name} must be [B, L] = [{b}, {length}], got {list(t.shape)}")
        targets = labels[:, 1:]
        supervised = targets != IGNORE_INDEX
        answer = supervised & answer_mask[:, 1:].bool()
        ce_on_sequence = "ce" in self.weights and self.ce_scope == "sequence"

        # positions (b, i) of the predicting logits, answer tokens first
        positions = [answer.nonzero()]
        if ce_on_sequence:
            positions.append((supervised & ~answer).nonzero())
        pos = torch.cat(positions)
        n_answer = positions[0].shape[0]
        rows = pos[:, 0] * length + pos[:, 1]
        target = targets[pos[:, 0], pos[:, 1]].long()
        log_probs = _functional.log_softmax(logits.reshape(b * length, v).index_select(0, rows))
        seq_ids = pos[:n_answer, 0]
        # step 5: each row's log p_t as an [N, 1] column, whose target is class 0
        column = _functional.target_log_probs(log_probs, target).unsqueeze(1)
        column_target = torch.zeros_like(target)

        total = log_probs.new_zeros(())
        values: dict[str, Tensor] = {}
        for name, weight in self.weights.items():
            n = log_probs.shape[0] if name == "ce" and ce_on_sequence else n_answer
            if self._target_only[name]:
                lp, t = column[:n], column_target[:n]
            else:
                lp, t = log_probs[:n], target[:n]
            extra = {"seq_ids": seq_ids} if LOSSES[name].per_sequence else {}
            value = LOSSES[name].from_log_probs(lp, t, **self._params[name], **extra)
            total = total + weight * value
            values[name] = value.detach()
        return LossOutput(total, values)


def build_loss(spec: Mapping[str, Any]) -> CompositeLoss:
    """Build the composite loss from a raw or normalised loss spec (see
    :class:`CompositeLoss`); raises ``LossearchError`` for an invalid spec."""
    return CompositeLoss(spec)
