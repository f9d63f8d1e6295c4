"""Bad input of ``lossearch export`` and ``lossearch confirm``: corrupt confirm results,
a corrupt ``confirm.yaml`` and an ``--out`` that names a user's own file.

Each is one :class:`LossearchError` line naming the file (the CLI prints ``error: ...`` and
exits 2) and writes nothing. The experiments are hand-made folders (a confirm stage's
``verdict.csv`` and ``result.json``, or ``lossearch_search.yaml`` plus a trials frame): no
training, no Ray.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from lossearch.errors import LossearchError
from tests import procs

VERDICT_ROW = {"rank": 1, "loss": "focal", "config_id": "01234567", "split": "test",
               "mean": 0.5, "ci_low": 0.4, "ci_high": 0.6, "n_seeds": 1, "n_questions": 9}
RESULT = json.dumps({"config": {}, "seeds": [3]})
USER_YAML = "# my own settings\ntask:\n  name: arith\n"


def _confirmed(exp: Path, verdict: str | None = None, result: str | None = RESULT) -> Path:
    """``exp`` with a confirm stage whose winner is ``focal-01234567``: ``verdict`` (default:
    one good row) as ``verdict.csv``, ``result`` as its ``result.json`` (None: no file)."""
    run = exp / "confirm" / "runs" / "focal-01234567"
    run.mkdir(parents=True)
    if verdict is None:
        verdict = pd.DataFrame([VERDICT_ROW]).to_csv(index=False)
    (exp / "confirm" / "verdict.csv").write_text(verdict)
    if result is not None:
        (run / "result.json").write_text(result)
    return exp


def _one_line(err: pytest.ExceptionInfo[LossearchError]) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


# (case id, verdict.csv text or None for a good one, result.json text or None for none,
#  the file the error names, what it says)
CORRUPT = [
    ("result-malformed", None, '{"config": {}, "seeds": [3', "runs/focal-01234567/result.json",
     "malformed JSON (line 1)"),
    ("result-missing", None, None, "runs/focal-01234567/result.json", "missing"),
    ("result-no-seeds", None, '{"config": {}}', "runs/focal-01234567/result.json",
     "no 'seeds' list"),
    ("result-a-list", None, "[1, 2]", "runs/focal-01234567/result.json", "no 'config' mapping"),
    ("result-bad-config", None, json.dumps({"config": {"optim": {"lr": "fast"}}, "seeds": [3]}),
     "runs/focal-01234567/result.json", "config key 'optim.lr'"),
    ("verdict-no-rank", "loss,config_id,mean\nfocal,01234567,0.5\n", RESULT, "verdict.csv",
     "not a lossearch verdict (no 'rank' column)"),
    ("verdict-empty", "", RESULT, "verdict.csv", "empty, not a lossearch verdict"),
    ("verdict-mean-not-a-number",
     pd.DataFrame([{**VERDICT_ROW, "mean": "high"}]).to_csv(index=False), RESULT,
     "verdict.csv", "column 'mean' holds a value that is not a number"),
]


@pytest.mark.parametrize("case", CORRUPT, ids=[c[0] for c in CORRUPT])
def test_corrupt_confirm_results_are_one_line_naming_the_file(
    tmp_path: Path, case: tuple
) -> None:
    from lossearch.search.export import export_best
    from lossearch.search.export_model import export_model

    _, verdict, result, names, says = case
    exp = _confirmed(tmp_path / "exp", verdict, result)
    with pytest.raises(LossearchError) as err:
        export_best(str(exp), out=tmp_path / "best.yaml")
    line = _one_line(err)
    assert f"{exp}/confirm/{names}: " in line and says in line, line
    assert "re-run lossearch confirm" in line
    assert not (tmp_path / "best.yaml").exists()
    # the model export reads the same files through the same functions
    with pytest.raises(LossearchError) as err:
        export_model(str(exp), tmp_path / "model")
    assert _one_line(err) == line
    assert not (tmp_path / "model").exists()


def test_unreadable_checkpoint_history_is_one_line(tmp_path: Path) -> None:
    from lossearch.search.export_model import export_model

    exp = _confirmed(tmp_path / "exp")
    ckpt = exp / "confirm" / "runs" / "focal-01234567" / "checkpoint_000000"
    ckpt.mkdir()
    (ckpt / "state.json").write_text('{"epoch": 99}')
    (ckpt / "history.jsonl").write_text('{"epoch": 99, "seed3/exact_match"\n')
    with pytest.raises(LossearchError, match=f"checkpoint {ckpt} is unreadable: malformed JSON"):
        export_model(str(exp), tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_out_never_replaces_a_users_file_and_replaces_an_earlier_export(tmp_path: Path) -> None:
    from lossearch.search.export import export_best
    from lossearch.search.report import best_config_path

    exp = _confirmed(tmp_path / "exp")
    mine = tmp_path / "mine.yaml"
    mine.write_text(USER_YAML)
    with pytest.raises(LossearchError) as err:
        export_best(str(exp), out=mine)
    assert f"{mine} exists and is not a lossearch export" in _one_line(err)
    assert mine.read_text() == USER_YAML
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp", "mine.yaml"]  # nothing new

    # the search's and confirm's own best.yaml: written again and again
    best = best_config_path(str(exp))
    for _ in range(2):
        assert export_best(str(exp), out=best) == [best]
        assert best.read_text().startswith("# lossearch export: focal (trial 01234567)")
    # an empty file holds nothing to lose (e.g. a write cut short by a full disk)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert export_best(str(exp), out=empty) == [empty]
    assert yaml.safe_load(empty.read_text())["seed"] == 3


def _searched(exp: Path) -> pd.DataFrame:
    """``exp`` as a finished search of two families (metadata only) and its trials frame."""
    exp.mkdir()
    meta = {"space": {}, "base_config": {"optim": {"epochs": 1}}}
    (exp / "lossearch_search.yaml").write_text(yaml.safe_dump(meta))
    rows = [("aaaa0001", "ce", 0.5, 0.01), ("aaaa0002", "focal", 0.6, 0.02)]
    return pd.DataFrame([
        {"trial_id": trial, "loss": family, "seed": 0, "status": "finished",
         "final.exact_match": value, "param.optim.lr": lr}
        for trial, family, value, lr in rows
    ])


def test_per_loss_checks_every_file_before_writing_any(tmp_path: Path) -> None:
    from lossearch.search.export import export_best

    trials = _searched(tmp_path / "exp")
    out = tmp_path / "out" / "best.yaml"
    first = export_best(str(tmp_path / "exp"), out=out, per_loss=True, trials=trials)
    assert sorted(p.name for p in first) == ["best-ce.yaml", "best-focal.yaml"]
    # earlier exports are replaced
    assert export_best(str(tmp_path / "exp"), out=out, per_loss=True, trials=trials) == first
    before = {p.name: p.read_text() for p in first}

    (out.parent / "best-focal.yaml").write_text(USER_YAML)  # the one the export writes first
    with pytest.raises(LossearchError, match="best-focal.yaml exists and is not a lossearch"):
        export_best(str(tmp_path / "exp"), out=out, per_loss=True, trials=trials)
    assert (out.parent / "best-focal.yaml").read_text() == USER_YAML
    assert (out.parent / "best-ce.yaml").read_text() == before["best-ce.yaml"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["best-ce.yaml", "best-focal.yaml"]


PLANS = [
    ("malformed", "a: [\n", "malformed YAML (line 2)"),
    ("wrong-shape", "a: 1\n", "not a confirm plan (config key 'metric': Field required)"),
    ("not-a-mapping", "- 1\n", "not a confirm plan (not a mapping)"),
    ("empty", "", "not a confirm plan (not a mapping)"),
]


@pytest.mark.parametrize("case", PLANS, ids=[c[0] for c in PLANS])
def test_corrupt_confirm_plan_is_one_line_naming_the_file(
    tmp_path: Path, case: tuple[str, str, str]
) -> None:
    """What ``confirm`` reads first of an earlier confirm (``read_plan``), left as it was."""
    from lossearch.search.confirm import read_plan

    _, text, says = case
    root = tmp_path / "exp" / "confirm"
    root.mkdir(parents=True)
    (root / "confirm.yaml").write_text(text)
    with pytest.raises(LossearchError) as err:
        read_plan(str(root))
    line = _one_line(err)
    assert line.startswith(f"{root}/confirm.yaml: {says}; "), line
    assert "delete it and re-run lossearch confirm" in line
    assert (root / "confirm.yaml").read_text() == text
    assert read_plan(str(tmp_path)) is None  # no plan yet: confirm plans anew


def test_through_the_cli_one_line_exit_2_nothing_written(tmp_path: Path) -> None:
    exp = _confirmed(tmp_path / "exp", "loss,config_id,mean\nfocal,01234567,0.5\n")
    good = _confirmed(tmp_path / "good")
    (tmp_path / "mine.yaml").write_text(USER_YAML)
    no_rank, users = procs.run_clis(
        [["export", "exp"], ["export", "good", "--out", "mine.yaml"]], cwd=tmp_path
    )
    assert procs.error_line(no_rank) == (
        "error: exp/confirm/verdict.csv: not a lossearch verdict (no 'rank' column); "
        "re-run lossearch confirm exp"
    )
    assert "mine.yaml exists and is not a lossearch export" in procs.error_line(users)
    assert (tmp_path / "mine.yaml").read_text() == USER_YAML
    assert not (tmp_path / "best.yaml").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp", "good", "mine.yaml"]
    assert exp.exists() and good.exists()
