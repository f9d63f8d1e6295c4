"""A trial's flat config (dotted keys -> values) and the training config it stands for.

A trial's Ray Tune config is flat: ``loss.family``, the derived component weights, the
parameters that apply to the family, ``seeds`` and, under a grid, ``grid_point`` (see
:mod:`lossearch.search.space`). :func:`trial_to_config` turns it into a
:class:`~lossearch.config.TrainConfig`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from lossearch.config import TrainConfig, apply_overrides, set_path, validate
from lossearch.errors import LossearchError
from lossearch.losses.registry import LOSSES

#: The registered loss families, in registry order (``lossearch.losses.LOSSES``).
LOSS_FAMILIES: tuple[str, ...] = tuple(LOSSES)
FAMILY_KEY = "loss.family"
CE_WEIGHT_KEY = "loss.ce.weight"
GRID_KEY = "grid_point"
SEEDS_KEY = "seeds"
#: Flat-config keys that are not training-config overrides.
RESERVED_KEYS: frozenset[str] = frozenset({FAMILY_KEY, GRID_KEY, SEEDS_KEY})


def flat_point(family: str, mix: float | None, values: Mapping[str, Any]) -> dict[str, Any]:
    """The flat config of ``family`` at CE mixing weight ``mix`` (None: none) with ``values``."""
    out: dict[str, Any] = {FAMILY_KEY: family}
    if family != "ce":
        if mix is not None:
            out[CE_WEIGHT_KEY] = mix
        out[f"loss.{family}.weight"] = 1.0 if mix is None else _complement(mix)
    out.update(values)
    return out


def _complement(w: float) -> float:
    return round(1.0 - float(w), 12)


def family_of(flat: Mapping[str, Any]) -> str:
    """The loss family of a trial's flat config (its ``"loss.family"``)."""
    family = flat.get(FAMILY_KEY)
    if not isinstance(family, str) or not family:
        raise LossearchError("trial config has no 'loss.family'")
    return family


def _is_component(name: str, value: Any) -> bool:
    return name in LOSS_FAMILIES or isinstance(value, Mapping)


def apply_flat(base_tree: Mapping[str, Any], flat: Mapping[str, Any]) -> dict[str, Any]:
    """The raw (unvalidated) training-config tree of a trial (see :func:`trial_to_config`)."""
    family = family_of(flat)
    if family not in LOSS_FAMILIES:
        raise LossearchError(
            f"trial config: unknown loss family '{family}' (known: {', '.join(LOSS_FAMILIES)})"
        )
    tree = copy.deepcopy(dict(base_tree))
    base_loss = tree["loss"] if isinstance(tree.get("loss"), Mapping) else {}
    loss = {k: v for k, v in base_loss.items() if not _is_component(k, v)}
    if family == "ce":
        weights = {"ce": flat.get(CE_WEIGHT_KEY, 1.0)}
    else:
        w = flat.get(CE_WEIGHT_KEY, 0.0) or 0.0
        weights = {"ce": w} if w else {}
        weights[family] = flat.get(f"loss.{family}.weight", _complement(w))
    for comp, weight in weights.items():
        entry = base_loss.get(comp)
        entry = dict(entry) if isinstance(entry, Mapping) else {}  # a number is its weight
        loss[comp] = {**entry, "weight": weight}
    rest = {}
    for key, value in flat.items():
        parts = key.split(".")
        if key in RESERVED_KEYS:
            continue
        if parts[0] != "loss" or len(parts) < 3 or parts[1] not in LOSS_FAMILIES:
            rest[key] = value
        elif parts[2:] != ["weight"] or parts[1] not in ("ce", family):  # weights: see above
            if parts[1] not in loss:
                raise LossearchError(
                    f"trial config key '{key}': '{parts[1]}' is not in this trial's loss "
                    f"(family {family})"
                )
            set_path(loss[parts[1]], parts[2:], copy.deepcopy(value))
    tree["loss"] = loss
    return apply_overrides(tree, rest)


def trial_to_config(base_tree: Mapping[str, Any], flat: Mapping[str, Any]) -> TrainConfig:
    """Apply a trial's flat config to the base training config; returns a ``TrainConfig``.

    The loss section is rebuilt from ``"loss.family"``: ``ce`` alone (weight 1), or CE with
    weight ``"loss.ce.weight"`` (dropped when absent or 0) plus the family with weight
    ``"loss.<family>.weight"`` (default ``1 - w``). Base loss components that were not chosen
    are dropped; the chosen ones keep their base parameters under the trial's values; loss
    settings such as ``ce_scope`` are kept. Every other dotted key is applied with
    :func:`~lossearch.config.apply_overrides`; ``"seeds"`` and ``"grid_point"`` are ignored.
    Raises :class:`~lossearch.errors.LossearchError` (invalid value, a parameter of a
    component that is not in the loss).
    """
    return validate(apply_flat(base_tree, flat))
