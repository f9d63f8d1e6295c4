"""Stopping on SIGINT and SIGTERM: one line and exit 130/143, never Ray's tracebacks.

The ``lossearch`` command calls :func:`catch_stop_signals` first. From then on the first
SIGINT or SIGTERM raises ``KeyboardInterrupt`` in the main thread (what Ray's blocking calls
pass on), which ``train`` and the search driver turn into :class:`Interrupted` with what to
do next (:func:`interrupted`); the command line prints it as ``interrupted — <detail>``
with exit status ``128 + signal``. Within
:func:`graceful_stop` (the search driver around ``Tuner.fit()``) it asks Tune to stop
gracefully instead, and the caller raises :class:`Interrupted` once Tune has saved the
experiment. A second signal raises at once. No torch or Ray import here: ``--help`` stays fast.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


class Interrupted(BaseException):  # noqa: N818 -- like KeyboardInterrupt, which it stands for
    """SIGINT or SIGTERM stopped a run; the command line exits with :attr:`exit_code`.

    A ``BaseException``, as ``KeyboardInterrupt``, so that no ``except Exception`` on its
    way up swallows it. ``detail`` says what was kept and how to go on; the command line
    prints ``interrupted — <detail>``.
    """

    def __init__(self, signum: int, detail: str = "") -> None:
        super().__init__(detail)
        self.signum = signum
        self.detail = detail

    @property
    def exit_code(self) -> int:
        """128 + the signal number: 130 for SIGINT, 143 for SIGTERM (the shell's convention)."""
        return 128 + self.signum


@dataclass
class StopRequest:
    """The first stop signal received (None: none yet) and who stops gracefully on it."""

    signum: int | None = None
    graceful: Callable[[], bool] | None = None


_STOP = StopRequest()
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def on_stop_signal(signum: int, frame: Any) -> None:
    """First signal: ask the graceful stopper, if one is active and can; else (and on a
    second signal) raise ``KeyboardInterrupt`` in the main thread.

    ``KeyboardInterrupt``, not :class:`Interrupted`: it is what Ray's blocking calls
    (``ray.get`` polls for signals) pass on; :func:`interrupted` then names the signal.
    """
    first = _STOP.signum is None
    if first:
        _STOP.signum = signum
        if _STOP.graceful is not None and _STOP.graceful():
            return
    raise KeyboardInterrupt


def received_signal() -> int | None:
    """The first stop signal this process received (None: none)."""
    return _STOP.signum


def interrupted(detail: str = "") -> Interrupted:
    """:class:`Interrupted` for the signal received (SIGINT if none was: a plain Ctrl-C)."""
    return Interrupted(_STOP.signum or signal.SIGINT, detail)


def catch_stop_signals() -> None:
    """Make SIGINT and SIGTERM stop lossearch quietly, not by Ray's exit or tracebacks.

    For the ``lossearch`` command (main thread only). ``lossearch.ray_train.init_ray`` keeps
    these handlers (``ray.init`` installs its own for SIGTERM), Ray Train's ``fit`` does not
    replace them (``lossearch.ray_internals.trainer_class``), and inside :func:`graceful_stop` the
    first signal stops Tune gracefully instead of raising.
    """
    _STOP.signum = None
    for signum in STOP_SIGNALS:
        signal.signal(signum, on_stop_signal)


def catching_stop_signals() -> bool:
    """Whether :func:`catch_stop_signals` handles SIGINT in this process."""
    return signal.getsignal(signal.SIGINT) is on_stop_signal


@contextmanager
def graceful_stop(stop: Callable[[], bool]) -> Iterator[StopRequest]:
    """Within the block the first stop signal calls ``stop()`` instead of raising.

    ``stop`` returns False when it cannot stop anything yet (then ``KeyboardInterrupt`` is
    raised as outside the block). The yielded request's ``signum`` tells, after the block,
    whether a signal stopped it. Without :func:`catch_stop_signals` nothing changes.
    """
    if not catching_stop_signals() or threading.current_thread() is not threading.main_thread():
        yield StopRequest()
        return
    _STOP.graceful = stop
    try:
        yield _STOP
    finally:
        _STOP.graceful = None
