"""Ray worker processes that import torch and transformers before a trial needs them.

A search's first trials each run in a new Ray worker process, which pays ~5 s of CPU for
its imports (torch, transformers' model stack, :mod:`lossearch.fit`) before it trains: two
such processes at once on 2 cores are most of what a 50-step search loses against a plain
loop (issue 16). A local Ray starts a few idle Python workers with its node, seconds before
Tune asks for its first trial actors; when they do those imports at start-up, in parallel
with the driver's own start (~1 s to ``Tuner.fit``), the first trials start warm. The
imports cost the same CPU wherever they run: the gain is the driver's time they overlap,
where cores are free for it (on 2 cores, ``benchmarks/search.py`` measured it within its
run-to-run spread: 42.2 s against 43.2 s without, docs/benchmarks.md).

:func:`worker_env` gives the environment a local Ray is started with: Ray runs
:func:`import_for_trials` in each of its Python workers at start-up (a worker process setup
hook, passed the way Ray's runtime env passes one: :data:`lossearch.ray_internals.
SETUP_HOOK_ENV`). Only the first ``k`` workers (``k`` = the search's concurrent trials)
import; the others return at once, so a machine with many cores does not hold torch in every
idle worker. For those workers to be the trial actors' processes, the actors must not carry
a runtime env of their own (:func:`lossearch.ray_internals.tune_trials_in_job_env`).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time

SLOTS_ENV = "LOSSEARCH_WARM_SLOTS"
"""``<folder>:<k>``: the folder where workers claim one of ``k`` slots by creating a file."""

HOOK = "lossearch.warm.import_for_trials"

KEEP_IDLE_WORKERS = {"RAY_idle_worker_killing_time_threshold_ms": "10000"}
"""Ray's raylet ends an idle worker beyond the node's free CPUs after 1 s idle, those never
used first. Once Tune has reserved the first trials' CPUs, that is a warm worker still
importing, before the trial actor takes it (seen on a loaded 2-core machine: the trial then
started in a new, cold worker). 10 s covers the imports; other idle workers also linger
up to 10 s."""


FOLDER_PREFIX = "lossearch-warm-"
"""Slot folders are ``<temp dir>/lossearch-warm-<pid of the process that made it>-<random>``."""


LOCK = "maker.lock"
"""A file in each slot folder that its maker holds an exclusive ``flock`` on while it runs."""

_HELD: list[int] = []  # the lock files' descriptors: a lock lasts as long as its descriptor


def worker_env(k: int) -> dict[str, str]:
    """Environment variables that make a local Ray's first ``k`` Python workers import what
    a trial imports; empty for ``k < 1``. The slot folder is new, locked by this process
    (:data:`LOCK`), and removed when it exits (a worker that starts later then claims none);
    the folders of processes that ended without removing theirs are removed first
    (:func:`remove_orphan_folders`)."""
    from lossearch.ray_internals import SETUP_HOOK_ENV

    if k < 1:
        return {}
    remove_orphan_folders(tempfile.gettempdir())
    folder = tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{os.getpid()}-")
    _hold_lock(os.path.join(folder, LOCK))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return {SETUP_HOOK_ENV: HOOK, SLOTS_ENV: f"{folder}:{k}", **KEEP_IDLE_WORKERS}


def _hold_lock(path: str) -> None:
    """Take an exclusive ``flock`` on ``path`` (created) for the rest of this process. The
    descriptor is not inherited (Python's default), so Ray's processes never hold it."""
    try:
        import fcntl
    except ImportError:  # no flock on this platform: folders are judged by their pid
        return
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    _HELD.append(fd)


def _maker_ended(folder: str, pid: str) -> bool:
    """Whether the process that made ``folder`` has ended: its :data:`LOCK` can be taken
    (the kernel drops a ``flock`` when its holder ends, whatever the PID namespace), or, in a
    folder without one, no process runs under the ``pid`` in its name."""
    try:
        import fcntl

        fd = os.open(os.path.join(folder, LOCK), os.O_RDONLY)
    except (ImportError, OSError):
        return pid.isdigit() and not _running(int(pid))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held: its maker runs
        return False
    finally:
        os.close(fd)  # releases the lock if it was taken
    return True


def remove_orphan_folders(parent: str) -> list[str]:
    """Remove the slot folders in ``parent`` whose maker no longer runs (a driver ended by
    SIGKILL runs no ``atexit``); returns their names. A folder whose maker runs (in this or
    another PID namespace sharing ``parent``), whose lock cannot be read and whose name
    holds no pid of an ended process, or that is another user's, is left alone."""
    removed = []
    try:
        names = os.listdir(parent)
    except OSError:  # not readable: nothing of ours can be there
        return removed
    for name in names:
        if not name.startswith(FOLDER_PREFIX):
            continue
        folder = os.path.join(parent, name)
        if not _maker_ended(folder, name[len(FOLDER_PREFIX):].split("-", 1)[0]):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(name)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def parse_slots(spec: str) -> tuple[str, int] | None:
    """The folder and slot count ``k`` of a :data:`SLOTS_ENV` value (``<folder>:<k>``), or
    None for a malformed one."""
    folder, _, k = spec.rpartition(":")
    return (folder, int(k)) if folder and k.isdigit() else None


def claim_slot(spec: str) -> bool:
    """Whether this process claimed one of the ``k`` slots of ``spec`` (``<folder>:<k>``);
    each slot is claimed once, by an exclusive create of ``<folder>/<slot>``."""
    slots = parse_slots(spec)
    if slots is None:
        return False
    folder, k = slots
    for slot in range(k):
        try:
            fd = os.open(os.path.join(folder, str(slot)), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            continue
        except OSError:  # the folder is gone: the session that made it has ended
            return False
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return True
    return False


def wait_for_claims(env: dict[str, str], timeout_s: float = 5.0) -> int:
    """Wait until the ``k`` slots of :func:`worker_env`'s ``env`` are claimed, at most
    ``timeout_s``; returns how many are. A worker claims its slot in its setup hook, which
    Ray runs once the worker has registered with its node: from then on Ray can give it to
    an actor. Asked for earlier, Ray starts new (cold) workers for Tune's first trials."""
    slots = parse_slots(env.get(SLOTS_ENV, ""))
    if slots is None:
        return 0
    folder, k = slots
    deadline = time.monotonic() + timeout_s
    while True:
        claimed = sum(n.isdigit() for n in os.listdir(folder)) if os.path.isdir(folder) else 0
        if claimed >= k or time.monotonic() > deadline:
            return claimed
        time.sleep(0.05)


def import_for_trials() -> None:
    """Ray worker setup hook: in a worker that claims a slot, import torch, transformers'
    model stack and :mod:`lossearch.fit`. Never raises (Ray ends a worker whose hook does)."""
    spec = os.environ.get(SLOTS_ENV, "")
    try:
        if spec and claim_slot(spec):
            import lossearch.fit  # noqa: F401  (torch)
            import lossearch.models  # noqa: F401  (transformers' model classes)
    except Exception:  # noqa: BLE001  (the trial imports again and reports any error itself)
        pass
