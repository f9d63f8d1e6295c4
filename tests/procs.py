"""Process helpers for the cluster, S3 and fault tests: start, find and stop by process id.

Everything here works on pids read from ``/proc``; nothing matches processes by name across
the machine (other people's Ray clusters run beside ours). A search driver is started with
``start_new_session=True``, so it and every process Ray spawns for it (raylet, GCS, workers:
they get their own process groups but stay in the driver's session) share one session id;
:func:`kill_session` ends each of them by its pid.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin/: lossearch, ray, moto_server
T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(
    args: Sequence[str | os.PathLike[str]],
    *,
    log: Path,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``args`` in a new session, stdout and stderr into ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            [str(a) for a in args],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def lossearch_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a ``lossearch`` subprocess: offline hubs, no ``RAY_ADDRESS``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "RAY_TRAIN_V2_ENABLED": "1",
            "RAY_DEDUP_LOGS": "0",
            "RAY_USAGE_STATS_ENABLED": "0",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra or {})
    return env


def run_cli(
    args: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: float = 180,
    **popen: Any,
) -> subprocess.CompletedProcess[str]:
    """Run ``lossearch ARGS`` in its own session, capturing stdout and stderr apart.

    On timeout everything in the session (a Ray it started included) is killed, pid by pid.
    ``popen`` goes to :class:`subprocess.Popen` (e.g. ``preexec_fn``).
    """
    argv = [str(BIN / "lossearch"), *map(str, args)]
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env if env is not None else lossearch_env(), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        start_new_session=True, **popen,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_session(proc.pid)
        out, err = proc.communicate()
        raise TimeoutError(f"{argv} ran past {timeout:.0f} s; stderr:\n{err[-3000:]}") from None
    finally:
        kill_session(proc.pid)  # nothing of it outlives the call
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def run_clis(
    commands: Sequence[Sequence[str | os.PathLike[str]]], *, parallel: int = 2, **kw: Any
) -> list[subprocess.CompletedProcess[str]]:
    """:func:`run_cli` for several commands, ``parallel`` at a time (start-up is mostly
    imports and waiting); results in the order given."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        return list(pool.map(lambda args: run_cli(args, **kw), commands))


def error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The one line a user error prints: exit 2, one non-empty stderr line, no traceback."""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr + done.stdout, done.stderr[-3000:]
    assert len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


# --------------------------------------------------------------------------- /proc


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid pgrp session ..." -- comm may hold spaces and parentheses
    return text[text.rindex(")") + 2 :].split()


def parent_of(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[1]) if fields else None


def session_of(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[3]) if fields else None


def cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def alive(pid: int) -> bool:
    """Running (a zombie counts as gone)."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def session_pids(sid: int) -> list[int]:
    """Every live process whose session id is ``sid``."""
    return [p for p in all_pids() if session_of(p) == sid and alive(p)]


def pids_matching(needle: str, *, sid: int | None = None) -> list[int]:
    """Live pids whose command line contains ``needle`` (only in session ``sid`` if given)."""
    out = []
    for pid in all_pids():
        if sid is not None and session_of(pid) != sid:
            continue
        if needle in cmdline(pid) and alive(pid):
            out.append(pid)
    return out


# --------------------------------------------------------------------------- stopping


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_pids(pids: Iterable[int], timeout: float = 10.0) -> None:
    """SIGKILL each pid, then wait until they are gone."""
    pids = list(pids)
    for pid in pids:
        _signal(pid, signal.SIGKILL)
    wait_until(lambda: not any(alive(p) for p in pids), timeout, "processes to die")


def kill_session(sid: int, timeout: float = 15.0) -> None:
    """SIGKILL every process of session ``sid``, pid by pid, until none is left."""
    deadline = time.monotonic() + timeout
    while True:
        pids = session_pids(sid)
        if not pids:
            return
        for pid in pids:
            _signal(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise TimeoutError(f"session {sid} still has processes: {pids}")
        time.sleep(0.2)


def kill_driver(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a driver started by :func:`start` and everything in its session; reap it."""
    kill_session(proc.pid)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM, wait up to ``timeout``, then SIGKILL; also end the rest of its session."""
    if proc.poll() is None:
        _signal(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _signal(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    kill_session(proc.pid)


# --------------------------------------------------------------------------- waiting


def wait_until(
    predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.2
) -> T:
    """Poll ``predicate`` until it returns something truthy; return it, else TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def wait_for_file(path: Path, timeout: float, contains: str | None = None) -> Path:
    """Wait until ``path`` exists (and, if given, its text contains ``contains``)."""

    def ready() -> bool:
        if not path.exists():
            return False
        return contains is None or contains in path.read_text(errors="replace")

    wait_until(ready, timeout, f"{path}" + (f" to contain {contains!r}" if contains else ""))
    return path


def wait_exit(
    proc: subprocess.Popen[bytes], timeout: float, log: Path | None = None
) -> int:
    """Wait for ``proc`` to exit; on timeout kill its session and fail with the log's tail."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_driver(proc)
        tail = log.read_text(errors="replace")[-4000:] if log else ""
        raise TimeoutError(f"{proc.args} ran past {timeout:.0f} s; log tail:\n{tail}") from None


# --------------------------------------------------------------------------- experiment files


def json_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a JSON-lines file parsed (raises on a corrupted line)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

