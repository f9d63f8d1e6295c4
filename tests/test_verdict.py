"""The confirm-stage loader and the verdict statistics, on small hand-computed experiments."""

from __future__ import annotations

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
    crossed_mean_variance,
    format_delta,
    holm,
    paired_t,
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


@pytest.fixture
def small(tmp_path: Path) -> pd.DataFrame:
    exp = write_experiment(
        tmp_path / "exp",
        [run("ce", CE), run("focal", FOCAL), run("lovasz", LOVASZ), run("answer_ce", CE)],
    )
    return load_confirmed(exp)


def _t_p(delta: float, var: float, df: float) -> float:
    from scipy import stats

    return float(2 * stats.t.sf(abs(delta) / math.sqrt(var), df))


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

    # focal - CE, seed by seed (both trained under seeds 0 and 1): D = [[0, 1, 1, 0],
    # [0, 1, -1, 1]], mean .375; seed means .5, .25; question means 0, 1, 0, .5.
    # MS_S = 4 (.125^2 + .125^2) / 1 = .125; MS_Q = 2 (.375^2 + .625^2 + .375^2 + .125^2) / 3
    # = .458333; residuals +-[.125, .125, .875, .625] (sign: -, -, +, - in seed 0) ->
    # MS_E = 2 (.015625 + .015625 + .765625 + .390625) / 3 = .791667. MS_S + MS_Q - MS_E < MS_Q:
    # floored at MS_Q -> var = .458333 / 8; df = .458333^2 / (.125^2 + .458333^2/3
    # + .791667^2/3) = .713169.
    var, df = crossed_mean_variance(np.array([[0, 1, 1, 0], [0, 1, -1, 1.0]]))
    assert var == pytest.approx(0.458333 / 8, rel=1e-5) and df == pytest.approx(0.713169, rel=1e-5)
    assert by.loc["focal", "p_value"] == pytest.approx(_t_p(0.375, var, df))
    # lovasz - CE: D = [[0, 1, 1, 0], [0, 1, 0, 1]], mean .5; seed means .5, .5 (MS_S = 0);
    # question means 0, 1, .5, .5: MS_Q = 2 (.25 + .25 + 0 + 0) / 3 = 1/3; residuals
    # +-[0, 0, .5, .5]: MS_E = 1 / 3. The sum is 0 < MS_Q: var = (1/3) / 8;
    # df = (1/3)^2 / (0 + (1/3)^2/3 + (1/3)^2/3) = 1.5.
    var_l, df_l = crossed_mean_variance(np.array([[0, 1, 1, 0], [0, 1, 0, 1.0]]))
    assert var_l == pytest.approx(1 / 24) and df_l == pytest.approx(1.5)
    assert by.loc["lovasz", "p_value"] == pytest.approx(_t_p(0.5, var_l, df_l))
    assert by.loc["answer_ce", "p_value"] == 1.0  # every difference zero
    assert math.isnan(by.loc["ce", "p_value"]) and math.isnan(by.loc["ce", "p_holm"])
    assert by.loc["ce", "delta_vs_ce"] == 0.0

    # Holm over the 3 non-baseline families, in the p-values' order, step-down, capped at 1.
    p = sorted([by.loc[f, "p_value"] for f in ("focal", "lovasz", "answer_ce")])
    adjusted = np.minimum(1, np.maximum.accumulate([3 * p[0], 2 * p[1], 1 * p[2]]))
    assert sorted(by.loc[["focal", "lovasz", "answer_ce"], "p_holm"]) == pytest.approx(adjusted)

    # The control (answer_ce has CE's answers): same deltas; NaN on the control's own row.
    assert by.loc["focal", "delta_vs_control"] == pytest.approx(0.375)
    assert by.loc["focal", "p_vs_control"] == pytest.approx(by.loc["focal", "p_value"])
    assert by.loc["ce", "delta_vs_control"] == 0.0 and by.loc["ce", "p_vs_control"] == 1.0
    assert math.isnan(by.loc["answer_ce", "delta_vs_control"])
    assert math.isnan(by.loc["answer_ce", "p_vs_control"])

    # Sorted by mean, best first; ties share the lowest rank.
    assert list(table["loss"]) == ["lovasz", "focal", "answer_ce", "ce"]
    assert list(table["rank"]) == [1, 2, 3, 3]
    for _, row in table.iterrows():
        assert row["ci_low"] <= row["mean"] <= row["ci_high"]
    assert by.loc["focal", "delta_ci_low"] <= 0.375 <= by.loc["focal", "delta_ci_high"]


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


def test_crossed_variance_of_pure_seed_and_pure_question_tables() -> None:
    # Two seeds, one always right, one always wrong: the mean's variance is the seeds' alone,
    # (sd of [1, 0] = .7071)^2 / 2 = .25, with 1 df (two seeds).
    assert crossed_mean_variance(np.array([[1.0, 1, 1], [0, 0, 0]])) == pytest.approx((0.25, 1))
    # Every seed gives the same answers: the questions' variance alone, var([1, 0, 1, 0]) / 4
    # = (1/3) / 4, with Q - 1 = 3 df; one seed alone is the same.
    same = np.array([[1.0, 0, 1, 0], [1, 0, 1, 0]])
    assert crossed_mean_variance(same) == pytest.approx((1 / 12, 3))
    assert crossed_mean_variance(same[:1]) == pytest.approx((1 / 12, 3))


def test_paired_t_counts_the_seeds_a_question_only_test_ignores() -> None:
    """Seed 0 of the family is 20 points better than CE's, seed 1 20 points worse, on every
    one of 100 questions: the question-only view sees 0 difference too, but a family whose
    seeds disagree like this, paired seed by seed, has a wide interval; a consistent +10
    points over 3 seeds is significant."""
    rng = np.random.default_rng(0)
    ce = (rng.random((2, 100)) < 0.5).astype(float)
    noisy = ce.copy()
    noisy[0, :20] = 1 - noisy[0, :20]
    low, high, p = paired_t(noisy, ce)
    assert low < 0 < high and p > 0.3
    base = (rng.random((3, 200)) < 0.5).astype(float)
    better = base.copy()
    for seed in range(3):  # 20 more questions right in every seed: +0.1 exactly
        better[seed, np.flatnonzero(base[seed] == 0)[:20]] = 1.0
    low, high, p = paired_t(better, base)
    assert 0 < low < 0.1 < high and p < 0.01
    # seeds not shared: each side's own seed variance counts (the seed-by-seed pairing that
    # cancels it is not there), the questions' covariance is subtracted: wider, still holding
    low_i, high_i, p_i = paired_t(better, base, same_seeds=False)
    assert low_i < 0.1 < high_i and high_i - low_i > high - low and p_i > p


def test_paired_t_holds_its_level_when_seeds_vary() -> None:
    """Simulated null: family and CE identical in distribution, each trained seed's accuracy
    shifted by its own draw (logit sd .3), 3 seeds, 500 questions. A sign-flip test over
    questions (the earlier verdict) rejected about half of these at 5 %; the t test on the
    seed and question variance must stay near 5 %."""
    from scipy.special import expit

    rng = np.random.default_rng(3)

    def family(difficulty: np.ndarray) -> np.ndarray:
        shift = rng.normal(0, 0.3, (3, 1))
        return (rng.random((3, 500)) < expit(0.4 + difficulty + shift)).astype(float)

    rejected = 0
    for _ in range(300):
        difficulty = rng.normal(0, 1.5, 500)
        rejected += paired_t(family(difficulty), family(difficulty))[2] < 0.05
    assert rejected / 300 <= 0.09


def test_bootstrap_resamples_seeds_and_questions() -> None:
    # Seed 0 always right, seed 1 always wrong: resampling seeds gives means 0 (1/4), .5 (1/2)
    # and 1 (1/4), so the 95% interval is [0, 1]; resampling questions alone would give [.5, .5].
    x = np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    assert bootstrap_ci(x, np.random.default_rng(0), n_boot=4000) == (0.0, 1.0)


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
    # Both keep a seed part (two seeds), so neither shrinks by the full 1/sqrt(25); the
    # paired one narrows most (its seed-by-seed differences, .5 and .25, agree in sign).
    assert many < few
    assert many_delta < few_delta / 2
    assert many_p < few_p


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


def test_questions_without_references_are_not_paired_by_position(tmp_path: Path) -> None:
    """Only references tell that question q is the same on both sides: files without them
    (another tool's, say) are refused, not paired line by line."""
    exp = write_experiment(tmp_path / "r", [run("ce", CE), run("focal", FOCAL)])
    for path in (exp / "confirm" / "runs").glob("focal-*/test_predictions.seed*.jsonl"):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "reference"})
                                + "\n" for r in rows))
    with pytest.raises(LossearchError, match="no 'reference' to match the questions by"):
        verdict(load_confirmed(exp), n_boot=100)


def test_a_non_finite_score_is_named(tmp_path: Path) -> None:
    exp = write_experiment(tmp_path / "n", [run("ce", CE), run("focal", FOCAL)])
    path = next((exp / "confirm" / "runs").glob("focal-*/test_predictions.seed0.jsonl"))
    path.write_text(path.read_text().replace('"exact_match": 1.0', '"exact_match": NaN', 1))
    with pytest.raises(LossearchError, match="focal's predictions hold a exact_match that is not"):
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


def test_a_configuration_missing_a_seeds_validation_is_not_judged_on_the_others(
    tmp_path: Path,
) -> None:
    """[0.9, missing] is one seed's score: it does not beat [0.6, 0.6]."""
    exp = write_experiment(
        tmp_path / "m",
        [
            run("ce", CE),
            run("focal", LOVASZ, trial_id="oneseed", rank=1, val={0: 0.9}),
            run("focal", CE, trial_id="both", rank=2, val={0: 0.6, 1: 0.6}),
        ],
    )
    row = verdict(load_confirmed(exp), n_boot=200).set_index("loss").loc["focal"]
    assert row["config_id"] == "both"


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


def test_printed_verdict_names_a_family_with_fewer_seeds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The title once gave the most seeds of any family: a 1-seed family read as 2."""
    from lossearch.search.verdict_report import finish_confirm

    exp = write_experiment(tmp_path / "s", [run("ce", CE), run("focal", {0: FOCAL[0]})])
    finish_confirm(str(exp), "exact_match")
    out = " ".join(capsys.readouterr().out.split())
    assert "4 questions, 1-2 seeds, 95% intervals" in out
    assert "focal (1 seed)" in out and "ce (" not in out
