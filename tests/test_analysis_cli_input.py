"""``lossearch analyze`` on bad input: an experiment given twice, an ``--out`` folder of
something else, a path that does not exist. One line, exit 2, nothing written.

The experiments are written by hand (:func:`fake_experiment`: Tune's experiment state and
``result.json`` files, the search's ``lossearch_search.yaml``), so no Ray runs and each test
takes seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from analysis.load import check_distinct, experiment_key, load_trials
from analysis.report import MARKER, run_analysis
from lossearch.errors import LossearchError
from tests import procs

SEEDS = [0, 1]
#: (trial id, family, exact match of seed 0); seed 1 scores 0.01 more.
TRIALS = [("t0", "ce", 0.50), ("t1", "focal", 0.60), ("t2", "ce", 0.52), ("t3", "focal", 0.63)]


def fake_experiment(root: Path, name: str = "exp") -> Path:
    """A finished two-epoch search of 4 trials (2 CE, 2 focal) under seeds 0 and 1, in the
    files Ray Tune and the search driver write; returns its directory."""
    exp = root / name
    exp.mkdir(parents=True)
    meta = {
        "space": {"loss.family": {"type": "categorical", "choices": ["ce", "focal"]}},
        "base_config": {
            "task": {"name": "arith"},
            "model": {"name_or_path": "tiny"},
            "optim": {"epochs": 2},
        },
        "metric": "exact_match",
        "mode": "max",
        "num_seeds": len(SEEDS),
        "seeds": SEEDS,
    }
    (exp / "lossearch_search.yaml").write_text(yaml.safe_dump(meta))
    trial_data = []
    for i, (trial_id, family, score) in enumerate(TRIALS):
        logdir = f"trainable_{trial_id}_00000"
        config = {"loss.family": family, "optim.lr": 1e-3 * (i + 1), "seeds": SEEDS}
        lines = []
        for epoch in (1, 2):
            result = {"epoch": epoch, "training_iteration": epoch, "time_total_s": epoch * 1.0}
            for k in SEEDS:
                result[f"seed{k}/exact_match"] = score + 0.01 * k - 0.1 * (2 - epoch)
            result["exact_match"] = sum(result[f"seed{k}/exact_match"] for k in SEEDS) / 2
            lines.append(json.dumps(result))
        (exp / logdir).mkdir()
        (exp / logdir / "result.json").write_text("\n".join(lines) + "\n")
        trial = {
            "trial_id": trial_id,
            "status": "TERMINATED",
            "config": config,
            "relative_logdir": logdir,
        }
        runtime = {"last_result": json.loads(lines[-1]), "start_time": 1.0e9}
        trial_data.append([json.dumps(trial), json.dumps(runtime)])
    state = exp / "experiment_state-2026-01-01_00-00-00.json"
    state.write_text(json.dumps({"trial_data": trial_data}))
    return exp


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------- given twice


def test_the_same_experiment_twice_is_refused_in_every_spelling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exp = fake_experiment(tmp_path / "exps", "x")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "link").symlink_to(exp)
    spellings = [
        ["exps/x", "exps/x"],
        ["exps/x", str(exp)],
        ["exps/x", "exps/x/"],
        ["./exps/x", "exps/../exps/x"],
        ["exps/x", "link"],
        [f"file://{exp}", f"file://{exp}/"],
    ]
    for paths in spellings:
        out = tmp_path / "out"
        with pytest.raises(LossearchError, match=r"^experiment given twice: ") as info:
            run_analysis(paths, out=out)
        assert paths[0] in str(info.value) and "\n" not in str(info.value)
        assert not out.exists(), paths
        with pytest.raises(LossearchError, match="given twice"):
            load_trials(paths)  # the loader refuses it too: n would be doubled
    assert not (exp / "analysis").exists()


def test_distinct_experiments_and_uris_pass(tmp_path: Path) -> None:
    check_distinct([tmp_path / "a", tmp_path / "b", "s3://bucket/a", "s3://bucket/a/b"])
    assert experiment_key("s3://b/x/?endpoint_override=h") == "s3://b/x?endpoint_override=h"
    assert experiment_key(tmp_path / "a" / "..") == tmp_path.resolve().as_posix()


def test_two_different_experiments_still_load(tmp_path: Path) -> None:
    a, b = fake_experiment(tmp_path, "a"), fake_experiment(tmp_path, "b")
    trials = load_trials([a, b])
    assert len(trials) == 2 * len(TRIALS) * len(SEEDS)


# --------------------------------------------------------------------------- --out


def test_out_of_a_non_empty_folder_of_something_else_is_refused(tmp_path: Path) -> None:
    exp = fake_experiment(tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("# My own notes\n")
    before = _tree(mine)
    with pytest.raises(LossearchError) as info:
        run_analysis([exp], out=mine)
    assert str(info.value) == (
        f"--out {mine} is not empty and not an earlier lossearch analysis; name another folder"
    )
    assert _tree(mine) == before


def test_out_of_the_experiment_itself_is_refused(tmp_path: Path) -> None:
    exp = fake_experiment(tmp_path)
    before = _tree(exp)
    with pytest.raises(LossearchError, match="not an earlier lossearch analysis"):
        run_analysis([exp], out=exp)
    assert _tree(exp) == before


def test_default_out_folder_of_something_else_is_refused(tmp_path: Path) -> None:
    exp = fake_experiment(tmp_path)
    (exp / "analysis").mkdir()
    (exp / "analysis" / "notes.txt").write_text("keep me\n")
    with pytest.raises(LossearchError, match=r"^output folder .* is not empty"):
        run_analysis([exp])
    assert [p.name for p in (exp / "analysis").iterdir()] == ["notes.txt"]


def test_an_earlier_analysis_an_empty_folder_and_the_default_are_overwritten(
    tmp_path: Path,
) -> None:
    exp = fake_experiment(tmp_path)
    first = run_analysis([exp])  # the default folder, then re-run into it
    assert first.out_dir == exp / "analysis" and (first.out_dir / MARKER).is_file()
    (first.out_dir / "report.md").write_text("stale\n")
    again = run_analysis([exp])
    assert (again.out_dir / "report.md").read_text().startswith("# Loss search analysis")
    ranked = pd.read_csv(again.out_dir / "rankings.csv")
    assert set(ranked["n"]) == {len(SEEDS)}  # each trial counted once

    empty = tmp_path / "empty"
    empty.mkdir()
    assert (run_analysis([exp], out=empty).out_dir / "report.md").is_file()

    legacy = tmp_path / "legacy"  # written before the marker existed
    legacy.mkdir()
    (legacy / "trials.parquet").write_bytes(b"old")
    (legacy / "report.md").write_text("# Loss search analysis\n\nold\n")
    run_analysis([exp], out=legacy)
    assert len(pd.read_parquet(legacy / "trials.parquet")) == len(TRIALS) * len(SEEDS)


# --------------------------------------------------------------------------- not found


def test_a_missing_path_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(LossearchError, match=r"^experiment not found: .*nonexist$"):
        run_analysis([tmp_path / "nonexist"])
    with pytest.raises(LossearchError, match=r"^not a Ray Tune experiment: "):
        run_analysis([tmp_path])  # exists, but holds no experiment state
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- the command line


def test_cli_one_line_errors_and_nothing_written(tmp_path: Path) -> None:
    exp = fake_experiment(tmp_path / "exps", "x")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("# My own notes\n")
    before = {"exps": _tree(tmp_path / "exps"), "mine": _tree(mine)}
    cases = [
        (["analyze", "exps/x", "exps/x"], "error: experiment given twice: exps/x"),
        (
            ["analyze", "exps/x", str(exp) + "/"],
            f"error: experiment given twice: exps/x (as exps/x and as {exp}/)",
        ),
        (
            ["analyze", "exps/x", "--out", "mine"],
            "error: --out mine is not empty and not an earlier lossearch analysis; "
            "name another folder",
        ),
        (["analyze", "nonexist"], "error: experiment not found: nonexist"),
    ]
    done = procs.run_clis([args for args, _ in cases], cwd=tmp_path)
    for (args, expected), result in zip(cases, done, strict=True):
        assert procs.error_line(result) == expected, args
        assert result.stdout == ""
    assert {"exps": _tree(tmp_path / "exps"), "mine": _tree(mine)} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exps", "mine"]
