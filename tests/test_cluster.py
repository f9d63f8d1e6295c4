"""A 2-node Ray cluster on 127.0.0.1 that ``lossearch search --address`` and ``lossearch train
--address`` join.

The test starts a head node and one worker node with ``ray start ... --block`` (1 CPU each,
no dashboard, a temp dir per node), each as a subprocess whose pid is the process it stops
(SIGTERM, then SIGKILL, then every process left in that node's session and any process whose
command line names the node's temp dir). The search runs 2 trials at a time whose training
workers take 0.9 CPU each: two cannot share a 1-CPU node, so one trains on each node. Each
reported epoch carries the ``node_id`` of the worker that trained it; the proof is two
distinct node ids. Storage is a local folder, which both nodes share because they run on the
same machine (on a real cluster: a shared file system or ``s3://``, see ``docs/clusters.md``).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import procs
from tests.procs import BIN, lossearch_env

pytestmark = pytest.mark.slow

EPOCHS = 2
QUICK = procs.REPO / "search_spaces" / "quick.yaml"
SPACE = {
    "base": {
        "name": "cluster",
        "task": {"name": "arith", "arith_train_size": 320, "eval_size": 20},
        "model": {"name_or_path": "tiny"},
        "optim": {"epochs": EPOCHS, "batch_size": 32, "warmup_steps": 0},
        "eval": {"max_new_tokens": 12},
        "scaling": {"num_workers": 1, "cpus_per_worker": 0.9},
    },
    "search": {"sampler": "grid", "seed": 0, "scheduler": "fifo", "max_concurrent": 2},
    "space": {"loss.family": {"choices": ["ce", "focal"]}, "optim.lr": 3e-3},
}


def _node(args: list[Any], temp_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    return procs.start(
        [BIN / "ray", "start", *args, "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
         "--object-store-memory", str(200 * 2**20), "--disable-usage-stats",
         "--temp-dir", temp_dir, "--block"],
        log=log, env=lossearch_env(),
    )


def _wait_started(proc: subprocess.Popen[bytes], log: Path) -> None:
    def started() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited ({proc.returncode}): {log.read_text()[-2000:]}")
        return "Ray runtime started" in log.read_text(errors="replace")

    procs.wait_until(started, 120, f"the Ray node of {log.name}")


def _stop_node(proc: subprocess.Popen[bytes], temp_dir: Path) -> None:
    procs.stop(proc)  # SIGTERM, SIGKILL, then the rest of its session
    procs.kill_pids(procs.pids_matching(str(temp_dir)))  # anything else of this node


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("cluster")
    # short temp dirs: Ray's unix socket paths under them must stay under ~107 characters
    temp = Path(tempfile.mkdtemp(prefix="lsray-", dir="/tmp"))
    head_tmp, worker_tmp = temp / "h", temp / "w"
    port = procs.free_port()
    address = f"127.0.0.1:{port}"
    nodes: list[tuple[subprocess.Popen[bytes], Path]] = []
    try:
        head = _node(["--head", "--port", str(port), "--include-dashboard=false"], head_tmp,
                     root / "head.log")
        nodes.append((head, head_tmp))
        _wait_started(head, root / "head.log")
        worker = _node(["--address", address], worker_tmp, root / "worker.log")
        nodes.append((worker, worker_tmp))
        _wait_started(worker, root / "worker.log")
        yield {"address": address, "root": root, "pids": [head.pid, worker.pid]}
    finally:
        for proc, node_tmp in reversed(nodes):
            _stop_node(proc, node_tmp)
        shutil.rmtree(temp, ignore_errors=True)
    assert not any(procs.alive(p) for p, _ in nodes)


def _lossearch(args: list[Any], cwd: Path, log: Path, timeout: float) -> int:
    proc = procs.start([BIN / "lossearch", *args], log=log, cwd=cwd, env=lossearch_env())
    try:
        return procs.wait_exit(proc, timeout, log)
    finally:
        procs.kill_driver(proc)  # the driver's session only; the cluster stays up


@pytest.fixture(scope="module")
def cluster_search(cluster: dict[str, Any]) -> dict[str, Any]:
    root = cluster["root"]
    (root / "space.yaml").write_text(yaml.safe_dump(SPACE))
    log = root / "search.log"
    rc = _lossearch(
        ["search", "--space", root / "space.yaml", "--address", cluster["address"],
         "--storage", root / "exps", "--name", "c"],
        root, log, 400,
    )
    return {"rc": rc, "log": log.read_text(errors="replace"), "exp": root / "exps" / "c"}


def test_search_on_the_cluster_uses_both_nodes(cluster_search: dict[str, Any]) -> None:
    assert cluster_search["rc"] == 0, cluster_search["log"][-3000:]
    node_ids = {}
    for result in cluster_search["exp"].glob("run_trial_*/result.json"):
        rows = procs.json_lines(result)
        assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))
        assert len({r["node_id"] for r in rows}) == 1  # a trial stays on its node
        node_ids[rows[0]["trial_id"]] = rows[0]["node_id"]
    assert len(node_ids) == 2
    assert len(set(node_ids.values())) == 2, node_ids  # one trial per node
    # the driver joined the cluster instead of starting a Ray of its own
    assert "Started a local Ray instance" not in cluster_search["log"]


def test_analysis_loads_the_cluster_search(cluster_search: dict[str, Any]) -> None:
    from analysis import load_trials

    df = load_trials([cluster_search["exp"]])
    assert df["trial_id"].nunique() == 2
    assert set(df["status"]) == {"finished"}
    assert set(df["loss"]) == {"ce", "focal"}


def test_train_joins_the_cluster(cluster: dict[str, Any], cluster_search: dict) -> None:
    root = cluster["root"]
    log = root / "train.log"
    rc = _lossearch(
        ["train", "--address", cluster["address"], "--out", root / "run",
         "task.arith_train_size=320", "task.eval_size=10", "optim.epochs=1",
         "eval.max_new_tokens=8", "scaling.cpus_per_worker=0.9"],
        root, log, 300,
    )
    assert rc == 0, log.read_text(errors="replace")[-3000:]
    metrics = procs.json_lines(root / "run" / "metrics.jsonl")
    assert [m["epoch"] for m in metrics] == [1]
    assert (root / "run" / "checkpoint" / "state.json").exists()


def test_unreachable_address_is_one_line_error(tmp_path: Path) -> None:
    port = procs.free_port()  # nothing listens there
    for command in (["train", "--out", "run"], ["search", "--space", QUICK, "--name", "e"]):
        done = procs.run_cli(
            [*command, "--address", f"127.0.0.1:{port}", "task.arith_train_size=320",
             "task.eval_size=10", "optim.epochs=1"],
            cwd=tmp_path, timeout=120,
        )
        assert "cannot reach Ray cluster" in procs.error_line(done)
