"""analysis on a real Ray Tune experiment directory (one small search per test session)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from analysis import (
    PartialExperimentWarning,
    load_history,
    load_trials,
    parameter_importance,
    plot_family_bars,
    plot_learning_curves,
    plot_metric_vs_lr,
    plot_optimization_history,
    rank_losses,
)
from analysis.load import BASE_COLUMNS, HISTORY_COLUMNS
from lossearch.errors import LossearchError

sys.path.insert(0, str(Path(__file__).parent))
import analysis_fixtures as fx  # noqa: E402

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
LOSSEARCH = REPO / ".venv" / "bin" / "lossearch"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="session")
def tune_experiment(tmp_path_factory: pytest.TempPathFactory, ray_local: object) -> Path:
    """The experiment directory of a real small search (see tests/analysis_fixtures.py).

    To run the real driver instead, return ``Path(lossearch.search.driver.run_search(...))``
    with 2 seeds; the tests below state the properties they need.
    """
    return fx.make_tune_experiment(tmp_path_factory.mktemp("tune"))


@pytest.fixture(scope="session")
def trials(tune_experiment: Path) -> pd.DataFrame:
    return load_trials(tune_experiment)


@pytest.fixture(scope="session")
def history(tune_experiment: Path) -> pd.DataFrame:
    return load_history(tune_experiment)


@pytest.fixture
def exp_copy(tune_experiment: Path, tmp_path: Path) -> Path:
    """A private copy of the experiment, for tests that damage or write into it."""
    return Path(shutil.copytree(tune_experiment, tmp_path / tune_experiment.name))


def _by_trial(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop_duplicates("trial_id").set_index("trial_id")


# --------------------------------------------------------------------------- load_trials


def test_one_row_per_trial_and_seed(trials: pd.DataFrame) -> None:
    assert trials["trial_id"].nunique() == fx.NUM_TRIALS
    assert len(trials) == fx.NUM_TRIALS * len(fx.SEEDS)
    for _, rows in trials.groupby("trial_id"):
        assert sorted(rows["seed"].tolist()) == fx.SEEDS
    assert str(trials["seed"].dtype) == "Int64"


def test_columns(trials: pd.DataFrame) -> None:
    assert list(trials.columns[: len(BASE_COLUMNS)]) == BASE_COLUMNS
    for col in ("param.optim.lr", "param.loss.focal.gamma", "param.loss.poly.epsilon"):
        assert col in trials.columns
    assert "param.seeds" not in trials.columns and "param.loss.family" not in trials.columns
    for metric in ("exact_match", "loss", "loss.ce", "tokens_per_s"):
        assert f"final.{metric}" in trials.columns and f"best.{metric}" in trials.columns
    assert not any(c.startswith(("final.seed", "best.seed", "final.epoch")) for c in trials)
    assert set(trials["experiment"]) == {fx.EXPERIMENT_NAME}
    assert set(trials["task"]) == {"arith"} and set(trials["model"]) == {"tiny"}
    assert set(trials["loss"]) == set(fx.FAMILIES)
    assert (trials["wall_s"] > 0).all() and trials["start_time"].notna().all()


def test_conditional_parameters_nan_where_not_applicable(trials: pd.DataFrame) -> None:
    focal = trials["loss"] == "focal"
    poly = trials["loss"] == "poly"
    assert trials.loc[focal, "param.loss.focal.gamma"].notna().all()
    assert trials.loc[~focal, "param.loss.focal.gamma"].isna().all()
    assert trials.loc[poly, "param.loss.poly.epsilon"].notna().all()
    assert trials.loc[~poly, "param.loss.poly.epsilon"].isna().all()
    assert trials["param.optim.lr"].notna().all()


def test_statuses(trials: pd.DataFrame) -> None:
    per_trial = _by_trial(trials)
    assert set(per_trial["status"]) <= {"finished", "pruned", "errored"}
    errored = per_trial[per_trial["status"] == "errored"]
    assert len(errored) == 1
    assert errored["param.optim.lr"].iloc[0] >= fx.ERROR_LR
    assert errored["error"].iloc[0] == f"RuntimeError: {fx.ERROR_MESSAGE}"
    assert errored["epochs"].iloc[0] == 1  # reported epoch 1, raised in epoch 2
    pruned = per_trial[per_trial["status"] == "pruned"]
    assert len(pruned) >= 1 and (pruned["epochs"] < fx.EPOCHS).all()
    finished = per_trial[per_trial["status"] == "finished"]
    assert len(finished) >= 1 and (finished["epochs"] == fx.EPOCHS).all()
    assert per_trial.loc[per_trial["status"] != "errored", "error"].isna().all()


def test_per_seed_values_and_best_direction(trials: pd.DataFrame) -> None:
    ok = trials[trials["status"] != "errored"]
    for _, rows in ok.groupby("trial_id"):
        s0 = rows[rows["seed"] == 0].iloc[0]
        s1 = rows[rows["seed"] == 1].iloc[0]
        # The trainable gives seed k exactly 0.01 * k more exact match (below the 1.0 cap).
        assert s1["final.exact_match"] - s0["final.exact_match"] == pytest.approx(0.01)
        assert s0["final.tokens_per_s"] == s1["final.tokens_per_s"] == 1000.0
    # exact_match rises and loss falls every epoch: best is the last epoch's for both, which
    # only holds if best.loss took the minimum and best.exact_match the maximum.
    assert (ok["best.exact_match"] == ok["final.exact_match"]).all()
    assert (ok["best.loss"] == ok["final.loss"]).all()
    cfg = _by_trial(ok).iloc[0]
    expected = (
        fx.quality(
            {
                "loss.family": cfg["loss"],
                "optim.lr": cfg["param.optim.lr"],
                "loss.focal.gamma": cfg["param.loss.focal.gamma"],
                "loss.poly.epsilon": cfg["param.loss.poly.epsilon"],
            }
        )
        * (cfg["epochs"] + 3)
        / (fx.EPOCHS + 3)
    )
    seed0 = ok[(ok["trial_id"] == cfg.name) & (ok["seed"] == 0)]["final.exact_match"].iloc[0]
    assert seed0 == pytest.approx(expected)


def test_pruned_trials_stop_early_and_still_rank(trials: pd.DataFrame) -> None:
    ranks = rank_losses(trials, "exact_match", by=("task", "model"))
    assert set(ranks["loss"]) <= set(fx.FAMILIES)
    assert ranks["rank"].min() == 1
    assert (ranks["n"] == len(fx.SEEDS)).all()


def test_non_experiment_path(tmp_path: Path) -> None:
    with pytest.raises(LossearchError, match=r"^not a Ray Tune experiment: "):
        load_trials(tmp_path)
    with pytest.raises(LossearchError, match=r"^experiment not found: .*missing$"):
        load_trials(tmp_path / "missing")


def test_several_experiments_and_file_uri(tune_experiment: Path, exp_copy: Path) -> None:
    other = exp_copy.rename(exp_copy.with_name("second"))
    both = load_trials([tune_experiment, f"file://{other}"])
    assert len(both) == 2 * fx.NUM_TRIALS * len(fx.SEEDS)
    assert set(both["experiment"]) == {fx.EXPERIMENT_NAME, "second"}


# --------------------------------------------------------------------------- damaged / partial


def _trial_dir(exp: Path, trial_id: str) -> Path:
    return next(p for p in exp.iterdir() if p.is_dir() and f"_{trial_id}_" in p.name)


def _state_file(exp: Path) -> Path:
    return sorted(exp.glob("experiment_state-*.json"))[-1]


def test_truncated_result_json_falls_back_to_state(trials: pd.DataFrame, exp_copy: Path) -> None:
    done = _by_trial(trials)
    trial_id = done[done["status"] == "finished"].index[0]
    (_trial_dir(exp_copy, trial_id) / "result.json").write_text("")
    with pytest.warns(PartialExperimentWarning, match="incomplete"):
        damaged = load_trials(exp_copy)
    before = trials[trials["trial_id"] == trial_id].sort_values("seed").reset_index(drop=True)
    after = damaged[damaged["trial_id"] == trial_id].sort_values("seed").reset_index(drop=True)
    assert len(after) == len(fx.SEEDS)
    assert (after["status"] == "finished").all() and (after["epochs"] == fx.EPOCHS).all()
    for col in ("final.exact_match", "best.exact_match", "best.loss"):
        assert after[col].tolist() == pytest.approx(before[col].tolist())


def _fail_before_first_report(exp: Path, trial_id: str) -> None:
    """Make ``trial_id`` of ``exp`` what Tune leaves of a trial that raised before reporting:
    status ERROR, an empty result.json, ``last_result = {"trial_id": ...}``, an error.txt."""
    trial_dir = _trial_dir(exp, trial_id)
    (trial_dir / "result.json").write_text("")
    (trial_dir / "error.txt").write_text(
        "Failure # 1 (occurred at 2026-11-27_07-23-19)\nTraceback (most recent call last):\n"
        '  File "trial.py", line 115, in _fit_in_trial\n    raise TrialDiverged(str(err))\n'
        "lossearch.search.trial.TrialDiverged: loss became nan\n"
    )
    state_path = _state_file(exp)
    state = json.loads(state_path.read_text())
    for entry in state["trial_data"]:
        tj, rj = json.loads(entry[0]), json.loads(entry[1])
        if tj["trial_id"] == trial_id:
            tj["status"] = "ERROR"
            rj["last_result"] = {"trial_id": trial_id}
            rj["error_filename"] = "error.txt"
        entry[0], entry[1] = json.dumps(tj), json.dumps(rj)
    state_path.write_text(json.dumps(state))


def test_trial_that_failed_before_its_first_report_loads_without_warning(
    trials: pd.DataFrame, exp_copy: Path
) -> None:
    """Tune's state keeps ``last_result = {"trial_id": ...}`` for a trial that raised before
    reporting (a loss NaN at step 3): an errored trial with no results, not a result.json
    to "fill in" (which warned that its history has gaps, at the end of every such search)."""
    done = _by_trial(trials)
    trial_id = done[done["status"] == "finished"].index[0]
    _fail_before_first_report(exp_copy, trial_id)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_trials(exp_copy)
    assert not [w for w in caught if issubclass(w.category, PartialExperimentWarning)]
    rows = loaded[loaded["trial_id"] == trial_id]
    assert set(rows["status"]) == {"errored"}
    assert rows["final.exact_match"].isna().all()


def test_a_search_whose_every_trial_failed_ends_saying_why(
    trials: pd.DataFrame, exp_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The end of ``lossearch search`` when no trial reported the metric (every trial failed
    early, e.g. on a data path): the trial count and the first error, not "unknown metric"."""
    from lossearch.errors import LossearchError
    from lossearch.search.report import finish_search

    for trial_id in trials["trial_id"].unique():
        _fail_before_first_report(exp_copy, trial_id)
    with pytest.raises(LossearchError) as err:
        finish_search(str(exp_copy))
    assert str(err.value) == (
        "no trial reported exact_match; the first error: "
        "lossearch.search.trial.TrialDiverged: loss became nan"
    )
    assert f"trials: {fx.NUM_TRIALS} errored" in capsys.readouterr().out
    assert not (exp_copy / "best.yaml").exists()


def test_the_end_of_a_search_prints_its_ranking_without_matplotlib(exp_copy: Path) -> None:
    """``finish_search`` (the end of every ``lossearch search``) ranks and exports from a
    real experiment in a fresh process that never loads matplotlib (0.4 s of imports the
    ranking table does not need; it loads with ``lossearch analyze``). SciPy loads here
    only because these trials have several seeds: the table's intervals need it."""
    probe = (
        "import sys\n"
        "from lossearch.search.report import finish_search\n"
        f"finish_search({str(exp_copy)!r})\n"
        "print('matplotlib' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=exp_copy, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Loss families ranked by exact_match (max; validation, 2 seeds)" in done.stdout
    assert (exp_copy / "best.yaml").is_file()
    assert done.stdout.strip().splitlines()[-1] == "False"


def test_still_running_experiment_loads_with_warning(trials: pd.DataFrame, exp_copy: Path) -> None:
    state_path = _state_file(exp_copy)
    state = json.loads(state_path.read_text())
    ids = [json.loads(t[0])["trial_id"] for t in state["trial_data"]]
    running, pending = ids[0], ids[1]
    for entry in state["trial_data"]:
        tj, rj = json.loads(entry[0]), json.loads(entry[1])
        if tj["trial_id"] == running:
            tj["status"] = "RUNNING"
        if tj["trial_id"] == pending:
            tj["status"] = "PENDING"
            rj["last_result"] = {}
            shutil.rmtree(_trial_dir(exp_copy, pending))
        entry[0], entry[1] = json.dumps(tj), json.dumps(rj)
    state_path.write_text(json.dumps(state))
    # and a newer state file that is still being written
    (exp_copy / "experiment_state-9999-12-31_23-59-59.json").write_text('{"trial_data": [')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        partial = load_trials(exp_copy)
    messages = " | ".join(str(w.message) for w in caught)
    assert "not finished" in messages and "unreadable" in messages
    assert all(issubclass(w.category, PartialExperimentWarning) for w in caught)
    assert pending not in set(partial["trial_id"])
    assert set(partial.loc[partial["trial_id"] == running, "status"]) == {"running"}
    assert partial["trial_id"].nunique() == fx.NUM_TRIALS - 1


# --------------------------------------------------------------------------- history


def test_history_long_format(trials: pd.DataFrame, history: pd.DataFrame) -> None:
    assert list(history.columns) == HISTORY_COLUMNS
    assert str(history["seed"].dtype) == "Int64"
    epochs = _by_trial(trials)["epochs"]
    for trial_id, rows in history.groupby("trial_id"):
        assert sorted(rows["epoch"].unique()) == list(range(1, epochs[trial_id] + 1))
    em = history[history["metric"] == "exact_match"]
    # per epoch: one row per seed plus the trial mean (seed NA)
    assert len(em) == int(epochs.sum()) * (len(fx.SEEDS) + 1)
    mean = em[em["seed"].isna()].set_index(["trial_id", "epoch"])["value"]
    per_seed = em[em["seed"].notna()].groupby(["trial_id", "epoch"])["value"].mean()
    assert mean.sort_index().to_numpy() == pytest.approx(per_seed.sort_index().to_numpy())
    assert set(history.loc[history["seed"].isna(), "metric"]) >= {"tokens_per_s", "loss.ce"}
    assert not set(history["metric"]) & {"time_total_s", "training_iteration", "epoch"}


def test_importance_on_real_trials(trials: pd.DataFrame) -> None:
    imp = parameter_importance(trials, "exact_match")
    counted = trials[trials["status"].isin(["finished", "pruned"])]
    varying = {
        c.removeprefix("param.")
        for c in counted.columns
        if c.startswith("param.") and counted[c].dropna().nunique() >= 2
    }
    assert {"optim.lr", "loss.family"} <= set(imp["param"])
    assert set(imp["param"]) == varying | {"loss.family"}
    assert imp["importance"].sum() == pytest.approx(1.0)


# --------------------------------------------------------------------------- plots and CLI


def test_plots_are_written(trials: pd.DataFrame, history: pd.DataFrame, tmp_path: Path) -> None:
    ranks = rank_losses(trials, "exact_match")
    paths = [
        plot_family_bars(ranks, tmp_path / "a" / "bars.png", "exact_match"),
        plot_metric_vs_lr(trials, tmp_path / "lr.png", "exact_match"),
        plot_optimization_history(trials, tmp_path / "hist.png", "exact_match", "max"),
        plot_learning_curves(trials, history, tmp_path / "curves.png", "exact_match", "max"),
    ]
    for path in paths:
        assert path.is_file() and path.stat().st_size > 1000
        assert path.read_bytes()[:8] == PNG


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LOSSEARCH), *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def test_cli_analyze_end_to_end(tune_experiment: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = _run("analyze", str(tune_experiment), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "focal" in proc.stdout and "report:" in proc.stdout
    for name in ("trials.parquet", "trials.csv", "rankings.csv", "report.md", "bars.png"):
        assert (out / name).is_file(), name
    assert len(pd.read_parquet(out / "trials.parquet")) == fx.NUM_TRIALS * len(fx.SEEDS)
    report = (out / "report.md").read_text()
    links = re.findall(r"\]\(([^)]+)\)", report)
    assert any(link.endswith(".png") for link in links)
    for link in links:
        assert (out / link).is_file(), link
    assert "| loss |" in report or "| task | model | loss |" in report


def test_cli_analyze_json_and_default_out(exp_copy: Path) -> None:
    proc = _run("analyze", str(exp_copy), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    rankings = json.loads(proc.stdout)
    assert {r["loss"] for r in rankings} <= set(fx.FAMILIES)
    expected = {"task", "model", "rank", "delta_vs_ce", "delta_ci_low", "delta_ci_high", "p_value"}
    assert expected <= set(rankings[0])
    ce = [r for r in rankings if r["loss"] == "ce"]
    assert ce and ce[0]["p_value"] is None  # NaN becomes null
    assert (exp_copy / "analysis" / "report.md").is_file()


def test_cli_not_an_experiment_exits_2(tmp_path: Path) -> None:
    proc = _run("analyze", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: not a Ray Tune experiment: {tmp_path}"
    assert proc.stdout == ""


def test_cli_unknown_metric_exits_2(tune_experiment: Path, tmp_path: Path) -> None:
    proc = _run("analyze", str(tune_experiment), "--out", str(tmp_path), "--metric", "nope")
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "unknown metric 'nope'" in proc.stderr


# --------------------------------------------------------------------------- S3 (moto)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    server = REPO / ".venv" / "bin" / "moto_server"
    if not server.exists():
        pytest.skip("moto_server not installed")
    port = _free_port()
    proc = subprocess.Popen(
        [str(server), "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 20
        while time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        for key, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
        }.items():
            monkeypatch.setenv(key, value)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_load_from_s3(tune_experiment: Path, s3_endpoint: str, tmp_path: Path) -> None:
    import pyarrow.fs as pafs

    fs = pafs.S3FileSystem(endpoint_override=s3_endpoint, allow_bucket_creation=True)
    fs.create_dir("lossearch")
    pafs.copy_files(
        str(tune_experiment),
        f"lossearch/searches/{fx.EXPERIMENT_NAME}",
        source_filesystem=pafs.LocalFileSystem(),
        destination_filesystem=fs,
    )
    uri = f"s3://lossearch/searches/{fx.EXPERIMENT_NAME}"
    remote = load_trials(uri)
    local = load_trials(tune_experiment)
    cols = ["trial_id", "seed", "status", "best.exact_match"]
    pd.testing.assert_frame_equal(
        remote[cols].sort_values(["trial_id", "seed"]).reset_index(drop=True),
        local[cols].sort_values(["trial_id", "seed"]).reset_index(drop=True),
    )
    assert len(load_history(uri)) == len(load_history(tune_experiment))
    env = {**os.environ}
    proc = subprocess.run(
        [str(LOSSEARCH), "analyze", uri, "--format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)
    assert (tmp_path / f"analysis-{fx.EXPERIMENT_NAME}" / "report.md").is_file()
    assert not math.isnan(remote["wall_s"].iloc[0])
