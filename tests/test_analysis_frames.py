"""analysis on constructed frames with known answers (no Ray, no files except PNGs)."""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import (
    expected_max,
    markdown_table,
    metric_mode,
    parameter_importance,
    plot_family_bars,
    rank_agreement,
    rank_losses,
)
from analysis.rank import RankingWarning, best_configurations, counted_rows, welch_interval
from analysis.report import Analysis, render_report
from analysis.tables import format_ranking_delta, rankings_table
from analysis.tune_files import first_error_line
from lossearch.errors import LossearchError

_trial_counter = iter(range(10_000))


def runs(
    loss: str,
    values: list[float],
    *,
    task: str = "arith",
    model: str = "tiny",
    status: str = "finished",
    metric: str = "exact_match",
    one_trial: bool = True,
    epochs: int | None = None,
    **params: Any,
) -> list[dict[str, Any]]:
    """Rows of one configuration: one per seed, in one trial (or one trial per seed).

    ``epochs`` adds an ``epochs`` column (without it the frame has none: no budget check).
    """
    trial = f"t{next(_trial_counter)}"
    rows = []
    for seed, value in enumerate(values):
        rows.append(
            {
                "experiment": "exp",
                "trial_id": trial if one_trial else f"t{next(_trial_counter)}",
                "status": status,
                "task": task,
                "model": model,
                "loss": loss,
                "seed": seed,
                **({} if epochs is None else {"epochs": epochs}),
                **{f"param.{k}": v for k, v in params.items()},
                f"best.{metric}": value,
            }
        )
    return rows


def frame(*groups: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame([row for rows in groups for row in rows])
    for col in [c for c in df.columns if c.startswith("param.")]:
        if df[col].map(lambda v: isinstance(v, str)).any():
            df[col] = df[col].astype(object)
        else:
            df[col] = df[col].astype(float)
    return df


def five(mean: float, spread: float = 0.01) -> list[float]:
    return [mean + spread * d for d in (-2, -1, 0, 1, 2)]


# --------------------------------------------------------------------------- rank_losses


def test_ranking_order_and_columns() -> None:
    df = frame(
        runs("ce", five(0.50), **{"optim.lr": 1e-3}),
        runs("focal", five(0.60), **{"optim.lr": 1e-3, "loss.focal.gamma": 2.0}),
        runs("poly", five(0.40), **{"optim.lr": 1e-3}),
    )
    ranks = rank_losses(df, "exact_match")
    assert list(ranks.columns) == [
        "task",
        "model",
        "loss",
        "best",
        "mean",
        "std",
        "n",
        "rank",
        "delta_vs_ce",
        "delta_ci_low",
        "delta_ci_high",
        "p_value",
    ]
    assert ranks["loss"].tolist() == ["focal", "ce", "poly"]
    assert ranks["rank"].tolist() == [1, 2, 3]
    focal = ranks.iloc[0]
    assert focal["mean"] == pytest.approx(0.60)
    assert focal["best"] == pytest.approx(0.62)
    assert focal["std"] == pytest.approx(np.std(five(0.60), ddof=1))
    assert focal["n"] == 5


def test_delta_vs_ce_is_the_difference_of_means_with_welch_interval() -> None:
    ce, focal, poly = [0.50, 0.52, 0.47], [0.61, 0.58, 0.66, 0.60], [0.45, 0.46]
    df = frame(runs("ce", ce), runs("focal", focal), runs("poly", poly))
    ranks = rank_losses(df).set_index("loss")
    for loss, values in (("focal", focal), ("poly", poly)):
        row = ranks.loc[loss]
        assert row["delta_vs_ce"] == pytest.approx(np.mean(values) - np.mean(ce))
        expected = stats.ttest_ind(values, ce, equal_var=False).confidence_interval(0.95)
        assert row["delta_ci_low"] == pytest.approx(expected.low)
        assert row["delta_ci_high"] == pytest.approx(expected.high)
        assert row["delta_ci_low"] < row["delta_vs_ce"] < row["delta_ci_high"]
    assert ranks.loc["ce", ["delta_vs_ce", "delta_ci_low", "delta_ci_high"]].tolist() == [0, 0, 0]


def test_welch_interval_by_hand_and_edge_cases() -> None:
    a, b = [1.0, 2.0, 3.0], [2.0, 4.0]
    va, vb = np.var(a, ddof=1) / 3, np.var(b, ddof=1) / 2
    dof = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 1)
    half = stats.t.ppf(0.975, dof) * math.sqrt(va + vb)
    low, high = welch_interval(a, b)
    assert (low, high) == pytest.approx((2.0 - 3.0 - half, 2.0 - 3.0 + half))
    assert welch_interval([0.6, 0.6], [0.5, 0.5]) == pytest.approx((0.1, 0.1))  # no spread
    assert all(math.isnan(v) for v in welch_interval([0.6], [0.5, 0.55]))
    wide = welch_interval(a, b, confidence=0.99)
    assert wide[0] < low and wide[1] > high


def test_significance_direction() -> None:
    df = frame(
        runs("ce", five(0.50)),
        runs("focal", five(0.60)),  # clearly better
        runs("poly", five(0.505)),  # indistinguishable
        runs("dice", five(0.40)),  # clearly worse
    )
    two = rank_losses(df).set_index("loss")
    assert two.loc["focal", "p_value"] < 0.05 and two.loc["focal", "delta_ci_low"] > 0
    assert two.loc["poly", "p_value"] > 0.05
    assert two.loc["poly", "delta_ci_low"] < 0 < two.loc["poly", "delta_ci_high"]
    assert two.loc["dice", "p_value"] < 0.05 and two.loc["dice", "delta_ci_high"] < 0
    assert math.isnan(two.loc["ce", "p_value"])
    better = rank_losses(df, alternative="better").set_index("loss")
    assert better.loc["focal", "p_value"] < 0.05
    assert better.loc["focal", "p_value"] == pytest.approx(two.loc["focal", "p_value"] / 2)
    assert better.loc["dice", "p_value"] > 0.95  # one-sided: worse is not "better"


def test_p_value_and_interval_need_two_seeds_each() -> None:
    df = frame(runs("ce", [0.5]), runs("focal", [0.6, 0.61]))
    ranks = rank_losses(df)
    assert ranks["p_value"].isna().all()
    focal = ranks.set_index("loss").loc["focal"]
    assert focal["delta_vs_ce"] == pytest.approx(0.105)
    assert math.isnan(focal["delta_ci_low"]) and math.isnan(focal["delta_ci_high"])


def test_ties_share_the_lowest_rank() -> None:
    df = frame(runs("ce", [0.5, 0.5]), runs("focal", [0.6, 0.6]), runs("poly", [0.6, 0.6]))
    ranks = rank_losses(df).set_index("loss")["rank"]
    assert ranks["focal"] == ranks["poly"] == 1
    assert ranks["ce"] == 3


def test_min_mode() -> None:
    df = frame(
        runs("ce", five(2.0, 0.05), metric="loss"),
        runs("focal", five(1.5, 0.05), metric="loss"),
        runs("poly", five(2.5, 0.05), metric="loss"),
    )
    ranks = rank_losses(df, "loss", mode="min")
    assert ranks["loss"].tolist() == ["focal", "ce", "poly"]
    focal = ranks.set_index("loss").loc["focal"]
    assert focal["best"] == pytest.approx(1.4)  # the lowest seed
    assert focal["delta_vs_ce"] == pytest.approx(-0.5)  # mean - CE mean: lower is better
    assert focal["delta_ci_high"] < 0
    better = rank_losses(df, "loss", mode="min", alternative="better").set_index("loss")
    assert better.loc["focal", "p_value"] < 0.05 and better.loc["poly", "p_value"] > 0.95


def test_best_configuration_is_best_mean_not_best_seed() -> None:
    df = frame(
        runs("ce", [0.5, 0.5], **{"optim.lr": 1e-3}),
        runs("focal", [0.9, 0.1], **{"optim.lr": 1e-3, "loss.focal.gamma": 1.0}),
        runs("focal", [0.6, 0.6], **{"optim.lr": 1e-3, "loss.focal.gamma": 2.0}),
    )
    focal = rank_losses(df).set_index("loss").loc["focal"]
    assert focal["mean"] == pytest.approx(0.6) and focal["best"] == pytest.approx(0.6)
    best = best_configurations(df).set_index("loss")
    assert best.loc["focal", "param.loss.focal.gamma"] == 2.0


def test_seeds_from_several_trials_form_one_configuration() -> None:
    df = frame(
        runs("ce", [0.5, 0.52, 0.54], one_trial=False, **{"optim.lr": 1e-3}),
        runs("focal", [0.6], **{"optim.lr": 1e-3}),
        runs("focal", [0.62], **{"optim.lr": 1e-3}),  # same config, another trial
    )
    ranks = rank_losses(df).set_index("loss")
    assert ranks.loc["ce", "n"] == 3
    assert ranks.loc["focal", "n"] == 2 and ranks.loc["focal", "mean"] == pytest.approx(0.61)


def test_conditional_nan_params_group_together() -> None:
    df = frame(
        runs("ce", [0.5], **{"optim.lr": 1e-3, "loss.focal.gamma": math.nan}),
        runs("ce", [0.6], **{"optim.lr": 1e-3, "loss.focal.gamma": math.nan}),
    )
    assert rank_losses(df).iloc[0]["n"] == 2


def test_only_finished_trials_rank() -> None:
    df = frame(
        runs("ce", [0.5, 0.5]),
        runs("focal", [0.4, 0.4]),
        runs("focal", [0.99, 0.99], status="pruned"),  # would win if it counted
        runs("poly", [0.9, 0.9], status="errored"),
        runs("dice", [0.95, 0.95], status="running"),
    )
    with pytest.warns(RankingWarning, match="only finished") as record:
        ranks = rank_losses(df)
    assert set(ranks["loss"]) == {"ce", "focal"}
    assert ranks.set_index("loss").loc["focal", "mean"] == pytest.approx(0.4)
    note = str(record[0].message)
    assert "1 trial pruned" in note and "1 trial errored" in note and "1 trial running" in note
    assert ranks.attrs["notes"] == [str(w.message) for w in record]
    # the pruned trial is still in the frame for diagnosis
    assert "pruned" in set(counted_rows(df, "exact_match")["status"])


def test_only_the_full_epoch_budget_ranks() -> None:
    df = frame(
        runs("ce", [0.5, 0.5], epochs=4),
        runs("focal", [0.6, 0.6], epochs=4),
        runs("focal", [0.9, 0.9], epochs=2),  # finished, but a shorter schedule
        runs("poly", [0.7, 0.7], epochs=3),
        runs("ce", [0.8, 0.8], model="other", epochs=2),  # its own group: its budget is 2
    )
    with pytest.warns(RankingWarning, match="full budget of 4") as record:
        ranks = rank_losses(df)
    tiny = ranks[ranks["model"] == "tiny"].set_index("loss")
    assert set(tiny.index) == {"ce", "focal"}
    assert tiny.loc["focal", "mean"] == pytest.approx(0.6)
    assert ranks[ranks["model"] == "other"]["loss"].tolist() == ["ce"]
    notes = [str(w.message) for w in record]
    assert len(notes) == 1 and "model=tiny" in notes[0] and "2 finished trials" in notes[0]
    assert "2, 3 epochs" in notes[0]
    # without an epochs column nothing is checked
    no_epochs = frame(runs("ce", [0.5, 0.5]), runs("focal", [0.9, 0.9]))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RankingWarning)
        assert len(rank_losses(no_epochs)) == 2


def test_groups_are_ranked_separately() -> None:
    df = frame(
        runs("ce", [0.5, 0.5], model="a"),
        runs("focal", [0.6, 0.6], model="a"),
        runs("ce", [0.7, 0.7], model="b"),
        runs("focal", [0.3, 0.3], model="b"),
    )
    ranks = rank_losses(df, by=("task", "model"))
    winners = ranks[ranks["rank"] == 1].set_index("model")["loss"]
    assert winners.to_dict() == {"a": "focal", "b": "ce"}
    overall = rank_losses(df, by=())
    assert "model" not in overall.columns and len(overall) == 2


def test_no_ce_or_zero_ce() -> None:
    no_ce = frame(runs("focal", [0.6, 0.6]), runs("poly", [0.5, 0.5]))
    out = rank_losses(no_ce)
    delta = ["delta_vs_ce", "delta_ci_low", "delta_ci_high", "p_value"]
    assert out[delta].isna().all().all()
    zero = frame(runs("ce", [0.0, 0.0]), runs("focal", [0.6, 0.62]))
    focal = rank_losses(zero).set_index("loss").loc["focal"]  # a difference needs no ratio
    assert focal["delta_vs_ce"] == pytest.approx(0.61) and focal["delta_ci_low"] > 0


def test_unknown_metric_or_mode() -> None:
    df = frame(runs("ce", [0.5]))
    with pytest.raises(LossearchError, match="unknown metric 'bleu'.*exact_match"):
        rank_losses(df, "bleu")
    with pytest.raises(LossearchError, match="mode"):
        rank_losses(df, mode="up")


# --------------------------------------------------------------------------- rank_agreement


def _two_models(order_b: list[str]) -> pd.DataFrame:
    means_a = {"ce": 0.5, "focal": 0.6, "poly": 0.4, "dice": 0.3}
    means_b = dict(zip(order_b, [0.9, 0.8, 0.7, 0.6], strict=True))
    return frame(
        *[runs(f, [m, m], model="a") for f, m in means_a.items()],
        *[runs(f, [m, m], model="b") for f, m in means_b.items()],
    )


def test_agreement_identical_and_reversed() -> None:
    same = rank_agreement(_two_models(["focal", "ce", "poly", "dice"]), "exact_match")
    assert list(same.columns) == ["group_a", "group_b", "tau", "p_value", "n_families"]
    assert same.iloc[0][["group_a", "group_b"]].tolist() == ["a", "b"]
    assert same.iloc[0]["tau"] == pytest.approx(1.0) and same.iloc[0]["n_families"] == 4
    reversed_ = rank_agreement(_two_models(["dice", "poly", "ce", "focal"]), "exact_match")
    assert reversed_.iloc[0]["tau"] == pytest.approx(-1.0)


def test_agreement_over_shared_families_only() -> None:
    df = frame(
        runs("ce", [0.5], model="a"),
        runs("focal", [0.6], model="a"),
        runs("poly", [0.1], model="a"),
        runs("ce", [0.5], model="b"),
        runs("focal", [0.6], model="b"),
        runs("ce", [0.5], model="c"),
    )
    out = rank_agreement(df, "exact_match").set_index(["group_a", "group_b"])
    assert out.loc[("a", "b"), "n_families"] == 2 and out.loc[("a", "b"), "tau"] == 1.0
    assert out.loc[("a", "c"), "n_families"] == 1 and math.isnan(out.loc[("a", "c"), "tau"])
    assert len(out) == 3


# --------------------------------------------------------------------------- importance


def _search_like(n: int = 24) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    groups = []
    for i in range(n):
        lr = float(10 ** rng.uniform(-4, -1))
        family = ["ce", "focal", "poly"][i % 3]
        params: dict[str, Any] = {"optim.lr": lr, "optim.batch_size": 32.0}
        if family == "focal":
            params["loss.focal.gamma"] = float(rng.uniform(0.5, 5))
        value = 0.8 - 0.1 * (np.log10(lr) + 2.5) ** 2 + rng.normal(0, 0.01)
        groups.append(runs(family, [value, value + 0.01], **params))
    df = frame(*groups)
    df.loc[df["loss"] != "focal", "param.loss.focal.gamma"] = math.nan
    return df


def test_importance_returns_all_searched_params() -> None:
    imp = parameter_importance(_search_like(), "exact_match")
    assert list(imp.columns) == ["param", "importance"]
    # batch size never varies: not searched, not reported
    assert set(imp["param"]) == {"optim.lr", "loss.family", "loss.focal.gamma"}
    assert (imp["importance"] >= 0).all() and imp["importance"].sum() == pytest.approx(1.0)
    assert imp["importance"].is_monotonic_decreasing
    assert imp.iloc[0]["param"] == "optim.lr"  # the only parameter the value depends on


def test_importance_needs_two_trials_that_vary() -> None:
    with pytest.raises(LossearchError, match="at least 2"):
        parameter_importance(frame(runs("ce", [0.5, 0.6], **{"optim.lr": 1e-3})), "exact_match")
    constant = frame(
        runs("ce", [0.5], **{"optim.lr": 1e-3}), runs("ce", [0.6], **{"optim.lr": 1e-3})
    )
    with pytest.raises(LossearchError, match="vary"):
        parameter_importance(constant, "exact_match")
    with pytest.raises(LossearchError, match="evaluator"):
        parameter_importance(_search_like(), "exact_match", evaluator="shap")


def test_fanova_needs_sklearn_or_works() -> None:
    try:
        import sklearn  # noqa: F401
    except ImportError:
        with pytest.raises(LossearchError, match="scikit-learn"):
            parameter_importance(_search_like(), "exact_match", evaluator="fanova")
    else:
        imp = parameter_importance(_search_like(), "exact_match", evaluator="fanova")
        assert imp.set_index("param")["importance"].isna()["loss.focal.gamma"]


# --------------------------------------------------------------------------- small helpers


def test_metric_mode_rule() -> None:
    assert metric_mode("exact_match") == "max"
    assert metric_mode("loss") == "min" and metric_mode("loss.focal") == "min"
    assert metric_mode("loss", search_metric="loss", search_mode="max") == "max"
    assert metric_mode("perplexity", modes={"perplexity": "min"}) == "min"


def test_markdown_table() -> None:
    df = pd.DataFrame(
        {"loss": ["ce", "a|b"], "mean": [0.5, math.nan], "n": [3, 4], "err": [None, "x"]}
    )
    text = markdown_table(df, floatfmt=".2f")
    assert text.splitlines() == [
        "| loss | mean | n | err |",
        "|---|---:|---:|---|",
        "| ce | 0.50 | 3 |  |",
        "| a\\|b |  | 4 | x |",
    ]


def test_first_error_line_of_tune_error_file() -> None:
    text = (
        "Failure # 1 (occurred at 2026-01-01_00-00-00)\n"
        "\x1b[36mray::ImplicitFunc.train()\x1b[39m (pid=1, ip=1.2.3.4)\n"
        '  File "x.py", line 3, in f\n    raise ValueError("first")\n'
        "ValueError: first\n"
        "Failure # 2 (occurred at 2026-01-01_00-01-00)\n"
        "\x1b[36mray::ImplicitFunc.train()\x1b[39m (pid=2, ip=1.2.3.4)\n"
        '  File "x.py", line 3, in f\n    raise RuntimeError("loss is nan")\n'
        "              ^^^^^^\n"
        "RuntimeError: loss is nan\nsecond line\n"
    )
    assert first_error_line(text) == "RuntimeError: loss is nan"
    assert first_error_line("") is None
    # no frames (the error raised before any Python frame): the header is not the error
    assert first_error_line("Failure # 1\nTraceback ...\nValueError: bad\n") == "ValueError: bad"


def test_family_bars_from_constructed_rankings(tmp_path: Path) -> None:
    df = frame(
        runs("ce", [0.5, 0.52], model="a"),
        runs("focal", [0.6, 0.61], model="a"),
        runs("ce", [0.4, 0.41], model="b"),
        runs("focal", [0.6], model="b"),
    )
    path = plot_family_bars(rank_losses(df), tmp_path / "sub" / "bars.png")
    assert path == tmp_path / "sub" / "bars.png"
    assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 1000
    with pytest.raises(LossearchError, match="nothing to plot"):
        plot_family_bars(rank_losses(df).iloc[:0], tmp_path / "empty.png")
    assert not (tmp_path / "empty.png").exists()


def test_unknown_statuses_fail_loudly_or_warn() -> None:
    tune_states = frame(
        runs("ce", [0.5, 0.5], status="TERMINATED"), runs("focal", [0.6], status="ERROR")
    )
    with pytest.raises(LossearchError, match="found 'ERROR', 'TERMINATED'"):
        rank_losses(tune_states)
    with pytest.raises(LossearchError, match="known status"):
        counted_rows(tune_states, "exact_match")
    mixed = frame(runs("ce", [0.5, 0.5]), runs("focal", [0.6, 0.7], status="TERMINATED"))
    with pytest.warns(RankingWarning, match=r"dropped 2 rows of status 'TERMINATED'"):
        ranks = rank_losses(mixed)
    assert ranks["loss"].tolist() == ["ce"]


# --------------------------------------------------------------------------- printed tables


def _text(renderable: Any) -> str:
    from rich.console import Console

    console = Console(record=True, width=200, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(renderable)
    return console.export_text()


def _one_and_two_seeds() -> pd.DataFrame:
    return frame(
        runs("ce", [0.50, 0.52, 0.49]),
        runs("focal", [0.60, 0.63, 0.58]),
        runs("poly", [0.45]),
        runs("dice", [0.40, 0.41], status="pruned"),
    )


def test_rankings_table_prints_intervals_never_bare_deltas() -> None:
    with pytest.warns(RankingWarning):
        ranks = rank_losses(_one_and_two_seeds())
    text = _text(rankings_table(ranks, "exact_match", mode="max"))
    assert "Loss families ranked by exact_match (max; validation, 1-3 seeds)" in text
    focal = ranks.set_index("loss").loc["focal"]
    expected = format_ranking_delta(focal)
    assert expected == (
        f"{focal['delta_vs_ce']:+.4f} [{focal['delta_ci_low']:+.4f}, {focal['delta_ci_high']:+.4f}]"
    )
    rows = [[c.strip() for c in line.split("│")] for line in text.splitlines() if "│" in line]
    lines = {cells[4]: " ".join(cells) for cells in rows if len(cells) > 5}  # task model rank loss
    assert expected in lines["focal"]
    assert "n/a (1 seed)" in lines["poly"] and "baseline" in lines["ce"]
    assert text.count("%") == text.count("95% CI") == 1  # no percentage, only the level
    assert "1 trial pruned" in text  # the ranking's notes are the caption
    two = rank_losses(frame(runs("ce", [0.5, 0.5]), runs("focal", [0.6, 0.7])))
    assert "(validation, 2 seeds)" in _text(rankings_table(two, "exact_match"))


def test_report_markdown_has_delta_columns_and_expected_max(tmp_path: Path) -> None:
    trials = _one_and_two_seeds()
    with pytest.warns(RankingWarning):
        ranks = rank_losses(trials)
        curves = expected_max(trials, "exact_match")
    result = Analysis(
        out_dir=tmp_path,
        metric="exact_match",
        mode="max",
        trials=trials,
        history=pd.DataFrame(),
        rankings=ranks,
        expected_max=curves,
        notes=list(ranks.attrs["notes"]),
    )
    text = render_report(result)
    assert "## Ranking (validation, 1-3 seeds)" in text
    assert "| delta_vs_ce | delta_ci_low | delta_ci_high | p_value |" in text
    assert "improvement" not in text
    assert "## Expected best after k trials" in text and "| k=1 |" in text
    assert "- not ranked (only finished trials rank): 1 trial pruned" in text


def test_search_end_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import analysis
    import lossearch.search.export as export
    from lossearch.search.report import finish_search

    (tmp_path / "lossearch_search.yaml").write_text(
        "space: {}\nbase_config: {}\nmetric: exact_match\nmode: max\n"
    )
    monkeypatch.setattr(analysis, "load_trials", lambda paths: _one_and_two_seeds())
    monkeypatch.setattr(export, "export_best", lambda exp, out, trials: [Path(out)])
    monkeypatch.setenv("COLUMNS", "200")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RankingWarning)  # shown in the table, not as warnings
        finish_search(str(tmp_path))
    out = capsys.readouterr().out
    assert "Loss families ranked by exact_match (max; validation, 1-3 seeds)" in out
    assert "n/a (1 seed)" in out and out.count("%") == 1 and "dice" not in out
    assert "not ranked (only finished trials rank): 1 trial pruned" in out
    assert f"best config: {tmp_path / 'best.yaml'}" in out
