"""The fork server (``lossearch.fork_server``): real server process, real forks, real trainings.

One server for the module (its imports cost ~5 s of CPU); each test sends it trainings of the
tiny model through ``fit_in_run_forked``, as a search trial does, without Ray.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lossearch import fork_server
from lossearch.config import TrainConfig
from lossearch.errors import NonFiniteLoss

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="the fork server is Linux only"),
    pytest.mark.xdist_group("fork_server"),
]

BASE = {
    "task": {"name": "arith", "arith_train_size": 64, "val_size": 8},
    "model": {"name_or_path": "tiny"},
    "optim": {"epochs": 2, "batch_size": 16, "warmup_steps": 0},
    "eval": {"max_new_tokens": 4},
}


def config(**optim: float) -> TrainConfig:
    return TrainConfig.model_validate({**BASE, "optim": {**BASE["optim"], **optim}})


@pytest.fixture(scope="module")
def address():
    env = fork_server.start()
    yield env[fork_server.ADDRESS_ENV]
    fork_server.stop()


def gone(pid: int, within_s: float = 10.0) -> bool:
    """Whether process ``pid`` has ended within ``within_s`` (gone, or a zombie: an orphan
    waits there for a container's init to reap it)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state == "Z":
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def test_a_forked_training_reports_every_epoch_from_its_own_process(address, tmp_path, capfd):
    reports = []
    fork_server.fit_in_run_forked(
        address, config(), str(tmp_path / "run"), lambda m, c: reports.append((m, c)),
        seeds=[0], echo=True,
    )
    assert [m["epoch"] for m, _ in reports] == [1, 2]
    assert all(c is None for _, c in reports)  # the checkpoint is already in the run
    pids = {m["worker_pid"] for m, _ in reports}
    assert len(pids) == 1 and int(pids.pop()) != os.getpid()
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint_*")) == [
        "checkpoint_000001", "checkpoint_000002"]
    assert "[lossearch] epoch 2/2" in capfd.readouterr().out  # the child wrote to our stdout
    assert gone(int(reports[0][0]["worker_pid"]))


def test_it_resumes_from_the_runs_last_checkpoint(address, tmp_path):
    run = str(tmp_path / "run")
    fork_server.fit_in_run_forked(address, config(epochs=1), run, lambda m, c: None, seeds=[0])
    epochs = []
    fork_server.fit_in_run_forked(
        address, config(epochs=2), run, lambda m, c: epochs.append(m["epoch"]), seeds=[0])
    assert epochs == [2]


def test_leaving_at_a_report_kills_the_child(address, tmp_path):
    class Stop(Exception):
        pass

    seen = []

    def report(metrics, checkpoint_dir):
        seen.append(int(metrics["worker_pid"]))
        raise Stop

    with pytest.raises(Stop):
        fork_server.fit_in_run_forked(address, config(epochs=3), str(tmp_path / "run"), report)
    assert len(seen) == 1 and gone(seen[0])
    assert len(list((tmp_path / "run").glob("checkpoint_*"))) == 1  # it trained no further


def test_the_childs_error_is_raised_with_its_type_and_traceback(address, tmp_path):
    with pytest.raises(NonFiniteLoss) as err:
        fork_server.fit_in_run_forked(address, config(lr=1e6), str(tmp_path / "run"),
                                      lambda m, c: None)
    assert any("in the training process" in note for note in err.value.__notes__)
    assert "lossearch/fit.py" in err.value.__notes__[-1]


def test_a_killed_child_is_an_error_not_a_hang(address, tmp_path):
    def report(metrics, checkpoint_dir):
        os.kill(int(metrics["worker_pid"]), 9)

    with pytest.raises(RuntimeError, match="ended without a result"):
        fork_server.fit_in_run_forked(address, config(), str(tmp_path / "run"), report)


def test_no_server_is_named_as_such(tmp_path):
    with pytest.raises(fork_server.ForkServerGone, match="fork server at"):
        fork_server.fit_in_run_forked(str(tmp_path / "nothing"), config(), str(tmp_path / "r"),
                                      lambda m, c: None)


def test_the_server_ends_with_its_starter_and_kills_its_children(tmp_path):
    """A starter process killed mid-training (SIGKILL: no atexit) takes its server and the
    server's child with it."""
    script = (
        "import sys, time\n"
        "from lossearch import fork_server\n"
        "from lossearch.config import TrainConfig\n"
        "addr = fork_server.start()[fork_server.ADDRESS_ENV]\n"
        "print(fork_server._SERVER['proc'].pid, addr, flush=True)\n"
        f"cfg = TrainConfig.model_validate({BASE!r} | {{'optim': {{'epochs': 50}}}})\n"
        "def report(m, c):\n"
        "    print(m['worker_pid'], flush=True); time.sleep(60)\n"
        f"fork_server.fit_in_run_forked(addr, cfg, {str(tmp_path / 'run')!r}, report, echo=False)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    server, address = p.stdout.readline().split()
    child = int(p.stdout.readline())  # at its first report, waiting for the ack
    assert not gone(int(server), 0.1) and not gone(child, 0.1)
    p.kill()
    p.wait()
    assert gone(int(server)) and gone(child)
    assert not Path(address).parent.exists()  # the server removed its folder


def test_stop_kills_a_server_still_importing_and_lets_a_ready_one_end():
    """A server stopped while it imports is killed (it has forked nothing); one that has
    imported (its ``ready`` file) ends on its own when its stdin closes. Either way its
    folder is removed."""
    script = (
        "import os, time\n"
        "from lossearch import fork_server\n"
        "for wait in (False, True):\n"
        "    fork_server.start(threads=2)\n"
        "    proc, folder = fork_server._SERVER['proc'], fork_server._SERVER['folder']\n"
        "    deadline = time.monotonic() + 60\n"
        "    while wait and not os.path.exists(os.path.join(folder, fork_server.READY)):\n"
        "        assert time.monotonic() < deadline, 'never ready'\n"
        "        time.sleep(0.05)\n"
        "    fork_server.stop()\n"
        "    print(proc.returncode, os.path.exists(folder))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines() == ["-9 False", "0 False"]


def test_a_server_that_cannot_start_is_named_and_trials_train_in_their_own_process(
    monkeypatch, capsys
):
    monkeypatch.setattr(sys, "executable", "/bin/false")  # a Python that exits at once
    assert fork_server.start() == {}
    assert "fork server ended at start (exit code 1)" in capsys.readouterr().err
    assert not fork_server._SERVER


def test_a_trial_that_trains_in_a_child_imports_no_torch(tmp_path):
    """The trial process's side (``trial._fit_in_run`` through the server, then reading the
    run's final checkpoint as a confirm run does) leaves torch unimported: what the server
    is for."""
    script = (
        "import os, sys\n"
        "from lossearch import fork_server\n"
        "from lossearch.config import TrainConfig\n"
        "from lossearch.search import trial\n"
        "from lossearch.checkpointing import latest_in_run, read_state\n"
        "os.environ.update(fork_server.start())\n"
        f"cfg = TrainConfig.model_validate({BASE!r})\n"
        f"run = {str(tmp_path / 'run')!r}\n"
        "trial._fit_in_run(cfg, run, lambda m, c: None, {'seeds': [0], 'echo': False})\n"
        "with latest_in_run(run) as ckpt:\n"
        "    print(read_state(ckpt)[0]['epoch'], 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["2", "False"]


@pytest.mark.parametrize("user_value", [None, "2"])
def test_the_servers_openmp_threads_are_the_trials_cpus_unless_the_user_set_them(
    monkeypatch, user_value
):
    if user_value is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", user_value)
    fork_server.start(threads=3)
    try:
        pid = fork_server._SERVER["proc"].pid
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    finally:
        fork_server.stop()
    assert f"OMP_NUM_THREADS={user_value or 3}".encode() in environ
