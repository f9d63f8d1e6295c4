"""The live view's pieces (lossearch.search.progress), without Ray running.

The end-to-end check (a real search through the CLI: one line per trial, no result boxes)
is in tests/test_tracking.py, which shares its search with the trackers' checks.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from lossearch.search import progress
from lossearch.search.progress import (
    TrialLines,
    describe,
    flat_loss,
    fmt_value,
    live_view,
    search_columns,
)

FOCAL = {"loss.family": "focal", "loss.ce.weight": 0.6, "loss.focal.weight": 0.4,
         "loss.focal.gamma": 2.1, "optim.lr": 3.1e-3, "seeds": [0]}


@pytest.mark.parametrize(
    ("value", "text"),
    [(2.1, "2.1"), (0.6, "0.6"), (3.1e-3, "3.1e-3"), (1e-4, "1e-4"), (1e6, "1e6"), (3, "3"),
     (0.0, "0"), ("ce", "ce"), (True, "True"), (float("nan"), "nan")],
)
def test_fmt_value_is_compact(value, text):
    assert fmt_value(value) == text


def test_describe_gives_family_ce_weight_own_params_and_lr():
    assert describe(FOCAL) == "focal w_ce=0.6 γ=2.1 lr=3.1e-3"
    assert describe({"loss.family": "ce", "optim.lr": 1e-3}) == "ce lr=1e-3"
    tversky = {"loss.family": "tversky", "loss.tversky.alpha": 0.3, "loss.tversky.beta": 0.7}
    assert describe(tversky) == "tversky α=0.3 β=0.7"


def test_search_columns_order_family_weight_params_lr():
    ce = {"loss.family": "ce", "optim.lr": None}
    assert search_columns([ce, FOCAL]) == {
        "loss.family": "family", "loss.ce.weight": "w_ce", "loss.focal.gamma": "focal.γ",
        "optim.lr": "lr",
    }
    assert "optim.lr" not in search_columns([ce])  # not searched: no column


def test_a_fixed_learning_rate_comes_from_the_defaults():
    lines = TrialLines(total=1, metrics=["m"], epochs=1, defaults={"optim.lr": 5e-3})
    t = _trial("a", "RUNNING", {"loss.family": "ce"}, {"epoch": 1, "m": 1, "time_total_s": 1})
    assert lines.line([t], t).startswith("trial 1/1 ce lr=5e-3 → m 1 ")


def test_flat_loss_reads_a_training_config_tree():
    tree = {"loss": {"ce": {"weight": 0.6}, "focal": {"weight": 0.4, "gamma": 2.0}},
            "optim": {"lr": 3e-3}}
    assert describe(flat_loss("focal", tree)) == "focal w_ce=0.6 γ=2 lr=3e-3"
    assert describe(flat_loss("ce", {"loss": {"ce": {"weight": 1.0}}, "optim": {"lr": 1e-3}}))\
        == "ce lr=1e-3"


def _trial(tid, status, config, result, error_file=None):
    return SimpleNamespace(trial_id=tid, status=status, config=config, last_result=result,
                           error_file=error_file)


def test_trial_lines_count_ended_trials_and_say_how_each_ended(tmp_path):
    lines = TrialLines(total=8, metrics=["exact_match"], epochs=2)
    done = _trial("a", "TERMINATED", {"loss.family": "ce", "optim.lr": 1e-3},
                  {"epoch": 2, "exact_match": 0.5, "time_total_s": 3.0})
    running = _trial("b", "RUNNING", FOCAL,
                     {"epoch": 2, "exact_match": 0.5712, "time_total_s": 40.6})
    assert lines.line([done, running], running) == (
        "trial 2/8 focal w_ce=0.6 γ=2.1 lr=3.1e-3 → exact_match 0.571 (2 epochs, 41 s)"
    )
    pruned = _trial("c", "RUNNING", FOCAL, {"epoch": 1, "time_total_s": 9})
    assert lines.line([pruned], pruned).endswith(
        "→ no exact_match (stopped after 1 of 2 epochs, 9 s)"
    )
    err = tmp_path / "error.txt"
    err.write_text("Failure # 1\nTraceback ...\nTrialDiverged: loss is nan\n")
    broken = _trial("d", "RUNNING", {"loss.family": "poly1", "optim.lr": 1e6},
                    {"epoch": 1, "time_total_s": 2}, error_file=str(err))
    line = lines.line([done, broken], broken, error=progress.error_outcome(broken))
    assert line == "trial 2/8 poly1 lr=1e6 → diverged: loss is nan (1 epoch, 2 s)"
    err.write_text("Failure # 1\nTraceback ...\nValueError: bad shape\n")
    broken.path = str(tmp_path / "exp" / "run_trial_d_1")
    line = lines.line([done, broken], broken, error=progress.error_outcome(broken))
    assert line.endswith("→ error: ValueError: bad shape (traceback: run_trial_d_1/error.txt)"
                         " (1 epoch, 2 s)")


def test_confirm_lines_use_the_run_descriptions():
    lines = TrialLines(total=2, metrics=["exact_match", "test/exact_match"], epochs=2,
                       descriptions={"ce-1": "ce lr=1e-3"}, unit="confirm run")
    run = _trial("x", "RUNNING", {"run": "ce-1"},
                 {"epoch": 2, "exact_match": 0.5, "test/exact_match": 0.25, "time_total_s": 5})
    assert lines.line([run], run) == (
        "confirm run 1/2 ce lr=1e-3 → exact_match 0.5, test/exact_match 0.25 (2 epochs, 5 s)"
    )


def test_live_view_switches_ray_output_engine(monkeypatch):
    from ray import tune

    monkeypatch.setattr(progress, "_user_env", dict.fromkeys(progress._user_env))
    monkeypatch.delenv(progress.NEW_OUTPUT, raising=False)
    view = live_view(verbose=1, total=2, metrics=["exact_match", "exact_match"], epochs=1,
                     columns={"loss.family": "family"})
    assert os.environ[progress.NEW_OUTPUT] == "0"  # else Tune ignores the reporter
    assert os.environ[progress.PRINT_TRIAL_ERRORS] == "0"  # the trial's line says it
    reporter = view["run_config"]["progress_reporter"]
    assert isinstance(reporter, tune.CLIReporter)
    assert view["run_config"]["verbose"] == 1
    assert [type(c) for c in view["callbacks"]] == [TrialLines]
    assert view["callbacks"][0].metrics == ["exact_match"]
    ray_own = live_view(verbose=2, total=2, metrics=["m"], epochs=1, columns={})
    assert progress.NEW_OUTPUT not in os.environ
    assert progress.PRINT_TRIAL_ERRORS not in os.environ
    assert ray_own == {"run_config": {"verbose": 1}, "callbacks": []}
    assert live_view(verbose=0, total=2, metrics=["m"], epochs=1, columns={})["run_config"] \
        == {"verbose": 0}


def test_live_table_prints_on_change_only():
    from lossearch.search.progress import LiveTable

    table = LiveTable(parameter_columns={"loss.family": "family"}, max_report_frequency=0)
    t = _trial("a", "RUNNING", {}, {"epoch": 1})
    assert table.should_report([t])
    assert not table.should_report([t])
    t.last_result = {"epoch": 2}
    assert table.should_report([t])
    assert table.should_report([t], done=True)
