"""One process that has imported the training stack and forks a child for each trial's training.

A search's trial processes would each import torch, transformers' model stack and
:mod:`lossearch.fit` (~4.5 s of CPU here) before training; with K trials at a time on a
machine of K cores, those imports are most of what a short search loses against a plain loop
(issue 16). A local Ray started for a search's one-worker CPU trials therefore starts this
server first (:func:`start`): it imports once, in parallel with Ray's own start, then waits
on a Unix socket in a private folder. A trial (:func:`fit_in_run_forked`, in the Tune trial
process, which then imports no torch) connects and sends its training; the server forks a
child that runs :func:`lossearch.fit.fit_in_run` with the trial's ``stdout``/``stderr``
(passed over the socket, so the output lands in the trial's Ray log) and working folder.

Protocol on one connection, each message a pickled ``(kind, payload)`` frame
(:class:`multiprocessing.connection.Connection`):

* trial -> child: ``("train", request)``, the trial's fds 1 and 2, then ``("ack", None)``
  after each report has been handed to Tune;
* child -> trial: ``("started", pid)``, ``("report", metrics)`` once per epoch (the child
  waits for the ack, as :func:`fit` waits for ``tune.report`` in a trial process),
  then ``("done", None)`` or ``("error", exception)``.

Lifetimes: a child exits as soon as its connection closes (the trial ended, was stopped or
died), whatever it is doing; the server exits, killing its children, when the process that
started it ends (its stdin is a pipe from that process); the trial SIGKILLs a child whose
connection it leaves early. Linux only (``fork`` after importing torch is unsafe on macOS);
``LOSSEARCH_FORK_SERVER=0`` turns it off, and trials then train in their own process
(:mod:`lossearch.warm` imports ahead there).
"""

from __future__ import annotations

import atexit
import gc
import importlib
import os
import pickle
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from multiprocessing.connection import Connection
from multiprocessing.reduction import recv_handle, send_handle
from queue import SimpleQueue
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lossearch.config import TrainConfig
    from lossearch.fit import Report

ADDRESS_ENV = "LOSSEARCH_FORK_SERVER"
"""The server's socket path, in the environment of a local Ray's workers. Set to ``0`` by a
user before a search starts, it turns the server off."""

PRELOAD = (
    "lossearch.fit",
    "lossearch.models",
    "lossearch.checkpointing",
    "lossearch.losses",
    "lossearch.lr_schedule",
    "lossearch.tasks",
    "torch.profiler",  # imported by torch.optim at its first step
)
"""What the server imports before its first fork: everything a training imports (a child
that imports it again pays it again, every trial)."""

READY = "ready"
"""A file the server creates in its folder once it has imported :data:`PRELOAD`."""

_SERVER: dict[str, Any] = {}  # the server this process started: its Popen and folder


def wanted(use_gpu: bool) -> bool:
    """Whether a local Ray's one-worker trials should train in children of a fork server:
    CPU trials on Linux, unless ``LOSSEARCH_FORK_SERVER=0``. GPU trials keep training in
    their own process (a fork is CUDA-safe only before CUDA starts; untested here)."""
    return not use_gpu and sys.platform == "linux" and os.environ.get(ADDRESS_ENV) != "0"


def start(threads: int = 1) -> dict[str, str]:
    """Start a fork server for this process (stopping one it started before); returns the
    environment variable that tells trials its address. Returns once the server has bound
    its socket; it imports :data:`PRELOAD` after that, and a trial that connects meanwhile
    waits for the imports.

    ``threads`` (a trial's CPUs) becomes the server's ``OMP_NUM_THREADS`` unless the user
    set one, as Ray sets it for a trial's own process: OpenMP reads it when torch loads it,
    that is in the server, before any fork (without it, in 15-step searches measured side by
    side, the children trained ~0.4 s slower each than trials in their own processes).

    A server that ends before binding its socket (a broken environment) is named in one
    line on stderr, and ``{}`` returned: the trials then train in their own processes."""
    stop()
    folder = tempfile.mkdtemp(prefix="lossearch-fork-")  # mode 0700: this user only
    address = os.path.join(folder, "socket")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS") or str(threads)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lossearch.fork_server", address],
        stdin=subprocess.PIPE,  # closed when this process ends, however it ends
        process_group=0,  # a terminal's Ctrl-C goes to the driver, not here
        env=env,
    )
    _SERVER.update(proc=proc, folder=folder)
    while not os.path.exists(address):  # bound within a fraction of a second
        if proc.poll() is not None:
            stop()
            print(
                f"[lossearch] the fork server ended at start (exit code {proc.returncode}); "
                "trials train in their own processes",
                file=sys.stderr,
            )
            return {}
        time.sleep(0.01)
    return {ADDRESS_ENV: address}


@atexit.register
def stop() -> None:
    """End the server this process started, if any (its children are killed with it).

    A server still importing (no :data:`READY` file: it has forked nothing) is killed at
    once, so a driver that fails early does not sit out its imports; one in its loop ends
    within moments of its stdin closing (else it is killed after 2 s)."""
    proc, folder = _SERVER.pop("proc", None), _SERVER.pop("folder", None)
    if proc is not None:
        if folder is None or not os.path.exists(os.path.join(folder, READY)):
            proc.kill()
        proc.stdin.close()
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


def serve(address: str) -> None:
    """The server's loop: bind ``address``, import :data:`PRELOAD`, fork a child per
    connection; return once stdin reaches end of file, after killing the live children and
    removing the socket's folder (the starter may have been killed before it could)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address)
    listener.listen(128)
    _prepare()
    open(os.path.join(os.path.dirname(address), READY), "w").close()
    children: set[int] = set()
    while True:
        readable, _, _ = select.select([listener, sys.stdin.fileno()], [], [], 1.0)
        _reap(children)
        if sys.stdin.fileno() in readable and not os.read(sys.stdin.fileno(), 4096):
            break
        if listener in readable:
            client, _ = listener.accept()
            pid = os.fork()
            if pid == 0:
                listener.close()
                _child(Connection(client.detach()))  # never returns
            client.close()
            children.add(pid)
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _reap(children)
    shutil.rmtree(os.path.dirname(address), ignore_errors=True)


def _prepare() -> None:
    """Import :data:`PRELOAD` and fill the caches a training's first calls fill, in pure
    Python only: no torch operation runs here, so no thread pool exists when a child forks."""
    for name in PRELOAD:
        importlib.import_module(name)
    try:  # the tables save_pretrained builds at its first call (~0.2 s here)
        from transformers.conversion_mapping import get_checkpoint_conversion_mapping

        get_checkpoint_conversion_mapping("llama")
    except Exception:  # noqa: BLE001  (an optimisation: a child builds them itself)
        pass
    gc.collect()
    gc.freeze()  # no collection in a child writes to (and so copies) the server's objects


def _reap(children: set[int]) -> None:
    """Collect the children that have exited (no zombies left behind)."""
    for pid in list(children):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            children.discard(pid)


def _child(conn: Connection) -> None:
    """A forked child: run the training the connection sends, then ``os._exit``."""
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        _, request = conn.recv()
        for fd in (1, 2):
            received = recv_handle(conn)
            os.dup2(received, fd)
            os.close(received)
        os.chdir(request["cwd"])
        acks: SimpleQueue[Any] = SimpleQueue()
        threading.Thread(target=_watch, args=(conn, acks), daemon=True).start()
        conn.send(("started", os.getpid()))
        _train(conn, acks, request)
        code = 0
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001  (exiting either way)
                pass
        os._exit(code)


def _watch(conn: Connection, acks: SimpleQueue[Any]) -> None:
    """Pass each ack on; exit the child at once when the trial's end of the socket closes."""
    while True:
        try:
            acks.put(conn.recv())
        except (EOFError, OSError):
            os._exit(1)


def _train(conn: Connection, acks: SimpleQueue[Any], request: dict[str, Any]) -> None:
    """Run ``fit_in_run`` for ``request``; send each report, then ``done`` or the error."""
    from lossearch.fit import fit_in_run

    def report(metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        conn.send(("report", metrics))
        acks.get()

    try:
        fit_in_run(request["cfg"], request["run"], report, **request["kwargs"])
    except BaseException as err:  # noqa: BLE001  (every failure goes back to the trial)
        conn.send(("error", _picklable(err)))
        return
    conn.send(("done", None))


def _picklable(err: BaseException) -> BaseException:
    """``err`` with the child's traceback as a note, or a RuntimeError of the same text
    where ``err`` does not pickle."""
    err.add_note("in the training process:\n" + "".join(traceback.format_tb(err.__traceback__)))
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:  # noqa: BLE001
        plain = RuntimeError(f"{type(err).__name__}: {err}")
        plain.__notes__ = list(getattr(err, "__notes__", []))
        return plain


class ForkServerGone(RuntimeError):
    """The fork server did not answer (it ended); the caller may train in its own process."""


def fit_in_run_forked(
    address: str, cfg: TrainConfig, run: str, report: Report, **fit_kwargs: Any
) -> None:
    """:func:`lossearch.fit.fit_in_run` in a child of the fork server at ``address``, with the
    same contract: each epoch's ``report(metrics, None)`` is called here (the checkpoint is
    already in ``run``), and the child's exception is raised here (its traceback in a
    note). Raises :class:`ForkServerGone` where the server cannot be reached before the
    training starts; a child that ends without a result raises :class:`RuntimeError`.
    Leaving early (``report`` raises: Tune stopped the trial) kills the child."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(address)
    except OSError as err:
        sock.close()
        raise ForkServerGone(f"fork server at {address}: {err}") from None
    conn = Connection(sock.detach())
    pid: int | None = None
    outcome: tuple[str, Any] | None = None
    try:
        request = {"cfg": cfg, "run": run, "kwargs": fit_kwargs, "cwd": os.getcwd()}
        conn.send(("train", request))
        for fd in (1, 2):
            send_handle(conn, fd, 0)
        while outcome is None:
            try:
                kind, payload = conn.recv()
            except (EOFError, OSError) as err:
                if pid is None:
                    raise ForkServerGone(f"fork server at {address}: {err or 'closed'}") from None
                raise RuntimeError(f"the training process {pid} ended without a result") from None
            if kind == "started":
                pid = payload
            elif kind == "report":
                report(payload, None)
                conn.send(("ack", None))
            else:
                outcome = (kind, payload)
    finally:
        conn.close()
        if pid is not None and outcome is None:  # left early: the child may still train
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    if outcome[0] == "error":
        raise outcome[1]


if __name__ == "__main__":
    serve(sys.argv[1])
