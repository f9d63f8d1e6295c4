"""``--storage s3://bucket/prefix``: search, driver SIGKILL, resume, export and analyze, all
from a bucket on a real S3-compatible server (moto's server mode on 127.0.0.1, started and
stopped by its pid).

Endpoint and credentials come from the standard AWS environment variables only
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``,
``AWS_ENDPOINT_URL``): ``pyarrow.fs.FileSystem.from_uri`` honours ``AWS_ENDPOINT_URL``, and
everything that touches storage goes through it (Ray Tune, Ray Train, the driver's
``lossearch_search.yaml``, ``analysis``). The driver passes its environment on to the local
Ray it starts. A URI may instead carry ``?endpoint_override=HOST:PORT&scheme=http``: export
and analyze are checked with such a URI and no ``AWS_ENDPOINT_URL`` at all.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import procs
from tests.procs import BIN, lossearch_env

pytestmark = pytest.mark.slow

BUCKET = "lossearch-test"
NAME = "s3exp"
EPOCHS = 3
SPACE = {
    "base": {
        "name": "s3",
        "task": {"name": "arith", "arith_train_size": 480, "eval_size": 20},
        "model": {"name_or_path": "tiny"},
        "optim": {"epochs": EPOCHS, "batch_size": 32, "warmup_steps": 0},
        "eval": {"max_new_tokens": 12},
        "scaling": {"num_workers": 1, "cpus_per_worker": 0.99},
    },
    "search": {"sampler": "grid", "seed": 0, "scheduler": "fifo", "max_concurrent": 2},
    "space": {"loss.family": {"choices": ["ce", "focal"]}, "optim.lr": 3e-3},
}
N_TRIALS = 2


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A moto S3 server on a free port, with the bucket; stopped by its pid at the end."""
    root = tmp_path_factory.mktemp("moto")
    port = procs.free_port()
    proc = procs.start(
        [BIN / "moto_server", "-H", "127.0.0.1", "-p", str(port)], log=root / "moto.log"
    )
    endpoint = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            urllib.request.urlopen(endpoint, timeout=1).close()
            return True
        except OSError:
            return False

    try:
        procs.wait_until(up, 60, "moto_server to listen")
        aws = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
        }
        import boto3

        boto3.client(
            "s3", endpoint_url=endpoint, region_name="us-east-1",
            aws_access_key_id="testing", aws_secret_access_key="testing",
        ).create_bucket(Bucket=BUCKET)
        yield {"port": port, "endpoint": endpoint, "env": aws, "pid": proc.pid}
    finally:
        procs.stop(proc)
    assert not procs.alive(proc.pid)


def _fs(moto: dict[str, Any]) -> Any:
    """The test's own view of the bucket (explicit options, no environment)."""
    import pyarrow.fs as pafs

    return pafs.S3FileSystem(
        access_key="testing", secret_key="testing", region="us-east-1",
        endpoint_override=f"127.0.0.1:{moto['port']}", scheme="http",
    )


def _files(fs: Any, prefix: str) -> dict[str, int]:
    import pyarrow.fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(prefix, recursive=True, allow_not_found=True))
    return {i.path: i.size for i in infos if i.type == pafs.FileType.File}


def _read(fs: Any, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


@pytest.fixture(scope="module")
def s3_search(moto: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Search into the bucket, SIGKILL the driver once a checkpoint is registered, resume."""
    root = tmp_path_factory.mktemp("s3")
    space = root / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    env = lossearch_env(moto["env"])
    storage = f"s3://{BUCKET}/searches"
    uri = f"{storage}/{NAME}"
    prefix = f"{BUCKET}/searches/{NAME}"
    fs = _fs(moto)
    seen: dict[str, Any] = {"root": root, "uri": uri, "prefix": prefix, "env": env}

    def snapshot_with_checkpoint() -> dict[str, Any] | None:
        for path in _files(fs, f"{prefix}/trainings"):
            if path.endswith("/checkpoint_manager_snapshot.json"):
                try:
                    snap = json.loads(_read(fs, path))
                except (OSError, ValueError):
                    continue
                if snap.get("checkpoint_results"):
                    return {"path": path, "metrics": snap["checkpoint_results"][-1]["metrics"]}
        return None

    log = root / "search.log"
    p = procs.start(
        [BIN / "lossearch", "search", "--space", space, "--storage", storage, "--name", NAME],
        log=log, cwd=root, env=env,
    )
    try:
        seen["at_kill"] = procs.wait_until(snapshot_with_checkpoint, 240, "a checkpoint in S3")
    finally:
        procs.kill_driver(p)
    seen["local_after_search"] = sorted(os.listdir(root))

    log = root / "resume.log"
    p = procs.start([BIN / "lossearch", "resume", uri], log=log, cwd=root, env=env)
    try:
        seen["resume_rc"] = procs.wait_exit(p, 400, log)
    finally:
        procs.kill_driver(p)
    seen["resume_log"] = log.read_text(errors="replace")
    return seen


def _cli(args: list[Any], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return procs.run_cli(args, cwd=cwd, env=env, timeout=180)


def test_search_and_resume_live_in_the_bucket(s3_search: dict, moto: dict) -> None:
    assert s3_search["resume_rc"] == 0, s3_search["resume_log"][-3000:]
    # nothing of the experiment on local disk: only the space file and the logs
    assert s3_search["local_after_search"] == ["search.log", "space.yaml"]
    files = _files(_fs(moto), s3_search["prefix"])
    names = {p.rsplit("/", 1)[-1] for p in files}
    assert "lossearch_search.yaml" in names and "tuner.pkl" in names
    assert any(n.startswith("experiment_state-") for n in names)
    assert sum(n == "result.json" for n in names) >= 1
    assert len({p.split("/")[4] for p in files if "/trainings/" in p}) == N_TRIALS


def test_resumed_trial_went_on_from_its_s3_checkpoint(s3_search: dict, moto: dict) -> None:
    fs, at_kill = _fs(moto), s3_search["at_kill"]
    trial_dir = at_kill["path"].rsplit("/", 1)[0]
    histories = sorted(p for p in _files(fs, trial_dir) if p.endswith("/history.jsonl"))
    history = [json.loads(line) for line in _read(fs, histories[-1]).decode().splitlines()]
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1))
    killed_pid, kill_epoch = at_kill["metrics"]["worker_pid"], at_kill["metrics"]["epoch"]
    # epochs up to the checkpoint come from the killed driver's worker, the rest from a new one
    assert [h["worker_pid"] == killed_pid for h in history] == [
        e <= kill_epoch for e in range(1, EPOCHS + 1)
    ]


def test_analysis_loads_trials_from_the_bucket(
    s3_search: dict, moto: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    from analysis import load_trials

    for key, value in moto["env"].items():
        monkeypatch.setenv(key, value)
    df = load_trials([s3_search["uri"]])
    assert df["trial_id"].nunique() == N_TRIALS
    assert set(df["status"]) == {"finished"}
    assert set(df["loss"]) == {"ce", "focal"}
    assert df["final.exact_match"].notna().all()


def test_export_and_analyze_from_the_bucket(s3_search: dict, tmp_path: Path) -> None:
    env = s3_search["env"]
    done = _cli(["export", s3_search["uri"], "--out", "best.yaml"], tmp_path, env)
    assert done.returncode == 0, done.stderr[-3000:]
    best = yaml.safe_load((tmp_path / "best.yaml").read_text())
    assert best["optim"]["epochs"] == EPOCHS and best["task"]["name"] == "arith"
    done = _cli(["analyze", s3_search["uri"], "--format", "json"], tmp_path, env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)
    assert (tmp_path / f"analysis-{NAME}" / "trials.parquet").exists()


def test_uri_with_endpoint_in_query_and_no_endpoint_variable(
    s3_search: dict, moto: dict, tmp_path: Path
) -> None:
    env = {k: v for k, v in s3_search["env"].items() if k != "AWS_ENDPOINT_URL"}
    uri = f"{s3_search['uri']}?endpoint_override=127.0.0.1:{moto['port']}&scheme=http"
    done = _cli(["export", uri, "--out", "best.yaml"], tmp_path, env)
    assert done.returncode == 0, done.stderr[-3000:]
    done = _cli(["analyze", uri, "--format", "json", "--out", "a"], tmp_path, env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "a" / "trials.parquet").exists()


def test_missing_bucket_is_one_line_error(moto: dict, tmp_path: Path) -> None:
    env = lossearch_env(moto["env"])
    done = _cli(["resume", "s3://no-such-bucket/x/y"], tmp_path, env)
    assert "not a lossearch experiment" in procs.error_line(done)


def test_search_into_an_existing_or_unreachable_s3_experiment_is_one_line_error(
    s3_search: dict, moto: dict, tmp_path: Path
) -> None:
    """Checked before Ray starts; the experiment in the bucket is left as it was."""
    fs = _fs(moto)
    before = _files(fs, s3_search["prefix"])
    space = s3_search["root"] / "space.yaml"
    env = s3_search["env"]
    for storage, name, fragment in [
        (f"s3://{BUCKET}/searches", NAME, "already exists"),
        ("s3://no-such-bucket/searches", "x", "Bucket 'no-such-bucket' not found"),
    ]:
        done = _cli(["search", "--space", space, "--storage", storage, "--name", name],
                    tmp_path, env)
        line = procs.error_line(done)
        assert fragment in line, line
    assert _files(fs, s3_search["prefix"]) == before
