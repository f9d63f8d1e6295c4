"""run_search's argument checks, overrides and metadata, up to where Ray would start.

Ray never starts here: ``_local_ray`` and ``_build_tuner`` are replaced, the first by a
function that fails the test, the second by one that records what the tuner would get.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from lossearch.errors import LossearchError
from lossearch.search import driver
from lossearch.search.space import trial_to_config

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "search_spaces" / "quick.yaml"


class _Tuner:
    def fit(self) -> None:
        return None


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Stops run_search where Ray would start; returns what the tuner would have got."""
    seen: dict[str, Any] = {}

    def build(sp: Any, meta: dict[str, Any], *args: Any) -> _Tuner:
        seen.update(sp=sp, meta=meta)
        return _Tuner()

    monkeypatch.setattr(driver, "_local_ray", lambda address, warm: None)
    monkeypatch.setattr(driver, "_build_tuner", build)
    return seen


@pytest.fixture
def before_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """For calls that must fail before anything is written or started."""

    def fail(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("run_search got past its checks")

    monkeypatch.setattr(driver, "_local_ray", fail)
    monkeypatch.setattr(driver, "_build_tuner", fail)
    monkeypatch.setattr(driver, "write_meta", fail)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_samples": 0}, "--num-samples must be at least 1"),
        ({"num_samples": -3}, "--num-samples must be at least 1"),
        ({"seeds": 0}, "--seeds must be at least 1"),
        ({"seeds": -1}, "--seeds must be at least 1"),
        ({"max_concurrent": 0}, "--max-concurrent must be at least 1"),
        ({"grace_period": 0}, "--grace-period must be at least 1"),
        ({"reduction_factor": 0}, "--reduction-factor must be greater than 1"),
        ({"reduction_factor": 1}, "--reduction-factor must be greater than 1"),
        ({"per_family": 0}, "--per-family must be at least 1"),
        ({"num_samples": 6}, r"--num-samples 6 does not match per_family 2 x 4 families = 8"),
        ({"per_family": 3, "num_samples": 8}, r"--num-samples 8 does not match per_family 3"),
        ({"metric": ""}, "--metric '' is not reported"),
        ({"metric": "seed0/exact_match"}, "--metric 'seed0/exact_match' is not reported: "
         "trials of task arith report exact_match, formula_precision"),
        ({"name": "a/b"}, r"--name must be a folder name \(no '/'\), got 'a/b'"),
        ({"mode": "sideways"}, "mode must be 'max' or 'min', got 'sideways'"),
    ],
)
def test_bad_counts_are_errors_before_ray(
    kwargs: dict[str, Any], message: str, before_ray: None, tmp_path: Path
) -> None:
    with pytest.raises(LossearchError, match=f"^{message}") as info:
        driver.run_search(QUICK, storage=str(tmp_path), **{"name": "e", **kwargs})
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_override_of_a_searched_key_is_announced_and_fixed(
    no_ray: dict[str, Any], tmp_path: Path
) -> None:
    said: list[str] = []
    exp = driver.run_search(
        QUICK, storage=str(tmp_path), name="e", overrides=["optim.lr=1e-4", "optim.epochs=1"],
        announce=said.append,
    )
    assert said[0] == "optim.lr fixed at 0.0001 by the command line; removed from the search space"
    assert said[1] == f"experiment: {exp}"
    sp, meta = no_ray["sp"], no_ray["meta"]
    optim = meta["base_config"]["optim"]
    assert optim["lr"] == 1e-4 and optim["epochs"] == 1
    assert meta["lr_range"] == dict.fromkeys(sp.family_names, None)
    assert meta["overrides"] == ["optim.lr=1e-4", "optim.epochs=1"]
    study = optuna.create_study(direction="maximize", sampler=sp.make_sampler(0))
    for _ in range(4):
        trial = study.ask()
        flat = sp.define_by_run(trial)
        study.tell(trial, 0.1)
        assert trial_to_config(meta["base_config"], flat).optim.lr == 1e-4
    written = yaml.safe_load((Path(exp) / driver.SEARCH_FILE).read_text())
    assert written["overrides"] == meta["overrides"]


def test_metadata_records_budgets_and_lr_ranges(no_ray: dict[str, Any], tmp_path: Path) -> None:
    exp = driver.run_search(QUICK, storage=str(tmp_path), name="e")
    meta = yaml.safe_load((Path(exp) / driver.SEARCH_FILE).read_text())
    assert meta["per_family"] == 2 and meta["num_samples"] == 8
    assert meta["lr_range"] == {f: [3e-4, 3e-2] for f in ("ce", "answer_ce", "focal", "lovasz")}
    assert meta["asha"] == {"grace_period": 1, "reduction_factor": 2}
    assert meta["max_concurrent"] == 2 and meta["num_seeds"] == 1

    driver.run_search(QUICK, storage=str(tmp_path), name="f", per_family=3, num_samples=12,
                      seeds=2, grace_period=2, reduction_factor=3)
    meta = no_ray["meta"]
    assert meta["per_family"] == 3 and meta["num_samples"] == 12
    assert meta["seeds"] == [0, 1] and meta["asha"] == {"grace_period": 2, "reduction_factor": 3}


def test_per_family_searcher_gives_every_family_n(no_ray: dict[str, Any], tmp_path: Path) -> None:
    """The searcher the tuner gets (first points enqueued, as Ray does) keeps the budget."""
    space = yaml.safe_load(QUICK.read_text())
    space["search"].pop("per_family")
    space["search"]["num_samples"] = 5  # the file's count gives way to per_family
    driver.run_search(space, storage=str(tmp_path), name="e", per_family=3)
    meta = no_ray["meta"]
    assert meta["num_samples"] == 12
    searcher = driver._make_searcher(no_ray["sp"], meta)
    families = []
    for i in range(meta["num_samples"]):
        families.append(searcher.suggest(f"t{i}")["loss.family"])
        searcher.on_trial_complete(f"t{i}", {"exact_match": 0.1, "training_iteration": 1})
    assert families[:4] == ["ce", "answer_ce", "focal", "lovasz"]  # the first points
    assert sorted(families) == sorted(["ce", "answer_ce", "focal", "lovasz"] * 3)


def test_storage_with_a_tilde_is_the_home_directory(
    before_ray: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--storage=~/exps`` (a shell leaves that ``~`` as it is) is ``$HOME/exps``, not a
    folder named ``~`` in the working directory."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "home" / "exps" / "e").mkdir(parents=True)
    (tmp_path / "home" / "exps" / "e" / "lossearch_search.yaml").write_text("{}\n")
    home_exp = re.escape(str(tmp_path / "home" / "exps" / "e"))
    with pytest.raises(LossearchError, match=f"experiment already exists: {home_exp} "):
        driver.run_search(QUICK, storage="~/exps", name="e")
    assert not (tmp_path / "~").exists()


def test_a_loss_metric_without_a_mode_is_minimised() -> None:
    """``--metric loss.ce`` alone on quick.yaml (whose ``mode: max`` is for its exact_match)
    once maximised the loss: the worst trials won, while confirm, export and analyze
    minimised it."""
    from lossearch.search.driver import search_mode
    from lossearch.search.space import load_space

    settings = load_space(QUICK).settings
    assert (settings["metric"], settings["mode"]) == ("exact_match", "max")
    assert search_mode(None, settings, "loss.ce") == "min"
    assert search_mode(None, settings, "exact_match") == "max"
    assert search_mode("max", settings, "loss") == "max"  # --mode wins
    assert search_mode(None, {**settings, "mode": None}, "exact_match") == "max"
    assert search_mode(None, {"metric": "loss", "mode": "max"}, "loss") == "max"  # the space's


def test_search_settings_the_search_will_not_read_are_named() -> None:
    from lossearch.search.driver import unused_settings
    from lossearch.search.space import load_space

    raw = yaml.safe_load(QUICK.read_text())
    assert unused_settings(load_space(raw), "asha") == []  # quick.yaml: TPE and ASHA
    raw["search"].update(scheduler="fifo", grace_period=2, sampler="random")
    assert unused_settings(load_space(raw), "fifo", ["reduction_factor"]) == [
        "search.grace_period is ASHA's: ignored with scheduler fifo",
        "search.reduction_factor is ASHA's: ignored with scheduler fifo",
        "search.n_startup_trials is TPE's: ignored by the random sampler",
    ]


def test_the_seed_is_not_a_searched_parameter() -> None:
    """A sampled ``seed`` was accepted, and every trial trained under the base seeds."""
    from lossearch.search.space import load_space

    raw = yaml.safe_load(QUICK.read_text())
    raw["space"]["seed"] = {"choices": [0, 1]}
    with pytest.raises(LossearchError, match=r"space > seed: the seed is not searched"):
        load_space(raw)
