"""Warm Ray workers (lossearch.warm): a search's first trials start in processes that have
imported torch and transformers already."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from lossearch.warm import (
    FOLDER_PREFIX,
    LOCK,
    SLOTS_ENV,
    claim_slot,
    import_for_trials,
    parse_slots,
    remove_orphan_folders,
    wait_for_claims,
    worker_env,
)


def test_each_of_k_slots_is_claimed_once(tmp_path):
    spec = f"{tmp_path}:2"
    assert [claim_slot(spec) for _ in range(3)] == [True, True, False]
    assert sorted(os.listdir(tmp_path)) == ["0", "1"]
    assert (tmp_path / "0").read_text() == str(os.getpid())
    assert wait_for_claims({SLOTS_ENV: spec}, timeout_s=0) == 2


def test_folders_of_ended_makers_are_removed_the_others_kept(tmp_path):
    """A driver ended by SIGKILL leaves its slot folder; the next one removes it."""
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    names = [f"{FOLDER_PREFIX}{ended.pid}-abc", f"{FOLDER_PREFIX}{os.getpid()}-def",
             f"{FOLDER_PREFIX}xyz", "other-folder"]
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "0").write_text("1")
    assert remove_orphan_folders(str(tmp_path)) == [names[0]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[1:])


def test_a_folder_is_judged_by_its_lock_when_it_has_one(tmp_path):
    """The maker's ``flock`` decides, not the pid in the name: a live driver in another PID
    namespace (its pid unknown here) keeps its folder; a lock nobody holds is an ended
    maker's, even when its pid has been reused by a running process."""
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    held = tmp_path / f"{FOLDER_PREFIX}{ended.pid}-held"
    free = tmp_path / f"{FOLDER_PREFIX}{os.getpid()}-free"
    for folder in (held, free):
        folder.mkdir()
        (folder / LOCK).write_text("")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, sys, time\n"
         "fd = os.open(sys.argv[1], os.O_WRONLY)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)",
         str(held / LOCK)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert remove_orphan_folders(str(tmp_path)) == [free.name]
        assert held.is_dir()
    finally:
        holder.kill()
        holder.wait()
    assert remove_orphan_folders(str(tmp_path)) == [held.name]  # its holder has ended


def test_worker_env_names_its_maker_in_the_folder_and_holds_its_lock():
    folder, k = parse_slots(worker_env(2)[SLOTS_ENV])
    assert k == 2 and os.path.basename(folder).startswith(f"{FOLDER_PREFIX}{os.getpid()}-")
    assert os.path.isfile(os.path.join(folder, LOCK))
    assert os.path.basename(folder) not in remove_orphan_folders(os.path.dirname(folder))
    assert wait_for_claims({SLOTS_ENV: f"{folder}:{k}"}, timeout_s=0) == 0  # the lock is no claim


def test_no_slot_once_the_folder_is_gone_and_the_hook_never_raises(tmp_path, monkeypatch):
    spec = f"{tmp_path / 'gone'}:2"
    assert not claim_slot(spec)
    assert not claim_slot("no-count")
    monkeypatch.setenv(SLOTS_ENV, spec)
    import_for_trials()  # nothing to claim: returns without importing or raising
    assert worker_env(0) == {}


# A fresh process: lossearch starts its own local Ray (a Ray started by another test would
# have no warm workers). Two trials of one epoch, side by side.
SEARCH = textwrap.dedent(
    """
    import glob, json, os, sys
    from lossearch.ray_train import _LOCAL_RAY, init_ray
    from lossearch.search.driver import run_search
    from lossearch.warm import SLOTS_ENV, parse_slots

    init_ray(None, num_cpus=3, warm=min(2, os.cpu_count()))  # Ray starts one per core
    folder, _ = parse_slots(_LOCAL_RAY["env"][SLOTS_ENV])
    warm = sorted(int(open(os.path.join(folder, f)).read()) for f in os.listdir(folder)
                  if f.isdigit())  # the slots, not the driver's maker.lock
    space = json.loads(sys.argv[1])
    exp = run_search(space, max_concurrent=2, scheduler="fifo", storage=sys.argv[2],
                     name="warm", verbose=0)
    rows = [json.loads(line) for f in glob.glob(exp + "/*/result.json") for line in open(f)]
    print(json.dumps({"warm": warm, "trials": sorted({r["pid"] for r in rows})}))
    """
)


@pytest.mark.xdist_group("test_warm")
def test_the_first_trials_run_in_the_warm_workers(tmp_path):
    from conftest import EASY_BASE

    base = {**EASY_BASE, "task": {**EASY_BASE["task"], "arith_train_size": 320},
            "optim": {**EASY_BASE["optim"], "epochs": 1}}
    space = {
        "base": base,
        "search": {"sampler": "grid", "seed": 0, "scheduler": "fifo", "metric": "exact_match",
                   "mode": "max"},
        "grid": [{"loss.family": "ce"}, {"loss.family": "focal", "loss.ce.weight": 0.6}],
    }
    out = subprocess.run(
        [sys.executable, "-c", SEARCH, json.dumps(space), str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    pids = json.loads(out.stdout.strip().splitlines()[-1])
    # Ray ran the setup hook in the workers it started with (one per core, two at most) ...
    assert len(pids["warm"]) == min(2, os.cpu_count())
    # ... and Tune's trial actors took those workers: no trial started in a cold one. (Not
    # "both warm workers were used": on a loaded machine the first trial can end before the
    # second actor is placed, and the second trial then reuses the first's warm process, as
    # one full-suite run showed.) On one core the second trial may need a new worker.
    if os.cpu_count() >= 2:
        assert pids["trials"] and set(pids["trials"]) <= set(pids["warm"])
    else:
        assert set(pids["warm"]) <= set(pids["trials"])


def test_one_warm_worker_per_concurrent_in_process_trial_at_most_one_per_core(monkeypatch):
    """Where trials do not fork from a fork server (GPU trials, or LOSSEARCH_FORK_SERVER=0)."""
    from lossearch.search.driver import TrialProcesses, trial_processes

    one, two = (
        {"scaling": {"num_workers": n, "use_gpu": False, "cpus_per_worker": 1}} for n in (1, 2)
    )
    gpu = {"scaling": {"num_workers": 1, "use_gpu": True}}
    assert trial_processes(gpu, 1) == TrialProcesses(fork=0, warm=1)
    # Ray starts one idle worker per core
    assert trial_processes(gpu, 10_000) == TrialProcesses(fork=0, warm=os.cpu_count())
    # a Ray Train run's trial only waits on its workers
    assert trial_processes(two, 2) == TrialProcesses(fork=0, warm=0)
    monkeypatch.setenv("LOSSEARCH_FORK_SERVER", "0")
    assert trial_processes(one, 1) == TrialProcesses(fork=0, warm=1)


@pytest.mark.skipif(sys.platform != "linux", reason="the fork server is Linux only")
def test_one_worker_cpu_trials_fork_from_the_fork_server_instead():
    from lossearch.search.driver import TrialProcesses, trial_processes

    one = {"scaling": {"num_workers": 1, "use_gpu": False, "cpus_per_worker": 0.99}}
    assert trial_processes(one, 2) == TrialProcesses(fork=1, warm=0)  # 1 OpenMP thread
    one["scaling"]["cpus_per_worker"] = 4
    assert trial_processes(one, 2) == TrialProcesses(fork=4, warm=0)
