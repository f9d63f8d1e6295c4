"""``--storage s3://bucket/prefix``: search, driver SIGKILL, resume, export and analyze, all
from a bucket on a real S3-compatible server (moto's server mode on 127.0.0.1, started and
stopped by its pid; see ``tests/clusters.py``, whose search on the 2-node cluster is the one
checked here).

Endpoint and credentials come from the standard AWS environment variables only
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``,
``AWS_ENDPOINT_URL``): ``pyarrow.fs.FileSystem.from_uri`` honours ``AWS_ENDPOINT_URL``, and
everything that touches storage goes through it (Ray Tune, Ray Train, the driver's
``lossearch_search.yaml``, ``analysis``). A URI may instead carry
``?endpoint_override=HOST:PORT&scheme=http``: ``analysis``, export and the analysis report
are checked (in process) with such a URI and no ``AWS_ENDPOINT_URL`` at all.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests import procs
from tests.clusters import BUCKET, EPOCHS, EXP_NAME, N_TRIALS, s3_files, s3_read, s3fs

pytestmark = pytest.mark.slow


def test_search_and_resume_live_in_the_bucket(cluster_s3_search: dict, moto_s3: dict) -> None:
    search = cluster_s3_search
    assert search["resume_rc"] == 0, search["resume_log"][-3000:]
    # nothing of the experiment on local disk: only the space file and the driver's log
    assert search["local_after_search"] == ["search.log", "space.yaml"]
    files = s3_files(s3fs(moto_s3["port"]), search["prefix"])
    names = {p.rsplit("/", 1)[-1] for p in files}
    assert {"lossearch_search.yaml", "tuner.pkl"} <= names
    assert any(n.startswith("experiment_state-") for n in names)
    assert sum(p.endswith("/result.json") for p in files) == N_TRIALS
    assert len({p.split("/")[4] for p in files if "/trainings/" in p}) == N_TRIALS


def test_resumed_trial_went_on_from_its_s3_checkpoint(
    cluster_s3_search: dict, moto_s3: dict
) -> None:
    fs, at_kill = s3fs(moto_s3["port"]), cluster_s3_search["at_kill"]
    trial_dir = at_kill["path"].rsplit("/", 1)[0]
    histories = sorted(p for p in s3_files(fs, trial_dir) if p.endswith("/history.jsonl"))
    history = [json.loads(line) for line in s3_read(fs, histories[-1]).decode().splitlines()]
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1))
    killed_pid, kill_epoch = at_kill["metrics"]["worker_pid"], at_kill["metrics"]["epoch"]
    # epochs up to the checkpoint come from the killed driver's worker, the rest from a new one
    assert [h["worker_pid"] == killed_pid for h in history] == [
        e <= kill_epoch for e in range(1, EPOCHS + 1)
    ]


def test_export_and_analyze_from_the_bucket(cluster_s3_search: dict, tmp_path: Path) -> None:
    env, uri = cluster_s3_search["env"], cluster_s3_search["uri"]
    export, analyze = procs.run_clis(
        [["export", uri, "--out", "best.yaml"], ["analyze", uri, "--format", "json"]],
        cwd=tmp_path, env=env,
    )
    assert export.returncode == 0, export.stderr[-3000:]
    best = yaml.safe_load((tmp_path / "best.yaml").read_text())
    assert best["optim"]["epochs"] == EPOCHS and best["task"]["name"] == "arith"
    assert analyze.returncode == 0, analyze.stderr[-3000:]
    assert json.loads(analyze.stdout)
    assert (tmp_path / f"analysis-{EXP_NAME}" / "trials.parquet").exists()


def test_uri_with_endpoint_in_query_and_no_endpoint_variable(
    cluster_s3_search: dict, moto_s3: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In process (the command line is the same code): export and analysis read the bucket."""
    from analysis import load_trials
    from analysis.report import run_analysis
    from lossearch.search.export import export_best

    for key, value in moto_s3["env"].items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    uri = f"{cluster_s3_search['uri']}?endpoint_override=127.0.0.1:{moto_s3['port']}&scheme=http"
    assert load_trials([uri])["trial_id"].nunique() == N_TRIALS
    (path,) = export_best(uri, out=tmp_path / "best.yaml")
    assert yaml.safe_load(path.read_text())["optim"]["epochs"] == EPOCHS
    result = run_analysis([uri], out=tmp_path / "a")
    assert (result.out_dir / "trials.parquet").exists()


def test_bad_s3_locations_are_one_line_errors(
    cluster_s3_search: dict, moto_s3: dict, tmp_path: Path
) -> None:
    """Checked before Ray starts; the experiment in the bucket is left as it was."""
    fs = s3fs(moto_s3["port"])
    before = s3_files(fs, cluster_s3_search["prefix"])
    space = cluster_s3_search["root"] / "space.yaml"
    env = procs.lossearch_env(moto_s3["env"])
    cases = [
        (["search", "--space", space, "--storage", f"s3://{BUCKET}/searches", "--name",
          EXP_NAME], "already exists"),
        (["search", "--space", space, "--storage", "s3://no-such-bucket/s", "--name", "x"],
         "Bucket 'no-such-bucket' not found"),
        (["resume", "s3://no-such-bucket/x/y"], "not a lossearch experiment"),
        (["export", f"s3://{BUCKET}/nothing-here"], "not a lossearch experiment"),
    ]
    results = procs.run_clis([args for args, _ in cases], cwd=tmp_path, env=env)
    for (_, fragment), done in zip(cases, results, strict=True):
        line = procs.error_line(done)
        assert fragment in line, line
    assert s3_files(fs, cluster_s3_search["prefix"]) == before
    assert list(tmp_path.iterdir()) == []


def test_export_of_a_confirmed_experiment_in_the_bucket_is_the_confirmed_winner(
    moto_s3: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``confirm/verdict.csv`` and the winner's ``result.json`` are read from the bucket: the
    export is the verdict's rank 1 at its first confirm seed, not the search's best by
    validation (an experiment in a bucket once exported the latter, its verdict unread)."""
    import pandas as pd

    from lossearch.config import validate
    from lossearch.search.export import export_best

    for key, value in moto_s3["env"].items():
        monkeypatch.setenv(key, value)
    fs, uri = s3fs(moto_s3["port"]), f"s3://{BUCKET}/confirmed-only"
    config = validate({"loss": {"ce": 0.6, "focal": {"weight": 0.4}}}).to_dict()
    files = {
        "confirm/verdict.csv": pd.DataFrame(
            [{"rank": 1, "loss": "focal", "config_id": "0a1b2c3d", "split": "test",
              "mean": 0.375, "ci_low": 0.25, "ci_high": 0.5, "n_seeds": 2,
              "n_questions": 30},
             {"rank": 2, "loss": "ce", "config_id": "99999999", "split": "test",
              "mean": 0.125, "ci_low": 0.0, "ci_high": 0.25, "n_seeds": 2,
              "n_questions": 30}]
        ).to_csv(index=False),
        "confirm/runs/focal-0a1b2c3d/result.json": json.dumps(
            {"config": config, "seeds": [7, 8]}
        ),
    }
    for name, text in files.items():
        with fs.open_output_stream(f"{BUCKET}/confirmed-only/{name}") as f:
            f.write(text.encode())

    (path,) = export_best(uri, out=tmp_path / "best.yaml")

    first, _, body = path.read_text().partition("\n")
    assert "focal (trial 0a1b2c3d), confirmed on the test split: mean 0.3750" in first
    best = yaml.safe_load(body)
    assert best["seed"] == 7 and best["loss"]["focal"]["weight"] == 0.4


def test_search_into_the_bucket_refuses_to_end_on_a_users_best_yaml(
    moto_s3: dict, tmp_path: Path
) -> None:
    """An ``s3://`` search writes its best config to ``./best-<name>.yaml``; a user's own file
    there is named before the search starts, not found (and kept) once it has ended."""
    from tests.procs import REPO

    mine = tmp_path / "best-fresh.yaml"
    mine.write_text("# my notes\nlr: 1\n")
    done = procs.run_cli(
        ["search", "--space", str(REPO / "search_spaces" / "quick.yaml"), "--storage",
         f"s3://{BUCKET}/refused", "--name", "fresh"],
        cwd=tmp_path, env=procs.lossearch_env(moto_s3["env"]),
    )
    assert "best-fresh.yaml exists and is not a lossearch export" in procs.error_line(done)
    assert mine.read_text() == "# my notes\nlr: 1\n"
    assert s3_files(s3fs(moto_s3["port"]), f"{BUCKET}/refused") == {}


def test_resume_from_the_bucket_refuses_a_users_best_yaml_before_it_starts(
    cluster_s3_search: dict, moto_s3: dict, tmp_path: Path
) -> None:
    """``lossearch resume`` of an ``s3://`` search checks ``./best-<name>.yaml`` as the search's
    own start does: named in one line before anything runs, the user's file kept."""
    fs, prefix = s3fs(moto_s3["port"]), cluster_s3_search["prefix"]
    mine = tmp_path / f"best-{EXP_NAME}.yaml"
    mine.write_text("# my notes\nlr: 1\n")
    before = s3_files(fs, prefix)
    done = procs.run_cli(["resume", cluster_s3_search["uri"]], cwd=tmp_path,
                         env=cluster_s3_search["env"])
    assert done.returncode == 2
    assert f"best-{EXP_NAME}.yaml exists and is not a lossearch export" in procs.error_line(done)
    assert mine.read_text() == "# my notes\nlr: 1\n"
    assert s3_files(fs, prefix) == before
