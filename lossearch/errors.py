"""The one exception type for bad user input.

Anything the user can fix (a malformed file, an unknown name, an out-of-range value) raises
:class:`LossearchError` with a one-line message; the CLI prints it and exits with status 2.
"""


class LossearchError(ValueError):
    """A user-facing error: one line, no traceback, exit code 2 from the CLI."""


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite (raised by :func:`lossearch.fit.fit`).

    Defined here, not in :mod:`lossearch.fit`, so that a trial process that trains in a
    fork server's child (:mod:`lossearch.fork_server`) can catch it without importing torch.
    """
