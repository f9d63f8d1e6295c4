"""search_spaces/frontier.yaml: loads, compiles, and every family's trials validate (no Ray)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch

from lossearch.losses import build_loss, normalize_spec
from lossearch.search.space import family_of, load_space, trial_to_config

FRONTIER = Path(__file__).resolve().parents[1] / "search_spaces" / "frontier.yaml"
FAMILIES = ("ce", "answer_ce", "focal", "lovasz", "dft", "prob_power")
# each family's own searched parameter (besides loss.ce.weight and optim.lr)
OWN_PARAM = {
    "ce": "loss.ce.label_smoothing",
    "focal": "loss.focal.gamma",
    "prob_power": "loss.prob_power.alpha",
}

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _trials(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """The first ``n`` flat trial configs, first points enqueued as the driver does."""
    sp = load_space(FRONTIER)
    study = optuna.create_study(direction="maximize", sampler=sp.make_sampler(seed))
    for point in sp.settings["first_points"]:
        study.enqueue_trial(point)
    flats = []
    for i in range(n):
        trial = study.ask()
        flat = sp.define_by_run(trial)
        assert {k: flat[k] for k in trial.params} == trial.params
        flats.append(flat)
        study.tell(trial, float(i % 3))
    return flats


def test_frontier_loads_and_compiles() -> None:
    sp = load_space(FRONTIER)
    assert sp.family_names == FAMILIES
    assert sp.sampler == "tpe" and sp.settings["per_family"] == 2
    assert sp.settings["num_samples"] == 2 * len(FAMILIES)
    assert sp.base["task"]["name"] == "arith" and sp.base["model"]["name_or_path"] == "tiny"
    assert sp.base["optim"]["epochs"] == 2 and sp.base["scaling"]["use_gpu"] is False
    assert sp.param_range("optim.lr") == dict.fromkeys(FAMILIES, [3e-4, 3e-2])
    assert sp.param_range("loss.ce.label_smoothing") == {
        f: ([0.0, 0.2] if f == "ce" else None) for f in FAMILIES
    }
    assert sp.param_range("loss.prob_power.alpha")["prob_power"] == [0.05, 1.0]
    assert sp.param_range("loss.focal.gamma")["focal"] == [0.5, 4.0]
    assert [p["loss.family"] for p in sp.settings["first_points"]] == list(FAMILIES)


def test_every_familys_trials_validate() -> None:
    flats = _trials(2 * len(FAMILIES))
    assert Counter(family_of(f) for f in flats) == dict.fromkeys(FAMILIES, 2)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 8, 16, generator=g)
    labels = torch.randint(0, 16, (2, 8), generator=g)
    answer = torch.zeros_like(labels)
    answer[:, 4:] = 1
    sp = load_space(FRONTIER)
    for flat in flats:
        fam = family_of(flat)
        cfg = trial_to_config(sp.base, flat)
        assert cfg.loss == normalize_spec(cfg.loss)
        own = OWN_PARAM.get(fam)
        if own is not None:
            assert own in flat
            assert cfg.loss[fam][own.rsplit(".", 1)[1]] == flat[own]
        if fam != "ce":
            assert "loss.ce.label_smoothing" not in flat  # smoothing is the CE family's
            assert cfg.loss[fam]["weight"] == pytest.approx(1 - flat["loss.ce.weight"])
        out = build_loss(cfg.loss)(logits, labels, answer)
        assert torch.isfinite(out.total)
        assert 3e-4 <= flat["optim.lr"] <= 3e-2


def test_first_points_are_the_reference_settings() -> None:
    first = {family_of(f): f for f in _trials(len(FAMILIES))}
    assert first["ce"]["loss.ce.label_smoothing"] == 0.0
    assert first["dft"]["loss.ce.weight"] == 0.0 and first["dft"]["loss.dft.weight"] == 1.0
    assert first["prob_power"]["loss.prob_power.alpha"] == 1.0
    assert first["focal"]["loss.ce.weight"] == 0.6
