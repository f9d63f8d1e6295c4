"""``lossearch search --address`` and ``lossearch train --address`` on a 2-node Ray cluster.

The cluster (head + one worker node on this machine, 1 CPU each) and the search come from
the session fixtures in ``tests/clusters.py``: the search keeps its experiment in an S3 bucket
(the shared storage a cluster needs), its driver is SIGKILLed once a checkpoint is in the
bucket, and ``lossearch resume --address`` finishes it. Its trials run 2 at a time and their
training workers take 0.9 CPU each: two cannot share a 1-CPU node, so one trains on each.
Every reported epoch carries the ``node_id`` of the worker that trained it; the proof is two
distinct node ids among the two trials' last epochs.

Ray turns the 127.0.0.1 given to ``ray start --node-ip-address`` and ``--address`` into this
machine's own address (``services.resolve_ip_for_localhost``); nothing leaves the machine.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests import procs
from tests.clusters import EPOCHS, N_TRIALS, s3_files, s3_read, s3fs

pytestmark = pytest.mark.slow

QUICK = procs.REPO / "search_spaces" / "quick.yaml"


def _final_results(search: dict[str, Any], port: int) -> dict[str, list[dict[str, Any]]]:
    """``{trial_id: result rows}`` from each trial's ``result.json`` in the bucket."""
    fs = s3fs(port)
    out = {}
    for path in s3_files(fs, search["prefix"]):
        if path.endswith("/result.json"):
            rows = [json.loads(line) for line in s3_read(fs, path).decode().splitlines() if line]
            out[path.split("/")[3]] = rows
    return out


def test_search_on_the_cluster_uses_both_nodes(cluster_s3_search: dict, moto_s3: dict) -> None:
    search = cluster_s3_search
    assert search["resume_rc"] == 0, search["resume_log"][-3000:]
    # Two node ids: the drivers used the cluster (a Ray of their own would be one node).
    results = _final_results(search, moto_s3["port"])
    assert len(results) == N_TRIALS
    # The last epochs of the two trials trained at the same time (after the resume): one on
    # each node. (A trial may change nodes when it is resumed.)
    last = {trial: rows[-1] for trial, rows in results.items()}
    assert all(r["epoch"] == EPOCHS for r in last.values()), last
    assert len({r["node_id"] for r in last.values()}) == 2, last
    assert _cluster_nodes(search, moto_s3["port"]) == {r["node_id"] for r in last.values()}


def _cluster_nodes(search: dict[str, Any], port: int) -> set[str]:
    """Every node id any epoch of the search reported (the cluster has two nodes)."""
    return {r["node_id"] for rows in _final_results(search, port).values() for r in rows}


def test_analysis_loads_the_cluster_search(
    cluster_s3_search: dict, moto_s3: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    from analysis import load_trials

    for key, value in moto_s3["env"].items():
        monkeypatch.setenv(key, value)
    df = load_trials([cluster_s3_search["uri"]])
    assert df["trial_id"].nunique() == N_TRIALS
    assert set(df["status"]) == {"finished"}
    assert set(df["loss"]) == {"ce", "focal"}


def test_train_joins_the_cluster(
    ray_cluster: dict, cluster_s3_search: dict, moto_s3: dict
) -> None:
    root = ray_cluster["root"]
    log = root / "train.log"
    proc = procs.start(
        [procs.BIN / "lossearch", "train", "--address", ray_cluster["address"], "--out",
         root / "run", "task.arith_train_size=320", "task.val_size=10", "optim.epochs=1",
         "eval.max_new_tokens=8", "scaling.cpus_per_worker=0.9"],
        log=log, cwd=root, env=ray_cluster["env"],
    )
    try:
        rc = procs.wait_exit(proc, 300, log)
    finally:
        procs.kill_driver(proc)
    assert rc == 0, log.read_text(errors="replace")[-3000:]
    assert f"run: {root / 'run'}\n" in log.read_text(errors="replace")  # announced at start
    metrics = procs.json_lines(root / "run" / "metrics.jsonl")
    assert [m["epoch"] for m in metrics] == [1]
    assert metrics[0]["node_id"] in _cluster_nodes(cluster_s3_search, moto_s3["port"])
    assert (root / "run" / "checkpoint" / "state.json").exists()


def test_unreachable_address_is_one_line_error(tmp_path: Path) -> None:
    """Checked before Ray starts and before anything is written."""
    port = procs.free_port()  # nothing listens there
    tail = ["--address", f"127.0.0.1:{port}", "task.arith_train_size=320", "task.val_size=10"]
    for done in procs.run_clis(
        [["train", "--out", "run", *tail], ["search", "--space", QUICK, "--name", "e", *tail]],
        cwd=tmp_path, timeout=120,
    ):
        assert "cannot reach Ray cluster" in procs.error_line(done)
    assert list(tmp_path.iterdir()) == []
