"""Whether Ray Tune's saved state of an experiment loads with the code installed now.

``lossearch resume`` hands an experiment to ``Tuner.restore``, which unpickles two files:
``tuner.pkl`` (the trainable, the search space, the callbacks) and the newest
``searcher-state-*.pkl`` (the Optuna searcher and its study). Pickles name classes by module
and name, so state saved by another lossearch (a module renamed or a class changed) or
another Ray does not load. Tune then either raises a traceback (``tuner.pkl``) or, worse,
logs the error and starts a new run inside the experiment (the searcher), mixing new trials
with the old ones. :func:`check_resumable` loads both first and turns a failure into one
line that leaves the experiment as it was.
"""

from __future__ import annotations

import pickle

from lossearch.errors import LossearchError

TUNER_FILE = "tuner.pkl"
SEARCHER_FILES = ("searcher-state-", ".pkl")  # Tune's name: prefix, timestamp, suffix


def _saved_pickles(exp_path: str) -> dict[str, bytes]:
    """``{name: bytes}`` of ``tuner.pkl`` and the newest searcher state (the one Tune
    restores: the greatest name), those present; local path or URI (opened once, as
    analysis opens an experiment)."""
    from analysis.location import locate

    loc = locate(exp_path)
    names = [i.base_name for i in loc.listdir()]
    prefix, suffix = SEARCHER_FILES
    searcher = sorted(n for n in names if n.startswith(prefix) and n.endswith(suffix))
    out = {}
    for name in [n for n in (TUNER_FILE, *searcher[-1:]) if n in names]:
        with loc.fs.open_input_stream(loc.join(name)) as f:
            out[name] = f.read()
    return out


def check_resumable(exp_path: str) -> None:
    """Raise a one-line :class:`LossearchError` when Tune's saved state of ``exp_path`` does
    not unpickle here; nothing is written.

    Needs the modules the state names importable (as ``Tuner.restore`` does); reading an
    experiment's files this way runs the code its pickles name, so resume only experiments
    you trust (Tune's own restore does the same).
    """
    for name, data in _saved_pickles(exp_path).items():
        try:
            pickle.loads(data)
        except Exception as exc:  # whatever unpickling raises, Tune could not restore it
            first = (str(exc).strip().splitlines() or [""])[0]
            raise LossearchError(
                f"cannot resume {exp_path}: its saved search state ({name}) does not load with "
                f"the lossearch and Ray installed now ({type(exc).__name__}: {first}); it was "
                f"left unchanged: analyze it with lossearch analyze, or start a new search "
                f"that reuses its trials with --warm-start {exp_path}"
            ) from None
