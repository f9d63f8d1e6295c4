"""Session fixtures shared by ``test_cluster.py`` and ``test_s3.py`` (registered in conftest).

One search serves both, because a real cluster needs shared storage anyway: a 2-node Ray
cluster on this machine, an S3 server (moto), and a search that runs on the cluster and keeps
its experiment in the bucket, whose driver is SIGKILLed once a checkpoint is in the bucket and
which ``lossearch resume`` then finishes.

* ``moto_s3``: ``moto_server -H 127.0.0.1 -p <free port>``, started and stopped by its pid;
  the bucket created with boto3; the ``AWS_*`` variables (``AWS_ENDPOINT_URL`` included)
  that everything else gets.
* ``ray_cluster``: ``ray start --head ... --block`` and ``ray start --address ... --block``,
  1 CPU each, a temp dir each, no dashboard, each a subprocess whose pid is the one stopped
  (SIGTERM, then SIGKILL, then what is left of its session and any process naming its temp
  dir). Both nodes get the ``AWS_*`` variables (Ray workers write checkpoints to the bucket)
  and one token for Ray's token authentication (on by default for ``ray start --head`` in
  Ray 2.60; a token of our own, not the shared ``~/.ray/auth_token``).
* ``cluster_s3_search``: the search (2 trials at a time; training workers of 0.9 CPU, so
  one per node), its SIGKILL and the resume.
"""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import procs
from tests.procs import BIN, lossearch_env

BUCKET = "lossearch-test"
EXP_NAME = "clustered"
EPOCHS = 3
SEARCH_SPACE = {
    "base": {
        "name": "cluster",
        "task": {"name": "arith", "arith_train_size": 480, "val_size": 20},
        "model": {"name_or_path": "tiny"},
        "optim": {"epochs": EPOCHS, "batch_size": 32, "warmup_steps": 0},
        "eval": {"max_new_tokens": 12},
        "scaling": {"num_workers": 1, "cpus_per_worker": 0.9},
    },
    "search": {"sampler": "grid", "seed": 0, "scheduler": "fifo", "max_concurrent": 2},
    "space": {"loss.family": {"choices": ["ce", "focal"]}, "optim.lr": 3e-3},
}
N_TRIALS = 2


# --------------------------------------------------------------------------- S3


def s3fs(port: int) -> Any:
    """The tests' own view of the bucket (explicit options, no environment)."""
    import pyarrow.fs as pafs

    return pafs.S3FileSystem(
        access_key="testing", secret_key="testing", region="us-east-1",
        endpoint_override=f"127.0.0.1:{port}", scheme="http",
    )


def s3_files(fs: Any, prefix: str) -> dict[str, int]:
    """``{path: size}`` of every object under ``prefix`` (``bucket/dir``)."""
    import pyarrow.fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(prefix, recursive=True, allow_not_found=True))
    return {i.path: i.size for i in infos if i.type == pafs.FileType.File}


def s3_read(fs: Any, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("moto")
    port = procs.free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = procs.start(
        [BIN / "moto_server", "-H", "127.0.0.1", "-p", str(port)], log=root / "moto.log"
    )

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited: {(root / 'moto.log').read_text()[-2000:]}")
        try:
            urllib.request.urlopen(endpoint, timeout=1).close()
            return True
        except OSError:
            return False

    try:
        procs.wait_until(up, 60, "moto_server to listen")
        import boto3

        boto3.client(
            "s3", endpoint_url=endpoint, region_name="us-east-1",
            aws_access_key_id="testing", aws_secret_access_key="testing",
        ).create_bucket(Bucket=BUCKET)
        yield {
            "port": port,
            "pid": proc.pid,
            "env": {
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_ENDPOINT_URL": endpoint,
            },
        }
    finally:
        procs.stop(proc)


# --------------------------------------------------------------------------- Ray cluster


def _ray_node(args: list[Any], temp_dir: Path, log: Path, env: dict[str, str]) -> Any:
    return procs.start(
        [BIN / "ray", "start", *args, "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
         "--object-store-memory", str(200 * 2**20), "--disable-usage-stats",
         "--temp-dir", temp_dir, "--block"],
        log=log, env=env,
    )


def _wait_started(proc: subprocess.Popen[bytes], log: Path) -> None:
    def started() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited ({proc.returncode}): {log.read_text()[-2000:]}")
        return "Ray runtime started" in log.read_text(errors="replace")

    procs.wait_until(started, 120, f"the Ray node of {log.name}")


def _stop_nodes(nodes: list[tuple[subprocess.Popen[bytes], Path]]) -> None:
    """SIGTERM every node at once, SIGKILL what is left after 3 s, then their leftovers."""
    for proc, _ in nodes:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc, temp_dir in nodes:
        procs.stop(proc, timeout=3)
        procs.kill_pids(procs.pids_matching(str(temp_dir)))


@pytest.fixture(scope="session")
def ray_cluster(
    tmp_path_factory: pytest.TempPathFactory, moto_s3: dict[str, Any]
) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("cluster")
    # short temp dirs: Ray's unix socket paths below them must stay under ~107 characters
    temp = Path(tempfile.mkdtemp(prefix="lsray-", dir="/tmp"))
    port = procs.free_port()
    address = f"127.0.0.1:{port}"
    env = lossearch_env(
        {**moto_s3["env"], "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    )
    nodes: list[tuple[subprocess.Popen[bytes], Path]] = []
    try:
        head = _ray_node(["--head", "--port", str(port), "--include-dashboard=false"],
                         temp / "h", root / "head.log", env)
        nodes.append((head, temp / "h"))
        _wait_started(head, root / "head.log")
        worker = _ray_node(["--address", address], temp / "w", root / "worker.log", env)
        nodes.append((worker, temp / "w"))
        _wait_started(worker, root / "worker.log")
        yield {"address": address, "root": root, "env": env}
    finally:
        _stop_nodes(nodes)
        shutil.rmtree(temp, ignore_errors=True)


# --------------------------------------------------------------------------- the search


@pytest.fixture(scope="session")
def cluster_s3_search(
    ray_cluster: dict[str, Any], moto_s3: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """Search on the cluster into the bucket; SIGKILL the driver at the first checkpoint in
    the bucket; ``lossearch resume`` to the end. Drivers join with ``--address``."""
    root = tmp_path_factory.mktemp("cluster_s3")
    (root / "space.yaml").write_text(yaml.safe_dump(SEARCH_SPACE))
    env, address = ray_cluster["env"], ray_cluster["address"]
    uri = f"s3://{BUCKET}/searches/{EXP_NAME}"
    prefix = f"{BUCKET}/searches/{EXP_NAME}"
    fs = s3fs(moto_s3["port"])
    seen: dict[str, Any] = {"root": root, "uri": uri, "prefix": prefix, "env": env}

    def registered_checkpoint() -> dict[str, Any] | None:
        """The first trial checkpoint a resume would start from (named by its run's
        ``latest_checkpoint.json``), with the metrics of its epoch."""
        for path in s3_files(fs, f"{prefix}/trainings"):
            if path.endswith("/latest_checkpoint.json"):
                try:
                    name = json.loads(s3_read(fs, path))["checkpoint"]
                    history = s3_read(fs, f"{path.rsplit('/', 1)[0]}/{name}/history.jsonl")
                except (OSError, ValueError, KeyError):
                    continue
                lines = [line for line in history.decode().splitlines() if line.strip()]
                return {"path": path, "metrics": json.loads(lines[-1])}
        return None

    log = root / "search.log"
    p = procs.start(
        [BIN / "lossearch", "search", "--space", root / "space.yaml", "--address", address,
         "--storage", f"s3://{BUCKET}/searches", "--name", EXP_NAME],
        log=log, cwd=root, env=env,
    )
    try:
        seen["at_kill"] = procs.wait_until(registered_checkpoint, 300, "a checkpoint in S3")
    finally:
        procs.kill_driver(p)  # the driver's session: the cluster's processes are not in it
    seen["local_after_search"] = sorted(p.name for p in root.iterdir())
    seen["search_log"] = log.read_text(errors="replace")

    log = root / "resume.log"
    p = procs.start(
        [BIN / "lossearch", "resume", uri, "--address", address], log=log, cwd=root, env=env
    )
    try:
        seen["resume_rc"] = procs.wait_exit(p, 400, log)
    finally:
        procs.kill_driver(p)
    seen["resume_log"] = log.read_text(errors="replace")
    return seen
