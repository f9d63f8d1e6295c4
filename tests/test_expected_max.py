"""analysis.expected_max: the expected-maximum curve of Dodge et al. (2019), on known values."""

from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import expected_max, expected_max_curve, plot_expected_max
from analysis.expected_max import CURVE_COLUMNS, summarize_expected_max, trial_values
from analysis.rank import RankingWarning
from analysis.tables import expected_max_table
from lossearch.errors import LossearchError

sys.path.insert(0, str(Path(__file__).parent))
from test_analysis_frames import _text, frame, runs  # noqa: E402


def brute_force(values: list[float], k: int, mode: str = "max") -> float:
    """The mean of the best over all n**k equally likely ordered draws with replacement."""
    best = max if mode == "max" else min
    draws = list(itertools.product(values, repeat=k))
    return sum(best(d) for d in draws) / len(draws)


# --------------------------------------------------------------------------- the formula


def test_three_values_by_hand() -> None:
    v = [0.8, 0.2, 0.5]  # unsorted on purpose
    curve = expected_max_curve(v)
    # k = 2: the max is 0.2 only if both draws are 0.2 (1/9); 0.8 unless neither is (1 - 4/9)
    p_low, p_high = 1 / 9, 1 - (2 / 3) ** 2
    p_mid = 1 - p_low - p_high
    assert curve[1] == pytest.approx(0.2 * p_low + 0.5 * p_mid + 0.8 * p_high)
    # k = 3, with the weights (i/n)^k - ((i-1)/n)^k written out
    w = [(1 / 3) ** 3, (2 / 3) ** 3 - (1 / 3) ** 3, 1 - (2 / 3) ** 3]
    assert curve[2] == pytest.approx(0.2 * w[0] + 0.5 * w[1] + 0.8 * w[2])
    assert len(curve) == 3
    # mirrored for the minimum
    low = expected_max_curve(v, mode="min")
    assert low[1] == pytest.approx(0.8 * p_low + 0.5 * p_mid + 0.2 * p_high)


@pytest.mark.parametrize(
    "values", [[0.2, 0.5, 0.8], [1.0, 1.0, 2.0], [3.0, 3.0, 3.0], [0.7, -1.5, 0.7, 2.0]]
)
@pytest.mark.parametrize("mode", ["max", "min"])
def test_matches_enumerating_every_draw(values: list[float], mode: str) -> None:
    curve = expected_max_curve(values, ks=[1, 2, 3, 4], mode=mode)
    expected = [brute_force(values, k, mode) for k in (1, 2, 3, 4)]
    assert curve == pytest.approx(expected)


def test_ties() -> None:
    # [1, 1, 2], k = 2: the max is 2 unless both draws are a 1 (probability 4/9)
    assert expected_max_curve([1.0, 2.0, 1.0], ks=[2])[0] == pytest.approx(4 / 9 * 1 + 5 / 9 * 2)
    # all equal: every k gives that value
    assert expected_max_curve([0.3] * 4) == pytest.approx([0.3] * 4)


def test_k1_is_the_mean_and_large_k_the_best() -> None:
    rng = np.random.default_rng(1)
    v = rng.normal(0.5, 0.1, size=7)
    assert expected_max_curve(v, ks=[1])[0] == pytest.approx(v.mean())
    assert expected_max_curve(v, ks=[1], mode="min")[0] == pytest.approx(v.mean())
    assert expected_max_curve(v, ks=[5000])[0] == pytest.approx(v.max(), abs=1e-12)
    assert expected_max_curve(v, ks=[5000], mode="min")[0] == pytest.approx(v.min(), abs=1e-12)
    # at k = n, with replacement, the best value is still missed with probability (1-1/n)^n
    assert expected_max_curve(v)[-1] < v.max()


def test_monotone_in_k() -> None:
    rng = np.random.default_rng(2)
    for _ in range(20):
        v = rng.uniform(size=int(rng.integers(1, 12)))
        up = expected_max_curve(v, ks=range(1, 40))
        down = expected_max_curve(v, ks=range(1, 40), mode="min")
        assert np.all(np.diff(up) >= -1e-12) and np.all(np.diff(down) <= 1e-12)
        assert np.all(up <= v.max() + 1e-12) and np.all(down >= v.min() - 1e-12)
        assert down == pytest.approx(-expected_max_curve(-v, ks=range(1, 40)))


def test_bad_input() -> None:
    with pytest.raises(LossearchError, match="no values"):
        expected_max_curve([])
    with pytest.raises(LossearchError, match="NaN"):
        expected_max_curve([0.1, math.nan])
    with pytest.raises(LossearchError, match="at least 1"):
        expected_max_curve([0.1], ks=[0])
    with pytest.raises(LossearchError, match="mode"):
        expected_max_curve([0.1], mode="best")


# --------------------------------------------------------------------------- the frame


def _search() -> pd.DataFrame:
    return frame(
        runs("ce", [0.50, 0.52], epochs=4, **{"optim.lr": 1e-3}),
        runs("ce", [0.40, 0.44], epochs=4, **{"optim.lr": 1e-2}),
        runs("focal", [0.60, 0.62], epochs=4, **{"optim.lr": 1e-3}),
        runs("focal", [0.30, 0.34], epochs=4, **{"optim.lr": 1e-2}),
        runs("focal", [0.55, 0.57], epochs=4, **{"optim.lr": 3e-3}),
        runs("focal", [0.99, 0.99], epochs=2, **{"optim.lr": 2e-3}),  # finished, shorter
        runs("focal", [0.98, 0.98], epochs=2, status="pruned", **{"optim.lr": 4e-3}),
        runs("ce", [0.70, 0.70], model="big", epochs=4, **{"optim.lr": 1e-3}),
    )


def test_expected_max_frame() -> None:
    df = _search()
    with pytest.warns(RankingWarning) as record:
        curves = expected_max(df, "exact_match")
    notes = " ".join(str(w.message) for w in record)
    assert "1 trial pruned" in notes and "full budget of 4" in notes
    assert list(curves.columns) == ["task", "model", "loss", *CURVE_COLUMNS]
    sizes = curves.groupby(["model", "loss"])["n_trials"].first().to_dict()
    assert sizes == {("big", "ce"): 1, ("tiny", "ce"): 2, ("tiny", "focal"): 3}
    for (model, loss), grp in curves.groupby(["model", "loss"]):
        assert grp["k"].tolist() == list(range(1, sizes[(model, loss)] + 1))
    focal = curves[(curves["model"] == "tiny") & (curves["loss"] == "focal")]
    means = [0.61, 0.32, 0.56]  # each trial's mean over its seeds; the short ones left out
    assert focal["expected_max"].tolist() == pytest.approx(expected_max_curve(means).tolist())
    assert focal["expected_max"].iloc[0] == pytest.approx(np.mean(means))
    with pytest.warns(RankingWarning):
        lower = expected_max(df, "exact_match", mode="min")
    low = lower[(lower["model"] == "tiny") & (lower["loss"] == "focal")]
    assert low["expected_max"].tolist() == pytest.approx(
        expected_max_curve(means, mode="min").tolist()
    )


def test_trial_values_and_grouping() -> None:
    df = _search()
    values, notes = trial_values(df, "exact_match", by=("task", "model", "loss"))
    assert len(values) == 6 and any("full budget" in n for n in notes)
    assert sorted(values["value"]) == pytest.approx(sorted([0.51, 0.42, 0.61, 0.32, 0.56, 0.70]))
    with pytest.warns(RankingWarning):
        pooled = expected_max(df, "exact_match", by=("task", "model"))
    assert set(pooled["n_trials"]) == {5, 1}  # CE and focal trials of tiny together
    with pytest.raises(LossearchError, match="trial_id"):
        expected_max(df.drop(columns="trial_id"), "exact_match")
    with pytest.raises(LossearchError, match="unknown metric"):
        expected_max(df, "bleu")
    with pytest.warns(RankingWarning, match="pruned"):
        empty = expected_max(df[df["status"] == "pruned"], "exact_match")
    assert empty.empty and list(empty.columns) == ["task", "model", "loss", *CURVE_COLUMNS]


def test_summary_and_table() -> None:
    with pytest.warns(RankingWarning):
        curves = expected_max(_search(), "exact_match")
    summary = summarize_expected_max(curves)
    assert list(summary.columns) == ["task", "model", "loss", "n_trials", "k=1", "k=2", "k=n"]
    focal = summary.set_index(["model", "loss"]).loc[("tiny", "focal")]
    at = curves[(curves["model"] == "tiny") & (curves["loss"] == "focal")].set_index("k")
    assert focal["k=1"] == at.loc[1, "expected_max"] and focal["k=n"] == at.loc[3, "expected_max"]
    big = summary.set_index(["model", "loss"]).loc[("big", "ce")]
    assert math.isnan(big["k=2"]) and big["k=n"] == pytest.approx(0.70)
    text = _text(expected_max_table(curves, "exact_match"))
    assert "Expected best validation exact_match" in text
    assert f"{focal['k=2']:.4f}" in text


def test_plot(tmp_path: Path) -> None:
    with pytest.warns(RankingWarning):
        curves = expected_max(_search(), "exact_match")
    path = plot_expected_max(curves, tmp_path / "sub" / "expected_max.png", "exact_match")
    assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 1000
    with pytest.raises(LossearchError, match="nothing to plot"):
        plot_expected_max(curves.iloc[:0], tmp_path / "empty.png")
    assert not (tmp_path / "empty.png").exists()
