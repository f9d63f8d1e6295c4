"""Shared test setup: offline hubs, one local Ray per session, the repository paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One OpenMP thread per process unless code asks for more (``fit`` sets torch's threads from
# ``scaling.cpus_per_worker``): `make test` runs 3 test processes, plus their Ray workers and
# CLI runs, on 2 cores, where every extra OpenMP thread spins on a busy core. Measured here
# (test_losses + test_train_steps + test_composite, 3 processes): 29.6 s -> 24.9 s.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray with 3 logical CPUs (2 cores + the spare one the search driver adds)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


# An easy arith (operands 1..5, + and -) that the tiny model learns past chance in 60 steps.
EASY_BASE = {
    "name": "t",
    "task": {"name": "arith", "arith_train_size": 1920, "val_size": 50, "arith_max_operand": 5,
             "arith_ops": "+-"},
    "model": {"name_or_path": "tiny"},
    "loss": {"ce": 1.0},
    "optim": {"epochs": 2, "lr": 5e-3, "warmup_steps": 10},
    "eval": {"max_new_tokens": 16},
    "scaling": {"cpus_per_worker": 1},
}

# Five grid points. With sampler seed 0 the grid runs in the order 2, 0, 1, 3, 4, so two
# learning trials reach ASHA's first rung before point 3 (a learning rate that learns nothing),
# which is therefore stopped there; point 4's learning rate makes the loss non-finite.
SEARCH_SPACE = {
    "base": EASY_BASE,
    "search": {"sampler": "grid", "seed": 0, "scheduler": "asha", "grace_period": 1,
               "reduction_factor": 2, "metric": "exact_match", "mode": "max"},
    "grid": [
        {"loss.family": "ce"},
        {"loss.family": "focal", "loss.ce.weight": 0.6, "loss.focal.gamma": 2.0},
        {"loss.family": "tversky", "loss.ce.weight": 0.5, "loss.tversky.alpha": 0.3,
         "loss.tversky.beta": 0.7},
        {"loss.family": "ce", "optim.lr": 1e-7},
        {"loss.family": "poly1", "loss.ce.weight": 0.0, "loss.poly1.epsilon": 1.0,
         "optim.lr": 1e6},
    ],
}


@pytest.fixture(scope="session")
def small_search(ray_local, tmp_path_factory):
    """A real 5-trial search by the product's driver, shared by the search and analysis tests."""
    from lossearch.search.driver import run_search

    storage = tmp_path_factory.mktemp("experiments")
    exp = run_search(SEARCH_SPACE, num_samples=5, max_concurrent=2, storage=str(storage),
                     name="small", verbose=0)
    return Path(exp)



# A 2-trial search through the command line, 1 epoch each, 2 at a time, with TensorBoard and
# MLflow on: shared by test_confirm.py (which confirms a copy) and test_tracking.py (which
# reads its live view and trackers). The task is a jsonl, named by a relative path, whose
# every training target is ``ok`` (the tiny model learns it within one short epoch); its test
# file, which the search must never read, does not exist while the search runs
# (test_confirm.py writes it later).
CLI_GRID = [
    {"loss.family": "ce", "optim.lr": 5e-3},
    {"loss.family": "focal", "loss.ce.weight": 0.6, "loss.focal.gamma": 2.0, "optim.lr": 3e-3},
]


@pytest.fixture(scope="session")
def cli_search(tmp_path_factory):
    """``{"root", "exp", "done", "log_to"}``: the folder the search ran in (``train.jsonl``,
    ``space.yaml``; ``test.jsonl`` is named by the space but absent), its experiment, the
    finished ``lossearch search`` and the trackers it logged to (those installed)."""
    import importlib.util
    import json

    import yaml

    from tests import procs

    root = tmp_path_factory.mktemp("cli_search")
    rows = [{"prompt": f"item {i}: ", "target": "ok"} for i in range(660)]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    space = {
        "base": {
            "name": "cli",
            # relative to the search's working directory: trials run elsewhere, so the driver
            # must make them absolute (every trial failed with "file not found" before)
            "task": {"name": "jsonl", "train_file": "train.jsonl",
                     "test_file": "test.jsonl", "val_size": 20, "max_length": 32},
            "model": {"name_or_path": "tiny"},
            "optim": {"epochs": 1, "lr": 1e-2, "warmup_steps": 0, "batch_size": 16},
            "eval": {"max_new_tokens": 4},
            "scaling": {"cpus_per_worker": 1},
        },
        "search": {"sampler": "grid", "seed": 0, "scheduler": "fifo", "metric": "exact_match",
                   "mode": "max", "max_concurrent": 2},
        "grid": CLI_GRID,
    }
    (root / "space.yaml").write_text(yaml.safe_dump(space))
    log_to = [t for t in ("tensorboard", "mlflow") if importlib.util.find_spec(t) is not None]
    done = procs.run_cli(
        ["search", "--space", "space.yaml", "--storage", "exps", "--name", "s",
         *(["--log-to", ",".join(log_to)] if log_to else [])],
        cwd=root, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (root / "test.jsonl").exists()
    return {"root": root, "exp": root / "exps" / "s", "done": done, "log_to": log_to}

# `make test` runs the suite in 3 processes (pytest-xdist, `--dist loadgroup`). A test runs
# in the process of its group: the tests that use one of these session fixtures (a real
# search, a Ray cluster: minutes of work) form one group, so the fixture is built once; every
# other test goes with its module, so module fixtures (a table of CLI runs, a trained model)
# run once.
SHARED_GROUPS = {
    "small_search": "small_search",
    "cli_search": "cli_search",
    "cluster_s3_search": "cluster",
    "ray_cluster": "cluster",
    "moto_s3": "cluster",
}


# The longest groups (minutes each, measured with --durations) go first: xdist hands groups
# out in collection order, so a long one started last would run on alone at the end.
LONGEST_FIRST = ("test_faults", "small_search", "cli_search", "cluster", "test_search",
                 "test_train", "test_bad_input")


@pytest.hookimpl(tryfirst=True)  # before xdist's hook turns the marks into groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    groups = {}
    for item in items:
        shared = [g for f, g in SHARED_GROUPS.items() if f in item.fixturenames]
        groups[item] = shared[0] if shared else item.module.__name__
        item.add_marker(pytest.mark.xdist_group(groups[item]))
    rank = {g: i for i, g in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(groups[item], len(rank)))  # stable: order kept within


# The 2-node Ray cluster, the S3 server and the search on both, shared by test_cluster.py and
# test_s3.py (one search: a cluster needs shared storage anyway).
from tests.clusters import cluster_s3_search, moto_s3, ray_cluster  # noqa: E402, F401
