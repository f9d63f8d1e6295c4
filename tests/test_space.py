"""The search-space compiler: YAML -> Optuna define-by-run function, samplers, trial configs."""

from __future__ import annotations

import copy
import math
import pickle
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from lossearch.config import TrainConfig
from lossearch.errors import LossearchError
from lossearch.search import space as space_mod
from lossearch.search.space import (
    GridPointSampler,
    SearchSpace,
    family_of,
    load_space,
    trial_to_config,
)

ROOT = Path(__file__).resolve().parents[1]
SPACES = ROOT / "search_spaces"

optuna.logging.set_verbosity(optuna.logging.WARNING)

# What each family carries besides loss.family / weights, in the shipped quick.yaml.
QUICK_FAMILY_PARAMS = {
    "ce": set(),
    "answer_ce": set(),
    "focal": {"loss.focal.gamma"},
    "lovasz": set(),
}


def _paper_grid() -> dict[str, Any]:
    """The paper's table as a grid (paper.yaml before it had fair budgets): 9 points."""
    raw = space_mod.read_yaml(SPACES / "paper.yaml")
    raw["search"] = {"sampler": "grid", "seed": 0, "scheduler": "fifo"}
    del raw["space"]["optim.lr"]
    del raw["space"]["loss.family"]["choices"]["answer_ce"]
    return raw


def _run(sp: SearchSpace, n: int, seed: int = 0, tell: bool = True) -> list[dict[str, Any]]:
    """Ask ``n`` trials (as Ray's OptunaSearch does); returns the flat configs."""
    study = optuna.create_study(sampler=sp.make_sampler(seed), direction="maximize")
    flats = []
    trials = []
    for i in range(n):
        trial = study.ask()
        flat = sp.define_by_run(trial)
        # every suggested value is in the returned config, with the same value
        assert {k: flat[k] for k in trial.params} == trial.params
        flats.append(flat)
        trials.append(trial)
        if tell:
            study.tell(trial, float(i % 3))
    if not tell:
        for trial in trials:
            study.tell(trial, 1.0)
    return flats


def _minimal(**space: Any) -> dict[str, Any]:
    return {"space": {"loss.family": {"choices": ["ce", "focal"]}, **space}}


# --------------------------------------------------------------------------- shipped files


@pytest.mark.parametrize("name", ["quick", "paper", "gsm8k"])
def test_shipped_spaces_compile(name: str) -> None:
    sp = load_space(SPACES / f"{name}.yaml")
    assert sp.raw["space"]
    assert sp.settings["metric"] == "exact_match" and sp.settings["mode"] in (None, "max")
    assert "ce" in sp.family_names


def test_quick_is_the_cpu_demo() -> None:
    sp = load_space(SPACES / "quick.yaml")
    assert sp.base["task"]["name"] == "arith"
    assert sp.base["model"]["name_or_path"] == "tiny"
    assert sp.sampler == "tpe"
    assert sp.settings["num_samples"] == 8 and sp.settings["per_family"] == 2
    assert sp.family_names == ("ce", "answer_ce", "focal", "lovasz")
    assert sp.settings["first_points"][0]["loss.family"] == "ce"
    assert sp.param_range("optim.lr") == dict.fromkeys(sp.family_names, [3e-4, 3e-2])


def test_first_points_are_the_first_trials() -> None:
    import optuna

    sp = load_space(SPACES / "quick.yaml")
    study = optuna.create_study(direction="maximize", sampler=sp.make_sampler(0))
    for point in sp.settings["first_points"]:
        study.enqueue_trial(point)
    flats = []
    for _ in range(len(sp.settings["first_points"])):
        trial = study.ask()
        flats.append(sp.define_by_run(trial))
        study.tell(trial, 0.5)
    assert [f["loss.family"] for f in flats] == ["ce", "answer_ce", "focal", "lovasz"]
    assert flats[2]["loss.ce.weight"] == 0.6 and flats[2]["loss.focal.weight"] == 0.4
    assert flats[2]["loss.focal.gamma"] == 2.0 and "loss.ce.weight" not in flats[0]
    assert flats[1]["loss.answer_ce.weight"] == 0.4


def test_first_points_must_name_a_family() -> None:
    raw = {"space": {"loss.family": {"choices": ["ce", "focal"]}},
           "search": {"first_points": [{"optim.lr": 1e-3}]}}
    with pytest.raises(LossearchError, match="first_points"):
        load_space(raw)


def test_paper_has_the_papers_settings() -> None:
    sp = load_space(SPACES / "paper.yaml", ["model.name_or_path=/models/llama"])
    b = sp.base
    assert b["task"]["name"] == "gsm8k"
    assert b["model"]["name_or_path"] == "/models/llama"
    assert b["model"]["dtype"] == "float32" and b["optim"]["mixed_precision"] == "fp16"
    assert b["model"]["lora"] == {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": "paper"}
    o = b["optim"]
    assert (o["lr"], o["weight_decay"], o["warmup_steps"], o["epochs"], o["batch_size"]) == (
        1e-5,
        0.01,
        500,
        10,
        2,
    )
    assert sp.sampler == "tpe" and sp.settings["scheduler"] == "fifo"
    assert sp.settings["per_family"] == 4 and sp.settings["num_samples"] == 24
    assert "answer_ce" in sp.family_names and len(sp.family_names) == 6
    # the paper's table runs first, at the paper's learning rate
    table = {_as_row({"loss.ce.weight": 1.0, **p}) for p in sp.settings["first_points"]}
    assert table == _paper_table() | {("answer_ce", 0.0), ("answer_ce", 0.6)}
    assert {p["optim.lr"] for p in sp.settings["first_points"]} == {1e-5}


# --------------------------------------------------------------------------- conditional keys


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_conditional_parameters_appear_exactly_where_they_apply(sampler: str) -> None:
    raw = space_mod.read_yaml(SPACES / "quick.yaml")
    raw["search"]["sampler"] = sampler
    sp = load_space(raw)
    flats = _run(sp, 30)
    seen = set()
    for flat in flats:
        fam = family_of(flat)
        seen.add(fam)
        expected = {"loss.family", "optim.lr", "eval.max_new_tokens"} | QUICK_FAMILY_PARAMS[fam]
        if fam != "ce":
            expected |= {"loss.ce.weight", f"loss.{fam}.weight"}
            w = flat["loss.ce.weight"]
            assert 0.0 <= w <= 0.9
            assert flat[f"loss.{fam}.weight"] == pytest.approx(1 - w)
        assert set(flat) == expected, fam
        assert set(flat) == sp.keys_for(fam)
        assert 3e-4 <= flat["optim.lr"] <= 3e-2
        assert flat["eval.max_new_tokens"] == 24
        if fam == "focal":
            assert 0.5 <= flat["loss.focal.gamma"] <= 4.0
    assert len(seen) >= 4  # 30 trials visit most of the 7 families


def test_family_block_overrides_top_level_and_fixed_family() -> None:
    sp = load_space(
        {
            "space": {
                "loss.family": {
                    "choices": {
                        "ce": {"optim.lr": 0.01},  # fixed for ce only
                        "focal": {"loss.ce.weight": 0.5},
                        "tversky": None,
                    }
                },
                "loss.ce.weight": {"low": 0.1, "high": 0.2},
                "loss.tversky.alpha": 0.3,  # top-level family parameter: only under tversky
                "optim.lr": {"choices": [0.001, 0.002]},
            }
        }
    )
    for flat in _run(sp, 20):
        fam = flat["loss.family"]
        if fam == "ce":
            assert flat["optim.lr"] == 0.01 and "loss.ce.weight" not in flat
        elif fam == "focal":
            assert flat["loss.ce.weight"] == 0.5 and flat["optim.lr"] in (0.001, 0.002)
        else:
            assert 0.1 <= flat["loss.ce.weight"] <= 0.2 and flat["loss.tversky.alpha"] == 0.3
        assert ("loss.tversky.alpha" in flat) == (fam == "tversky")

    fixed = load_space({"space": {"loss.family": "focal", "loss.focal.gamma": 1.5}})
    (flat,) = _run(fixed, 1)
    assert flat == {"loss.family": "focal", "loss.focal.weight": 1.0, "loss.focal.gamma": 1.5}


def test_int_log_step_and_categorical_calls() -> None:
    sp = load_space(
        _minimal(
            **{
                "model.lora.r": {"low": 4, "high": 16, "step": 4, "type": "int"},
                "optim.batch_size": {"low": 8, "high": 64, "log": True, "type": "int"},
                "optim.warmup_steps": {"choices": [0, 10]},
                "model.lora.dropout": {"low": 0.0, "high": 0.2, "step": 0.05},
            }
        )
    )
    study = optuna.create_study(sampler=sp.make_sampler(1))
    for _ in range(10):
        t = study.ask()
        flat = sp.define_by_run(t)
        study.tell(t, 0.0)
        assert flat["model.lora.r"] in (4, 8, 12, 16)
        assert isinstance(flat["optim.batch_size"], int) and 8 <= flat["optim.batch_size"] <= 64
        assert flat["optim.warmup_steps"] in (0, 10)
    dists = study.trials[0].distributions
    assert dists["model.lora.r"] == optuna.distributions.IntDistribution(4, 16, step=4)
    assert dists["optim.batch_size"] == optuna.distributions.IntDistribution(8, 64, log=True)
    assert dists["model.lora.dropout"] == optuna.distributions.FloatDistribution(0, 0.2, step=0.05)
    assert dists["loss.family"] == optuna.distributions.CategoricalDistribution(["ce", "focal"])


# --------------------------------------------------------------------------- samplers


def test_samplers_selectable() -> None:
    def sampler_of(kind: str) -> optuna.samplers.BaseSampler:
        raw = _minimal(**{"optim.lr": {"choices": [0.1, 0.2]}})
        raw["search"] = {"sampler": kind}
        return load_space(raw).make_sampler(3)

    tpe = sampler_of("tpe")
    assert isinstance(tpe, optuna.samplers.TPESampler)
    assert tpe._multivariate and tpe._group  # the conditional-space settings
    assert isinstance(sampler_of("random"), optuna.samplers.RandomSampler)
    grid = sampler_of("grid")
    assert isinstance(grid, GridPointSampler) and isinstance(grid, optuna.samplers.GridSampler)
    assert load_space(_minimal()).sampler == "tpe"  # the default


def _paper_table() -> set[tuple[str, float]]:
    families = ["focal", "lovasz", "gdice", "sadl"]
    return {("ce", 1.0)} | {(f, 0.0) for f in families} | {(f, 0.6) for f in families}


def _as_row(flat: dict[str, Any]) -> tuple[str, float]:
    fam = flat["loss.family"]
    return (fam, 1.0) if fam == "ce" else (fam, flat["loss.ce.weight"])


@pytest.mark.parametrize("tell", [True, False])
def test_paper_grid_covers_the_table_exactly_once(tell: bool) -> None:
    sp = load_space(_paper_grid())
    n = len(_paper_table())
    assert sp.settings["num_samples"] == n == len(sp.grid)
    # tell=False: all points asked before any result, as with concurrent trials
    flats = _run(sp, n, seed=7, tell=tell)
    rows = [_as_row(f) for f in flats]
    assert len(set(rows)) == n and set(rows) == _paper_table()
    assert sorted(f["grid_point"] for f in flats) == list(range(n))
    for f in flats:
        assert ("loss.focal.gamma" in f) == (f["loss.family"] == "focal")
        if f["loss.family"] == "focal":
            assert f["loss.focal.gamma"] == 2.0
        if f["loss.family"] != "ce":
            assert f[f"loss.{f['loss.family']}.weight"] == pytest.approx(1 - f["loss.ce.weight"])


def test_paper_runs_the_table_then_tpe_within_each_family() -> None:
    sp = load_space(SPACES / "paper.yaml")
    study = optuna.create_study(direction="maximize", sampler=sp.make_sampler(0))
    for point in sp.settings["first_points"]:
        study.enqueue_trial(point)
    flats = []
    for i in range(sp.settings["num_samples"]):
        trial = study.ask()
        flats.append(sp.define_by_run(trial))
        study.tell(trial, (i % 7) / 7)
    n_table = len(sp.settings["first_points"])
    assert {_as_row(f) for f in flats[:n_table]} == {
        _as_row({"loss.ce.weight": 1.0, **p}) for p in sp.settings["first_points"]
    }
    counts: dict[str, int] = {}
    for f in flats:
        counts[f["loss.family"]] = counts.get(f["loss.family"], 0) + 1
        assert 2e-6 <= f["optim.lr"] <= 5e-5
    assert counts == dict.fromkeys(sp.family_names, 4)


def test_explicit_grid() -> None:
    raw = {
        "search": {"sampler": "grid"},
        "space": {"optim.lr": 0.01},  # shared fixed value
        "grid": [
            {"loss.family": "ce"},
            {"loss.family": "focal", "loss.ce.weight": 0.6, "loss.focal.gamma": 1.0},
            {"loss.family": "focal", "loss.ce.weight": 0.6, "optim.lr": 0.02},
        ],
    }
    sp = load_space(raw)
    assert sp.settings["num_samples"] == 3 and sp.family_names == ("ce", "focal")
    flats = sorted(_run(sp, 3), key=lambda f: f["grid_point"])
    assert flats[0] == {"grid_point": 0, "loss.family": "ce", "optim.lr": 0.01}
    assert flats[1]["loss.focal.weight"] == pytest.approx(0.4)
    assert flats[1]["loss.focal.gamma"] == 1.0 and flats[2]["optim.lr"] == 0.02

    dup = copy.deepcopy(raw)
    dup["grid"].append({"loss.family": "ce"})
    with pytest.raises(LossearchError, match=r"grid\[3\].*grid\[0\]"):
        load_space(dup)
    sampled = copy.deepcopy(raw)
    sampled["space"]["optim.lr"] = {"low": 0.01, "high": 0.1}
    with pytest.raises(LossearchError, match=r"space > optim.lr"):
        load_space(sampled)
    too_many = copy.deepcopy(raw)
    too_many["search"]["num_samples"] = 4
    with pytest.raises(LossearchError, match="num_samples"):
        load_space(too_many)


def test_grid_needs_fixed_or_categorical_values() -> None:
    raw = _minimal(**{"optim.lr": {"low": 1e-4, "high": 1e-2, "log": True}})
    raw["search"] = {"sampler": "grid"}
    with pytest.raises(LossearchError, match="optim.lr"):
        load_space(raw)


# --------------------------------------------------------------------------- trial -> config


BASE = {
    "task": {"name": "arith"},
    "loss": {"ce": 1.0, "lovasz": {"weight": 0.5}, "focal": {"gamma": 3.0}},
    "optim": {"lr": 0.003},
}


def test_trial_to_config_mixed() -> None:
    flat = {
        "loss.family": "focal",
        "loss.ce.weight": 0.6,
        "loss.focal.weight": 0.4,
        "loss.focal.gamma": 2.0,
        "optim.lr": 1e-3,
        "model.lora.r": 4,
        "seeds": [0, 1],
        "grid_point": 3,
    }
    cfg = trial_to_config(BASE, flat)
    assert isinstance(cfg, TrainConfig)
    assert cfg.loss["ce"]["weight"] == 0.6
    assert cfg.loss["focal"]["weight"] == 0.4 and cfg.loss["focal"]["gamma"] == 2.0
    assert "lovasz" not in cfg.loss  # a base component that was not chosen
    assert cfg.optim.lr == 1e-3 and cfg.model.lora is not None and cfg.model.lora.r == 4
    assert BASE["loss"]["focal"] == {"gamma": 3.0}  # the base is not modified


def test_trial_to_config_alone_and_ce() -> None:
    alone = trial_to_config(BASE, {"loss.family": "focal", "loss.ce.weight": 0.0})
    assert "ce" not in alone.loss
    assert alone.loss["focal"]["weight"] == 1.0 and alone.loss["focal"]["gamma"] == 3.0
    no_mix = trial_to_config(BASE, {"loss.family": "lovasz", "loss.lovasz.weight": 1.0})
    assert set(no_mix.loss) - {"ce_scope"} == {"lovasz"}
    ce = trial_to_config(
        {**BASE, "loss": {"ce": 1.0, "ce_scope": "sequence"}}, {"loss.family": "ce"}
    )
    assert ce.loss["ce"]["weight"] == 1.0 and ce.loss["ce_scope"] == "sequence"
    assert set(ce.loss) == {"ce", "ce_scope"}


def test_trial_to_config_errors() -> None:
    with pytest.raises(LossearchError, match="loss.tversky.alpha"):
        trial_to_config(BASE, {"loss.family": "focal", "loss.tversky.alpha": 0.5})
    with pytest.raises(LossearchError, match="optim.lr"):
        trial_to_config(BASE, {"loss.family": "ce", "optim.lr": -1.0})
    with pytest.raises(LossearchError, match="loss.family"):
        family_of({"optim.lr": 0.1})
    with pytest.raises(LossearchError, match="unknown loss family"):
        trial_to_config(BASE, {"loss.family": "dice"})


def test_sampled_trials_give_valid_configs() -> None:
    for name in ("quick", "gsm8k", "paper"):
        sp = load_space(SPACES / f"{name}.yaml")
        for flat in _run(sp, 12):
            cfg = trial_to_config(sp.base, flat)
            fam = family_of(flat)
            weights = {k: v["weight"] for k, v in cfg.loss.items() if isinstance(v, dict)}
            if fam == "ce":
                assert weights == {"ce": 1.0}
            else:
                w = flat["loss.ce.weight"]
                assert weights[fam] == pytest.approx(1 - w)
                assert weights.get("ce", 0.0) == pytest.approx(w)
                assert set(weights) <= {"ce", fam}


def test_resolved_base_round_trip() -> None:
    """The driver passes the resolved base (TrainConfig.to_dict()) to trial_to_config."""
    sp = load_space(SPACES / "quick.yaml")
    base = trial_to_config(sp.base, {"loss.family": "ce"}).to_dict()
    flat = {"loss.family": "tversky", "loss.ce.weight": 0.3, "loss.tversky.alpha": 0.2}
    cfg = trial_to_config(base, flat)
    assert cfg.loss["tversky"]["alpha"] == 0.2 and cfg.loss["ce"]["weight"] == 0.3


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("space", "match"),
    [
        (
            {"loss.family": {"choices": ["ce", "focl"]}},
            r"config key 'space.loss.family': unknown loss family 'focl'",
        ),
        (
            {"loss.family": {"choices": {"ce": {}, "dice": {}}}},
            r"config key 'space.loss.family': unknown loss family 'dice'",
        ),
        ({"loss.family": "dice"}, r"config key 'space.loss.family': unknown loss family 'dice'"),
        ({"loss.family": {"choices": []}}, r"config key 'space.loss.family': empty choice list"),
        ({"optim.lr": {"log": True}}, r"config key 'space.optim.lr': no range"),
        ({"optim.lr": {}}, r"config key 'space.optim.lr': no range"),
        ({"optim.lr": {"choices": []}}, r"config key 'space.optim.lr.choices': empty choice list"),
        (
            {"optim.lr": {"low": 0.1, "high": 0.01}},
            r"config key 'space.optim.lr': `low <= high` must hold, but got \(low=0.1, high=0.01\)",
        ),
        (
            {"optim.lr": {"low": 0.0, "high": 0.1, "log": True}},
            r"config key 'space.optim.lr': `low > 0` must hold for `log=True`",
        ),
        (
            {"optim.lr": {"low": 0.1}},
            r"config key 'space.optim.lr': a range needs both low and high",
        ),
        ({"optim.lr": {"lo": 0.1, "high": 1}}, r"config key 'space.optim.lr.lo': unknown key"),
        (
            {"optim.lr": {"choices": [1, 1]}},
            r"config key 'space.optim.lr.choices': choice 1 is listed twice",
        ),
        ({"optim.lrr": {"low": 0.1, "high": 0.2}}, r"space > optim.lrr: .*unknown key"),
        ({"optim.lr": {"low": -1.0, "high": 0.2}}, r"space > optim.lr: config key 'optim.lr'"),
        ({"optim.epochs": {"low": 1, "high": 5}}, r"space > optim.epochs: .*type: int"),
        (
            {"optim.epochs": {"low": 1, "high": 6, "step": 2, "type": "int"}},
            r"config key 'space.optim.epochs': step 2 does not divide \[1, 6\]",
        ),
        ({"loss.focl.gamma": 1.0}, r"space > loss.focl.gamma: unknown loss family 'focl'"),
        ({"loss.tversky.alpha": 0.5}, r"'tversky' is not one of the loss.family choices"),
        ({"loss.focal.weight": 0.5}, r"space > loss.focal.weight: .*derived"),
        ({"loss.ce.weight": 1.0}, r"space > loss.ce.weight: the CE mixing weight"),
        ({"loss.ce.weight": {"low": 0.0, "high": 1.5}}, r"loss.ce.weight: the CE mixing weight"),
        ({"loss.focal": {"gamma": 1.0}}, r"config key 'space.loss.focal.gamma': unknown key"),
        ({"loss.focal": 1.0}, r"space > loss.focal: choose loss components"),
        ({"seeds": [1, 2]}, r"space > seeds: 'seeds' is reserved"),
    ],
)
def test_malformed_spaces_name_the_key(space: dict[str, Any], match: str) -> None:
    raw = _minimal()
    raw["space"].update(space)
    with pytest.raises(LossearchError, match=match):
        load_space(raw)


def test_family_block_errors() -> None:
    def family_space(block: dict[str, Any]) -> dict[str, Any]:
        return {"space": {"loss.family": {"choices": {"ce": {}, "focal": block}}}}

    with pytest.raises(LossearchError, match=r"choices > focal > loss.tversky.alpha: .*'tversky'"):
        load_space(family_space({"loss.tversky.alpha": 0.5}))
    with pytest.raises(
        LossearchError,
        match=r"config key 'space.loss.family.choices.focal.loss.focal.gamma': `low <= high`",
    ):
        load_space(family_space({"loss.focal.gamma": {"low": 3.0, "high": 1.0}}))
    ce_weight = {"space": {"loss.family": {"choices": {"ce": {"loss.ce.weight": 0.5}}}}}
    with pytest.raises(LossearchError, match=r"choices > ce > loss.ce.weight: CE alone"):
        load_space(ce_weight)
    conflict = family_space({"optim.lr": {"choices": [0.1]}})
    conflict["space"]["optim.lr"] = {"low": 0.01, "high": 0.1}
    with pytest.raises(LossearchError, match=r"optim.lr: conflicts with"):
        load_space(conflict)


def test_unknown_loss_parameter_is_caught() -> None:
    raw = {"space": {"loss.family": {"choices": {"ce": {}, "focal": {"loss.focal.gama": 2.0}}}}}
    with pytest.raises(LossearchError, match=r"loss.focal.gama: .*unknown parameter 'gama'"):
        load_space(raw)


def test_file_level_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("space:\n  loss.family: [ce\n")
    with pytest.raises(LossearchError, match="malformed YAML"):
        load_space(bad)
    with pytest.raises(LossearchError, match="file not found"):
        load_space(tmp_path / "missing.yaml")
    with pytest.raises(LossearchError, match=r"^config key 'spaces': unknown key"):
        load_space({"spaces": {}})
    with pytest.raises(LossearchError, match=r"^config key 'search.samplr': unknown key"):
        load_space({**_minimal(), "search": {"samplr": "tpe"}})
    with pytest.raises(
        LossearchError,
        match=r"^config key 'search.sampler': Input should be 'tpe', 'random' or 'grid'",
    ):
        load_space({**_minimal(), "search": {"sampler": "cmaes"}})
    with pytest.raises(LossearchError, match=r"space: 'loss.family' is required"):
        load_space({"space": {"optim.lr": 0.1}})
    with pytest.raises(LossearchError, match=r"^base: config key 'optim.lrr': unknown key"):
        load_space({**_minimal(), "base": {"optim": {"lrr": 1}}})
    with pytest.raises(LossearchError, match=r"^override 'loss.family': .*edit its"):
        load_space(_minimal(), ["loss.family=focal"])
    with pytest.raises(LossearchError, match=r"^search > first_points\[0\]: .*'lovasz' is not"):
        load_space({**_minimal(), "search": {"first_points": [{"loss.family": "lovasz"}]}})


# --------------------------------------------------------------------------- pickling, Ray


def test_define_by_run_pickles_and_replays() -> None:
    sp = load_space(SPACES / "quick.yaml").with_seeds([3, 4])
    fn = pickle.loads(pickle.dumps(sp.define_by_run))
    assert fn.__func__ is SearchSpace.define_by_run  # pickled by reference, not by value
    first = _run(sp, 12, seed=5)
    again = _run(fn.__self__, 12, seed=5)
    assert first == again
    assert all(f["seeds"] == [3, 4] for f in first)
    grid = load_space(_paper_grid())
    sampler = pickle.loads(pickle.dumps(grid.make_sampler(0)))
    assert isinstance(sampler, GridPointSampler)


def test_through_rays_optuna_search(tmp_path: Path) -> None:
    """Ray Tune's searcher (no Ray runtime): flat configs, the grid's last tell, save/restore."""
    from ray.tune.search.optuna import OptunaSearch

    sp = load_space(_paper_grid())
    searcher = OptunaSearch(
        space=sp.define_by_run, metric="exact_match", mode="max", sampler=sp.make_sampler(0)
    )
    configs = []
    for i in range(len(sp.grid)):
        config = searcher.suggest(f"t{i}")
        configs.append(config)
        searcher.on_trial_complete(f"t{i}", {"exact_match": 0.1 * i, "training_iteration": 1})
    assert {_as_row(c) for c in configs} == _paper_table()
    states = {t.state for t in searcher._ot_study.trials}
    assert states == {optuna.trial.TrialState.COMPLETE}

    quick = load_space(SPACES / "quick.yaml")
    searcher = OptunaSearch(
        space=quick.define_by_run, metric="exact_match", mode="max", sampler=quick.make_sampler(0)
    )
    config = searcher.suggest("a")
    assert "loss.family" in config and "optim.lr" in config
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = OptunaSearch()
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert restored.suggest("b")["loss.family"] in quick.family_names


# --------------------------------------------------------------------------- fair budgets


def _families(flats: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for f in flats:
        counts[f["loss.family"]] = counts.get(f["loss.family"], 0) + 1
    return counts


def _budget_space(per_family: int = 3, **search: Any) -> dict[str, Any]:
    return {
        "search": {"per_family": per_family, "n_startup_trials": 2, **search},
        "space": {
            "loss.family": {"choices": {"ce": {}, "answer_ce": {}, "focal": {
                "loss.focal.gamma": {"low": 0.5, "high": 4.0}}}},
            "loss.ce.weight": {"low": 0.0, "high": 0.9},
            "optim.lr": {"low": 1e-4, "high": 1e-1, "log": True},
        },
    }


@pytest.mark.parametrize("sampler", ["tpe", "random"])
@pytest.mark.parametrize("tell", [True, False])
def test_per_family_gives_every_family_exactly_n(sampler: str, tell: bool) -> None:
    sp = load_space(_budget_space(4, sampler=sampler))
    assert sp.settings["num_samples"] == 12
    assert isinstance(sp.make_sampler(0), space_mod.PerFamilySampler)
    flats = _run(sp, 12, tell=tell)  # tell=False: all asked before any result (concurrency)
    assert _families(flats) == {"ce": 4, "answer_ce": 4, "focal": 4}
    # round robin in the space's order
    assert [f["loss.family"] for f in flats[:6]] == ["ce", "answer_ce", "focal"] * 2
    for f in flats:
        assert set(f) == sp.keys_for(f["loss.family"])


def test_per_family_counts_first_points_and_is_reproducible() -> None:
    raw = _budget_space(
        2, first_points=[{"loss.family": "focal", "optim.lr": 0.01},
                         {"loss.family": "focal", "optim.lr": 0.02}]
    )
    sp = load_space(raw)

    def run() -> list[dict[str, Any]]:
        study = optuna.create_study(direction="maximize", sampler=sp.make_sampler(0))
        for point in sp.settings["first_points"]:
            study.enqueue_trial(point)
        flats = []
        for i in range(6):
            trial = study.ask()
            flats.append(sp.define_by_run(trial))
            study.tell(trial, i / 6)
        return flats

    flats = run()
    assert [f["loss.family"] for f in flats] == ["focal", "focal", "ce", "answer_ce", "ce",
                                                 "answer_ce"]
    assert [f["optim.lr"] for f in flats[:2]] == [0.01, 0.02]
    assert run() == flats


def test_per_family_survives_save_and_restore_with_running_trials(tmp_path: Path) -> None:
    """Ray's OptunaSearch checkpoint mid-search (trials still running): exactly n each."""
    from ray.tune.search.optuna import OptunaSearch

    sp = load_space(_budget_space(3))
    searcher = OptunaSearch(
        space=sp.define_by_run, metric="m", mode="max", sampler=sp.make_sampler(0)
    )
    configs = [searcher.suggest(f"t{i}") for i in range(4)]
    searcher.on_trial_complete("t0", {"m": 0.5, "training_iteration": 1})
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = OptunaSearch()
    restored.restore(str(tmp_path / "searcher.pkl"))
    configs += [restored.suggest(f"t{i}") for i in range(4, 9)]
    for i in range(1, 9):
        restored.on_trial_complete(f"t{i}", {"m": 0.1 * i, "training_iteration": 1})
    assert _families(configs) == {"ce": 3, "answer_ce": 3, "focal": 3}


def test_per_family_tpe_learns_each_family_from_its_own_trials() -> None:
    """focal scores best at a high learning rate, lovasz at a low one: TPE follows each."""
    raw = {
        "search": {"per_family": 30, "n_startup_trials": 6, "seed": 1},
        "space": {
            "loss.family": {"choices": ["focal", "lovasz"]},
            "optim.lr": {"low": 1e-4, "high": 1e-1, "log": True},
        },
    }
    sp = load_space(raw)
    study = optuna.create_study(direction="maximize", sampler=sp.make_sampler())
    late: dict[str, list[float]] = {"focal": [], "lovasz": []}
    for i in range(60):
        trial = study.ask()
        flat = sp.define_by_run(trial)
        x = math.log10(flat["optim.lr"])  # in [-4, -1]
        fam = flat["loss.family"]
        study.tell(trial, x if fam == "focal" else -x)
        if i >= 40:
            late[fam].append(x)
    assert _families([t.params for t in study.trials]) == {"focal": 30, "lovasz": 30}
    assert sum(late["focal"]) / 10 > -2.0 > sum(late["lovasz"]) / 10


def test_per_family_errors() -> None:
    with pytest.raises(
        LossearchError, match=r"^config key 'search.per_family': Input should be greater than 0"
    ):
        load_space(_budget_space(0))
    grid = _budget_space(2, sampler="grid")
    grid["space"]["optim.lr"] = {"choices": [0.1, 0.2]}
    grid["space"]["loss.ce.weight"] = 0.5
    grid["space"]["loss.family"] = {"choices": ["ce", "focal"]}
    with pytest.raises(LossearchError, match=r"^search > per_family: not with a grid"):
        load_space(grid)
    with pytest.raises(LossearchError, match=r"^search > num_samples: 7, but per_family 2 x 3"):
        load_space(_budget_space(2, num_samples=7))
    assert load_space(_budget_space(2, num_samples=6)).settings["num_samples"] == 6
    too_many = _budget_space(1, first_points=[{"loss.family": "ce"}, {"loss.family": "ce"}])
    with pytest.raises(LossearchError, match=r"first_points: 2 points of family 'ce'"):
        load_space(too_many)
    sp = load_space(_minimal())
    assert sp.settings["per_family"] is None
    assert sp.with_per_family(5).settings["num_samples"] == 10
    with pytest.raises(LossearchError, match="per_family must be an integer >= 1"):
        sp.with_per_family(0)


def test_loss_families_are_the_registry() -> None:
    from lossearch.losses import LOSSES

    assert space_mod.LOSS_FAMILIES == tuple(LOSSES) and "prob_power" in LOSSES


def test_param_range() -> None:
    sp = load_space(
        {
            "space": {
                "loss.family": {"choices": {
                    "ce": {"optim.lr": 0.01},
                    "focal": {"optim.batch_size": {"choices": [32, 16]}},
                    "lovasz": {"optim.lr": {"low": 1e-3, "high": 0.3, "log": True}}}},
                "optim.lr": {"low": 1e-4, "high": 1e-2, "log": True},
            }
        }
    )
    assert sp.param_range("optim.lr") == {"ce": None, "focal": [1e-4, 1e-2], "lovasz": [1e-3, 0.3]}
    assert sp.param_range("optim.batch_size") == {"ce": None, "focal": [16, 32], "lovasz": None}


# --------------------------------------------------------------------------- overrides


def test_override_of_a_searched_key_fixes_it() -> None:
    """`optim.lr=1e-4` on the command line: every trial trains at 1e-4, not TPE's value."""
    sp = load_space(SPACES / "quick.yaml", ["optim.lr=1e-4", "optim.epochs=1"])
    assert sp.fixed_by_override == (("optim.lr", 1e-4),)
    assert sp.base["optim"]["epochs"] == 1
    assert sp.param_range("optim.lr") == dict.fromkeys(sp.family_names, None)
    assert all("optim.lr" not in p for p in sp.settings["first_points"])
    study = optuna.create_study(direction="maximize", sampler=sp.make_sampler(0))
    for _ in range(8):
        trial = study.ask()
        flat = sp.define_by_run(trial)
        study.tell(trial, 0.5)
        assert "optim.lr" not in trial.params  # not sampled
        assert flat["optim.lr"] == 1e-4
        assert trial_to_config(sp.base, flat).optim.lr == 1e-4


def test_override_of_loss_keys_and_fixed_values() -> None:
    sp = load_space(
        SPACES / "quick.yaml",
        {"loss.ce.weight": "0.5", "loss.focal.gamma": 1.5, "eval.max_new_tokens": 40},
    )
    assert dict(sp.fixed_by_override) == {
        "loss.ce.weight": 0.5, "loss.focal.gamma": 1.5, "eval.max_new_tokens": 40
    }
    assert sp.base["loss"] == {"ce": 1.0}  # loss keys go to the trials, not to the base
    for flat in _run(sp, 8):
        cfg = trial_to_config(sp.base, flat)
        assert cfg.eval.max_new_tokens == 40
        fam = flat["loss.family"]
        if fam != "ce":
            assert cfg.loss["ce"]["weight"] == 0.5 and cfg.loss[fam]["weight"] == 0.5
        if fam == "focal":
            assert cfg.loss["focal"]["gamma"] == 1.5
    with pytest.raises(LossearchError, match=r"^override 'loss.ce.weight': the CE mixing"):
        load_space(SPACES / "quick.yaml", ["loss.ce.weight=1.5"])


def test_override_in_an_explicit_grid() -> None:
    raw = {
        "grid": [
            {"loss.family": "ce", "optim.lr": 0.01},
            {"loss.family": "ce", "optim.lr": 0.02},
            {"loss.family": "focal", "loss.ce.weight": 0.6},
        ]
    }
    sp = load_space(raw, ["optim.lr=0.005"])
    assert sp.fixed_by_override == (("optim.lr", 0.005),)
    assert [p.get("optim.lr") for p in sp.grid] == [0.005, None]  # the two ce points are one
    assert sp.settings["num_samples"] == 2


def test_a_first_point_sets_only_what_its_family_samples() -> None:
    """Optuna keeps of a first point only the parameters the trial samples: a fixed or absent
    key (``optim.weight_decay: 0.1``) was dropped, the trial trained with the base's 0.0."""
    raw = yaml.safe_load((SPACES / "quick.yaml").read_text())
    raw["search"]["first_points"][0]["optim.weight_decay"] = 0.1
    with pytest.raises(LossearchError, match=r"first_points\[0\]: 'optim.weight_decay' is not "
                                             r"sampled for family ce"):
        load_space(raw)
