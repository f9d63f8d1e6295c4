"""``--log-to``: TensorBoard and MLflow runs of a search and of ``lossearch train``, read back
with the trackers' own readers; the live view of that search; the missing-package error.

One tiny real search (2 trials, 1 epoch) through the CLI, shared by the search tests
and test_confirm.py (``cli_search`` in conftest).
W&B is not installed in the test environment: its path is the missing-package error only.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from lossearch.errors import LossearchError
from lossearch.tracking import TRACKERS, check_destination, numbers, parse_log_to
from tests.procs import error_line, run_cli

LINE = re.compile(r"^trial (\d)/2 (ce lr=5e-3|focal w_ce=0\.6 γ=2 lr=3e-3) → "
                  r"exact_match [\d.e-]+ \(1 epoch, \d+ s\)$")
MISSING = next((t for t, (module, _) in TRACKERS.items()
                if importlib.util.find_spec(module) is None), None)


def _scalars(logdir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    assert tag in acc.Tags()["scalars"], acc.Tags()["scalars"]
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def _mlflow_runs(root: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'tracking' / 'mlflow.db'}")
    runs = [r for e in client.search_experiments()
            for r in client.search_runs([e.experiment_id])]
    return client, runs


# --------------------------------------------------------------------------- no Ray


def test_parse_log_to_names_trackers_and_rejects_unknown_ones():
    present = [t for t in TRACKERS if t != MISSING]
    assert parse_log_to(" , ".join(present + present[:1])) == tuple(present)
    assert parse_log_to(None) == ()
    with pytest.raises(LossearchError, match="unknown tracker 'neptune'"):
        parse_log_to("tensorboard,neptune")


@pytest.mark.skipif(MISSING is None, reason="every tracker's package is installed")
def test_missing_package_names_the_extra():
    with pytest.raises(LossearchError, match=r"pip install 'lossearch\[\w+\]'"):
        parse_log_to(MISSING)


def test_trackers_need_local_storage_except_mlflow_with_its_own_uri(monkeypatch):
    check_destination(("tensorboard", "mlflow"), "/tmp/exp")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(LossearchError, match="needs a local --storage"):
        check_destination(("mlflow",), "s3://bucket/exp")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    check_destination(("mlflow",), "s3://bucket/exp")


def test_numbers():
    assert numbers({"loss": 1, "ok": True, "pid": "7", "nan": float("nan")}) == {"loss": 1.0}


@pytest.mark.skipif(MISSING is None, reason="every tracker's package is installed")
@pytest.mark.parametrize("command", ["search", "train", "confirm"])
def test_cli_missing_tracker_is_one_line_before_ray(command, tmp_path):
    args = {"search": ["--space", "none.yaml"], "train": [], "confirm": [str(tmp_path)]}
    done = run_cli([command, *args[command], "--log-to", MISSING], cwd=tmp_path, timeout=120)
    line = error_line(done)
    assert f"--log-to {MISSING} needs" in line and "lossearch[" in line
    assert "Started a local Ray" not in done.stderr + done.stdout
    assert not (tmp_path / "runs").exists() and not (tmp_path / "experiments").exists()


# --------------------------------------------------------------------------- a real search


@pytest.fixture(scope="module")
def tracked_search(cli_search):
    """conftest's ``cli_search``: 2 trials (``CLI_GRID``), 1 epoch, logged to both trackers."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    assert cli_search["log_to"] == ["tensorboard", "mlflow"]
    return cli_search["exp"], cli_search["done"]


@pytest.mark.slow
def test_search_prints_one_line_per_trial_and_no_result_boxes(tracked_search):
    _, done = tracked_search
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("trial ")]
    assert len(lines) == 2, done.stdout
    assert all(LINE.match(ln) for ln in lines), lines
    assert sorted(int(LINE.match(ln).group(1)) for ln in lines) == [1, 2]
    assert {LINE.match(ln).group(2) for ln in lines} == {"ce lr=5e-3", "focal w_ce=0.6 γ=2 lr=3e-3"}
    # each epoch's line comes from the driver, named by its trial, before the trial's end
    # line (printed by the trial process it could arrive late, after the final tables)
    out = done.stdout.splitlines()
    for name in ("ce lr=5e-3", "focal w_ce=0.6 γ=2 lr=3e-3"):
        first = f"[lossearch] {name}  epoch 1/1  loss "
        epoch = [i for i, ln in enumerate(out) if ln.startswith(first)]
        end = [i for i, ln in enumerate(out) if ln.startswith("trial ") and f" {name} → " in ln]
        assert len(epoch) == 1 and len(end) == 1 and epoch[0] < end[0], done.stdout
    assert not [ln for ln in out if ln.startswith("[lossearch] epoch")], done.stdout
    assert "A new study created" not in done.stdout + done.stderr  # Optuna's INFO lines
    assert "╭" not in done.stdout and "finished iteration" not in done.stdout
    assert "ignoring passed-in ProgressReporter" not in done.stdout + done.stderr
    # Ray's status table, with lossearch's columns
    header = next(ln for ln in done.stdout.splitlines() if "| family" in ln and "exact_m" in ln)
    assert re.search(r"status .*family .*w_ce .*focal\.γ .*lr .*epoch .*exact_match", header)
    # not Ray's local staging folder (/tmp/ray/session_*/artifacts/...) as the results' place
    assert "Result logdir" not in done.stdout


@pytest.mark.slow
def test_search_tensorboard_has_each_trials_epochs(tracked_search):
    exp, _ = tracked_search
    trials = sorted(p for p in (exp / "tracking" / "tensorboard").iterdir())
    assert len(trials) == 2
    for logdir in trials:
        assert [step for step, _ in _scalars(logdir, "ray/tune/exact_match")] == [1]
        assert len(_scalars(logdir, "ray/tune/loss")) == 1
    # Ray's default TBX files are not written into the trial folders as well
    assert not list(exp.glob("run_trial_*/events.out.tfevents*"))


@pytest.mark.slow
def test_search_mlflow_has_a_run_per_trial_with_params_and_history(tracked_search):
    exp, _ = tracked_search
    client, runs = _mlflow_runs(exp)
    assert len(runs) == 2
    lrs = {r.data.params["loss.family"]: float(r.data.params["optim.lr"]) for r in runs}
    assert lrs == {"ce": 5e-3, "focal": 3e-3}
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.tags["lossearch.stage"] == "search"
        history = client.get_metric_history(run.info.run_id, "exact_match")
        assert [m.step for m in history] == [1]
        assert client.get_metric_history(run.info.run_id, "loss.ce") or \
            client.get_metric_history(run.info.run_id, "loss")


@pytest.mark.slow
def test_a_resume_that_starts_over_logs_to_the_searchs_trackers(tracked_search, tmp_path):
    """A driver killed before Tune saved any state leaves only ``lossearch_search.yaml``;
    ``lossearch resume`` then starts the search over, with the trackers it was asked for
    (stored there as ``log_to``; the start-over once dropped them)."""
    import shutil

    import yaml

    exp, _ = tracked_search
    meta = yaml.safe_load((exp / "lossearch_search.yaml").read_text())
    assert meta["log_to"] == ["tensorboard", "mlflow"]
    again = tmp_path / "exps" / "again"
    again.mkdir(parents=True)
    shutil.copy(exp / "lossearch_search.yaml", again)
    done = run_cli(["resume", str(again)], cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    logdirs = sorted((again / "tracking" / "tensorboard").iterdir())
    assert len(logdirs) == 2
    for logdir in logdirs:
        assert [step for step, _ in _scalars(logdir, "ray/tune/exact_match")] == [1]
    _, runs = _mlflow_runs(again)
    assert sorted(r.data.params["loss.family"] for r in runs) == ["ce", "focal"]


# --------------------------------------------------------------------------- lossearch train


@pytest.mark.slow
def test_train_logs_each_epoch_to_tensorboard_and_mlflow(tmp_path):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    run = tmp_path / "run"
    overrides = [f"{k}={v}" for k, v in {
        "task.name": "arith", "task.arith_train_size": 256, "task.val_size": 20,
        "task.test_size": 20, "task.arith_max_operand": 5, "task.arith_ops": "+-",
        "model.name_or_path": "tiny", "optim.epochs": 2, "optim.lr": 5e-3,
        "eval.max_new_tokens": 8,
    }.items()]
    done = run_cli(["train", "--out", run, "--log-to", "tensorboard,mlflow", *overrides],
                   cwd=tmp_path, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    logdir = run / "tracking" / "tensorboard" / "run"
    assert [step for step, _ in _scalars(logdir, "exact_match")] == [1, 2]
    assert [step for step, _ in _scalars(logdir, "loss")] == [1, 2]
    client, runs = _mlflow_runs(run)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert float(runs[0].data.params["optim.lr"]) == 5e-3
    assert runs[0].data.params["model.name_or_path"] == "tiny"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "loss")] == [1, 2]
