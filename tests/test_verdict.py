"""The confirm-stage loader and the verdict statistics, on small hand-computed experiments."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from analysis.confirmed import load_confirmed, read_correctness
from analysis.verdict import (
    VERDICT_COLUMNS,
    bootstrap_ci,
    format_delta,
    holm,
    paired_ci,
    sign_flip_test,
    verdict,
    write_verdict,
)
from lossearch.errors import LossearchError


def run(
    family: str,
    seeds: dict[int, list[float]],
    *,
    trial_id: str | None = None,
    rank: int = 1,
    val: dict[int, float] | None = None,
    references: list[str] | None = None,
    lr_edge: bool = False,
    finished: bool = True,
) -> dict[str, Any]:
    """One confirm run: per seed, the per-question exact match on the test set."""
    return {
        "family": family,
        "trial_id": trial_id or f"{family}{rank}",
        "rank": rank,
        "seeds": seeds,
        "val": val or {s: 0.5 for s in seeds},
        "references": references,
        "lr_edge": lr_edge,
        "finished": finished,
    }


def write_experiment(root: Path, runs: list[dict[str, Any]], task: str = "arith") -> Path:
    """An experiment directory with a confirm stage in the layout lossearch confirm writes."""
    confirm = root / "confirm"
    (confirm / "runs").mkdir(parents=True)
    entries = []
    for r in runs:
        run_id = f"{r['family']}-{r['trial_id']}"
        entries.append(
            {"id": run_id, "family": r["family"], "trial_id": r["trial_id"], "rank": r["rank"]}
        )
        run_dir = confirm / "runs" / run_id
        run_dir.mkdir()
        for seed, correct in r["seeds"].items():
            refs = r["references"] or [f"{i + 2}" for i in range(len(correct))]
            lines = [
                json.dumps(
                    {
                        "index": i,
                        "prediction": refs[i] if c else "?",
                        "reference": refs[i],
                        "exact_match": float(c),
                        "formula_iou": 0.5 * c,
                    }
                )
                for i, c in enumerate(correct)
            ]
            (run_dir / f"test_predictions.seed{seed}.jsonl").write_text("\n".join(lines) + "\n")
        if not r["finished"]:
            continue
        result = {
            "id": run_id,
            "family": r["family"],
            "trial_id": r["trial_id"],
            "rank": r["rank"],
            "task": task,
            "model": "tiny",
            "seeds": list(r["seeds"]),
            "epochs": 2,
            "wall_s": 1.0,
            "config": {"task": {"name": task}, "model": {"name_or_path": "tiny"}},
            "validation": {str(s): {"exact_match": v} for s, v in r["val"].items()},
            "test": {
                str(s): {"exact_match": float(np.mean(c)), "formula_iou": 0.5 * float(np.mean(c))}
                for s, c in r["seeds"].items()
            },
            "lr_edge": r["lr_edge"],
        }
        (run_dir / "result.json").write_text(json.dumps(result))
    meta = {"metric": "exact_match", "mode": "max", "seeds": [0, 1], "top_k": 1, "runs": entries}
    (confirm / "confirm.yaml").write_text(yaml.safe_dump(meta))
    return root


# CE per question (mean over its 2 seeds): [1, 0, .5, .5], mean 0.5.
CE = {0: [1, 0, 0, 1], 1: [1, 0, 1, 0]}
# focal: [1, 1, .5, 1], mean 0.875; d = [0, 1, 0, .5], delta 0.375.
FOCAL = {0: [1, 1, 1, 1], 1: [1, 1, 0, 1]}
# lovasz: [1, 1, 1, 1], mean 1.0; d = [0, 1, .5, .5], delta 0.5.
LOVASZ = {0: [1, 1, 1, 1], 1: [1, 1, 1, 1]}


def exact_sign_flip_p(d: list[float]) -> float:
    """Two-sided sign-flip p by enumerating every sign vector of the non-zero differences."""
    nz = [x for x in d if x != 0]
    observed = abs(sum(nz))
    flips = list(itertools.product([1, -1], repeat=len(nz)))
    hits = sum(
        abs(sum(s * x for s, x in zip(signs, nz, strict=True))) >= observed - 1e-12
        for signs in flips
    )
    return hits / len(flips)


@pytest.fixture
def small(tmp_path: Path) -> pd.DataFrame:
    exp = write_experiment(
        tmp_path / "exp",
        [run("ce", CE), run("focal", FOCAL), run("lovasz", LOVASZ), run("answer_ce", CE)],
    )
    return load_confirmed(exp)


def test_hand_computed_means_deltas_p_and_holm(small: pd.DataFrame) -> None:
    table = verdict(small, n_boot=2000)
    assert list(table.columns) == VERDICT_COLUMNS
    by = table.set_index("loss")
    assert by.loc["ce", "mean"] == pytest.approx(0.5)
    assert by.loc["focal", "mean"] == pytest.approx(0.875)
    assert by.loc["lovasz", "mean"] == pytest.approx(1.0)
    assert by.loc["focal", "delta_vs_ce"] == pytest.approx(0.375)
    assert by.loc["lovasz", "delta_vs_ce"] == pytest.approx(0.5)
    assert by.loc["answer_ce", "delta_vs_ce"] == 0.0
    assert (by["n_seeds"] == 2).all() and (by["n_questions"] == 4).all()
    assert (by["split"] == "test").all()

    # Exact p by hand: focal's non-zero d = [1, .5] -> sums ±1.5, ±0.5 -> 2 of 4 reach 1.5.
    assert exact_sign_flip_p([0, 1, 0, 0.5]) == 0.5
    # lovasz's non-zero d = [1, .5, .5] -> sums 2, 1, 1, 0, 0, -1, -1, -2 -> 2 of 8 reach 2.
    assert exact_sign_flip_p([0, 1, 0.5, 0.5]) == 0.25
    assert by.loc["focal", "p_value"] == 0.5
    assert by.loc["lovasz", "p_value"] == 0.25
    assert by.loc["answer_ce", "p_value"] == 1.0  # all differences zero
    assert math.isnan(by.loc["ce", "p_value"]) and math.isnan(by.loc["ce", "p_holm"])
    assert by.loc["ce", "delta_vs_ce"] == 0.0

    # Holm over the 3 non-baseline families: sorted p .25, .5, 1 -> 3*.25 = .75,
    # max(.75, 2*.5) = 1, max(1, 1*1) = 1.
    assert by.loc["lovasz", "p_holm"] == pytest.approx(0.75)
    assert by.loc["focal", "p_holm"] == pytest.approx(1.0)
    assert by.loc["answer_ce", "p_holm"] == pytest.approx(1.0)

    # The control (answer_ce has CE's answers): same deltas; NaN on the control's own row.
    assert by.loc["focal", "delta_vs_control"] == pytest.approx(0.375)
    assert by.loc["focal", "p_vs_control"] == 0.5
    assert by.loc["ce", "delta_vs_control"] == 0.0 and by.loc["ce", "p_vs_control"] == 1.0
    assert math.isnan(by.loc["answer_ce", "delta_vs_control"])
    assert math.isnan(by.loc["answer_ce", "p_vs_control"])

    # Sorted by mean, best first; ties share the lowest rank.
    assert list(table["loss"]) == ["lovasz", "focal", "answer_ce", "ce"]
    assert list(table["rank"]) == [1, 2, 3, 3]
    for _, row in table.iterrows():
        assert row["ci_low"] <= row["mean"] <= row["ci_high"]
    assert by.loc["focal", "delta_ci_low"] <= 0.375 <= by.loc["focal", "delta_ci_high"]
    # focal's d = [0, 1, 0, .5] lies in [0, 1], so must every resampled mean.
    assert 0.0 <= by.loc["focal", "delta_ci_low"] and by.loc["focal", "delta_ci_high"] <= 1.0


def test_verdict_is_deterministic_per_seed(small: pd.DataFrame) -> None:
    a = verdict(small, n_boot=500, seed=7)
    b = verdict(small, n_boot=500, seed=7)
    pd.testing.assert_frame_equal(a, b)


def test_holm_step_down_is_monotone_and_capped() -> None:
    # sorted .01, .02, .04 over m=3: .03, max(.03, .04) = .04, max(.04, .04) = .04; NaN stays.
    out = holm([0.04, 0.01, math.nan, 0.02])
    assert out[0] == pytest.approx(0.04) and out[1] == pytest.approx(0.03)
    assert out[3] == pytest.approx(0.04) and math.isnan(out[2])
    # .3 and .4 over m=2: .6, max(.6, .4) = .6 (monotone, not .4).
    assert list(holm([0.3, 0.4])) == pytest.approx([0.6, 0.6])
    assert list(holm([0.6, 0.9])) == pytest.approx([1.0, 1.0])


def test_sign_flip_exact_and_monte_carlo() -> None:
    rng = np.random.default_rng(0)
    assert sign_flip_test(np.zeros(5), rng) == 1.0
    # 16 non-zero (zeros padded) are enumerated: 2 of 2**16 sign vectors reach |sum| = 16.
    d = np.r_[np.ones(16), np.zeros(20)]
    assert sign_flip_test(d, rng, n_boot=100) == 2 / 2**16
    # 20 non-zero go to Monte Carlo: no random flip reaches 20 -> p = 1 / (1 + n_boot).
    assert sign_flip_test(np.ones(20), np.random.default_rng(1), n_boot=999) == 1 / 1000
    # Monte Carlo agrees with the exact value on 17 non-zero differences.
    d17 = np.array([1, -1, 0.5, 1, 1, -0.5, 1, 1, -1, 0.5, 1, 1, 1, -1, 0.5, 1, 1.0])
    signs = 1 - 2 * ((np.arange(2**17)[:, None] >> np.arange(17)) & 1)
    exact = np.mean(np.abs(signs @ d17) >= abs(d17.sum()) - 1e-12)
    mc = sign_flip_test(d17, np.random.default_rng(2), n_boot=20_000)
    assert mc == pytest.approx(exact, abs=0.01)


def test_bootstrap_resamples_seeds_and_questions() -> None:
    # Seed 0 always right, seed 1 always wrong: resampling seeds gives means 0 (1/4), .5 (1/2)
    # and 1 (1/4), so the 95% interval is [0, 1]; resampling questions alone would give [.5, .5].
    x = np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    assert bootstrap_ci(x, np.random.default_rng(0), n_boot=4000) == (0.0, 1.0)
    # Paired over questions, d = [1, 0, 0, 0]: k draws of question 0 ~ Binomial(4, 1/4);
    # P(k = 0) = .32 > .025 and P(k >= 3) = .051 > .025 > P(k = 4) = .004 -> [0, .75].
    assert paired_ci(np.array([1.0, 0, 0, 0]), np.random.default_rng(0), n_boot=10_000) == (
        0.0,
        0.75,
    )


def test_ci_contains_mean_and_narrows_with_more_questions(tmp_path: Path) -> None:
    def width(repeat: int, where: str) -> tuple[float, float, float]:
        fam = {s: v * repeat for s, v in FOCAL.items()}
        ce = {s: v * repeat for s, v in CE.items()}
        df = load_confirmed(write_experiment(tmp_path / where, [run("ce", ce), run("focal", fam)]))
        row = verdict(df, n_boot=2000).set_index("loss").loc["focal"]
        assert row["ci_low"] <= row["mean"] <= row["ci_high"]
        assert row["delta_ci_low"] <= row["delta_vs_ce"] <= row["delta_ci_high"]
        return (
            row["ci_high"] - row["ci_low"],
            row["delta_ci_high"] - row["delta_ci_low"],
            row["p_value"],
        )

    few, few_delta, few_p = width(1, "few")
    many, many_delta, many_p = width(25, "many")
    # The joint interval keeps its seed part (two seeds, means .75 and 1), so it narrows less
    # than the paired one, which resamples questions only: 1/sqrt(25) of the width, roughly.
    assert many < few
    assert many_delta < few_delta / 2
    assert many_p < 0.01 < few_p  # the same effect on 100 questions is significant


def test_mismatched_questions_raise(tmp_path: Path) -> None:
    exp = write_experiment(
        tmp_path / "a", [run("ce", CE), run("focal", {0: [1, 1, 1, 1, 0], 1: [1, 1, 0, 1, 1]})]
    )
    with pytest.raises(LossearchError, match="4 test questions|5 vs 4|4 vs 5"):
        verdict(load_confirmed(exp), n_boot=100)

    other = ["7", "8", "9", "10"]
    exp = write_experiment(tmp_path / "b", [run("ce", CE), run("focal", FOCAL, references=other)])
    with pytest.raises(LossearchError, match="references differ"):
        verdict(load_confirmed(exp), n_boot=100)


def test_no_baseline_gives_nan_deltas(tmp_path: Path) -> None:
    df = load_confirmed(write_experiment(tmp_path / "e", [run("focal", FOCAL), run("dice", CE)]))
    table = verdict(df, n_boot=200)
    assert list(table["loss"]) == ["focal", "dice"]
    assert table["delta_vs_ce"].isna().all() and table["p_value"].isna().all()
    assert table["p_holm"].isna().all() and table["delta_vs_control"].isna().all()
    assert table["mean"].tolist() == pytest.approx([0.875, 0.5])


def test_picks_configuration_by_validation_not_test(tmp_path: Path) -> None:
    # focal's search rank 1 is test-better (all right) but validation-worse (.4 < .8).
    exp = write_experiment(
        tmp_path / "v",
        [
            run("ce", CE),
            run("focal", LOVASZ, trial_id="testbest", rank=1, val={0: 0.4, 1: 0.4}),
            run("focal", CE, trial_id="valbest", rank=2, val={0: 0.7, 1: 0.9}),
        ],
    )
    df = load_confirmed(exp)
    assert sorted(df.loc[df["loss"] == "focal", "config_id"].unique()) == ["testbest", "valbest"]
    row = verdict(df, n_boot=200).set_index("loss").loc["focal"]
    assert row["config_id"] == "valbest"
    assert row["mean"] == pytest.approx(0.5) and row["delta_vs_ce"] == 0.0


def test_load_confirmed_columns_and_unfinished_run(tmp_path: Path) -> None:
    exp = write_experiment(
        tmp_path / "exp",
        [run("ce", CE, lr_edge=True), run("focal", FOCAL), run("dice", CE, finished=False)],
    )
    df = load_confirmed(str(exp))
    assert list(df.columns) == [
        "experiment", "task", "model", "loss", "config_id", "run_id", "rank", "seed", "epochs",
        "test.exact_match", "test.formula_iou", "val.exact_match", "predictions", "lr_edge",
    ]  # fmt: skip
    assert sorted(df["loss"].unique()) == ["ce", "focal"]  # dice has no result.json yet
    assert len(df) == 4 and df["seed"].tolist() == [0, 1, 0, 1]
    assert (df["experiment"] == str(exp)).all()
    ce = df[df["loss"] == "ce"]
    assert ce["test.exact_match"].tolist() == [0.5, 0.5] and ce["lr_edge"].all()
    assert ce["run_id"].iloc[0] == "ce-ce1" and ce["config_id"].iloc[0] == "ce1"
    assert int(ce["rank"].iloc[0]) == 1 and int(ce["epochs"].iloc[0]) == 2
    for path in df["predictions"]:
        assert Path(path).is_absolute() and Path(path).is_file()
    focal = df[df["loss"] == "focal"].sort_values("seed")
    x = read_correctness(focal["predictions"].tolist(), "exact_match")
    assert x.shape == (2, 4)
    assert x.tolist() == [FOCAL[0], FOCAL[1]]
    assert read_correctness(focal["predictions"].tolist(), "formula_iou")[1, 2] == 0.0


def test_load_confirmed_errors(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(LossearchError, match="no confirm/confirm.yaml.*plain"):
        load_confirmed(plain)
    exp = write_experiment(tmp_path / "pending", [run("ce", CE, finished=False)])
    with pytest.raises(LossearchError, match="no finished run"):
        load_confirmed([exp])


def test_read_correctness_errors(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text('{"index": 0, "exact_match": 1}\n{"index": 1, "exact_match": 0}\n')
    b.write_text('{"index": 0, "exact_match": 1}\n')
    with pytest.raises(LossearchError, match="1 questions"):
        read_correctness([str(a), str(b)], "exact_match")
    with pytest.raises(LossearchError, match="no numeric 'formula_iou'"):
        read_correctness([str(a)], "formula_iou")
    # Lines out of order are put back in the test set's order.
    b.write_text('{"index": 1, "exact_match": 0}\n{"index": 0, "exact_match": 1}\n')
    assert read_correctness([str(a), str(b)], "exact_match").tolist() == [[1, 0], [1, 0]]


def test_write_and_format(small: pd.DataFrame, tmp_path: Path) -> None:
    table = verdict(small, n_boot=300)
    path = write_verdict(table, tmp_path / "out" / "verdict.csv")
    back = pd.read_csv(path)
    assert list(back.columns) == VERDICT_COLUMNS and len(back) == len(table)
    row = {"delta_vs_ce": 0.12, "delta_ci_low": 0.05, "delta_ci_high": 0.19}
    assert format_delta(row) == "+0.120 [+0.050, +0.190]"
    assert format_delta({"delta_vs_ce": math.nan, "delta_ci_low": 0, "delta_ci_high": 0}) == "n/a"
    ce = table.set_index("loss").loc["ce"]
    assert format_delta(ce, "control") == "+0.000 [+0.000, +0.000]"
