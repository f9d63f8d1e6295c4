"""``--keep best|all|none``: what is kept of the search trials' checkpoints once a search ends.

The modes are applied to a copy of the session's real 5-trial search (``small_search``:
finished trials of several families, at least one ce trial pruned by ASHA, poly1's errored),
never to the shared fixture itself. The fixture's own search already applied the default
``--keep best``; the copy gets back a run folder (a copy of a kept one) for every trial that
lost its own, so that each mode starts from every trial's checkpoints. One tiny real search
checks that the driver stores ``keep`` and applies it at the end of the search and of its
resume; the command line's bad value is one line and exit status 2, before Ray starts.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from lossearch.errors import LossearchError
from lossearch.search.export import best_configs
from lossearch.search.retention import after_search, apply_keep, check_keep, human_size
from tests.conftest import SEARCH_SPACE
from tests.procs import BIN, REPO, lossearch_env


def _trainings(exp: Path) -> set[str]:
    return {p.name for p in (exp / "trainings").iterdir()}


def _statuses(exp: Path) -> dict[str, str]:
    from analysis import load_trials

    df = load_trials([str(exp)]).drop_duplicates("trial_id")
    return dict(zip(df["trial_id"], df["status"], strict=True))


def _families(exp: Path, trial_ids: set[str]) -> list[str]:
    from analysis import load_trials

    df = load_trials([str(exp)]).drop_duplicates("trial_id")
    return list(df[df["trial_id"].isin(trial_ids)]["loss"])


def _others(exp: Path) -> dict[str, int]:
    """Every file outside trainings/ with its size: what retention must not touch."""
    return {
        str(p.relative_to(exp)): p.stat().st_size
        for p in exp.rglob("*")
        if p.is_file() and p.relative_to(exp).parts[0] != "trainings"
    }


@pytest.fixture
def exp_copy(small_search: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "small"
    shutil.copytree(small_search, dest)
    runs = dest / "trainings"
    kept = sorted(runs.iterdir())
    assert kept, "the search keeps its best trials' checkpoints"
    for trial_id in set(_statuses(dest)) - _trainings(dest):
        shutil.copytree(kept[0], runs / trial_id)
    return dest


def test_fixture_has_every_kind_of_ended_trial(small_search: Path, exp_copy: Path) -> None:
    statuses = _statuses(exp_copy)
    assert len(statuses) == 5 and {"finished", "pruned", "errored"} <= set(statuses.values())
    assert _trainings(exp_copy) == set(statuses)  # every trial has its run folder
    # the fixture's search ran with the default --keep best: only each family's best left
    best = {e["trial_id"] for e in best_configs(str(small_search), per_loss=True)}
    assert _trainings(small_search) == best


def test_keep_all_deletes_nothing(exp_copy: Path) -> None:
    before = _trainings(exp_copy)
    result = apply_keep(str(exp_copy), "all")
    assert _trainings(exp_copy) == before
    assert sorted(result.kept) == sorted(before) and result.freed == []
    assert result.line().startswith("checkpoints: kept 5 trials' (--keep all), ")


def test_keep_best_keeps_each_familys_best_and_export_model_works(
    exp_copy: Path, tmp_path: Path
) -> None:
    from lossearch.search.export_model import export_model

    statuses = _statuses(exp_copy)
    best = {e["trial_id"] for e in best_configs(str(exp_copy), per_loss=True)}
    assert best and all(statuses[t] == "finished" for t in best)
    families = _families(exp_copy, best)
    assert len(families) == len(set(families))  # one per family
    others = _others(exp_copy)
    result = apply_keep(str(exp_copy), "best")
    assert _trainings(exp_copy) == best
    freed = set(statuses) - best  # the pruned, the errored, a family's second best
    assert sorted(result.freed) == sorted(freed)
    assert result.freed_bytes > 0 and result.kept_bytes > 0
    assert result.line() == (
        f"checkpoints: kept {len(best)} trials' (best per family), "
        f"{human_size(result.kept_bytes)}; freed {len(freed)} trials', "
        f"{human_size(result.freed_bytes)}"
    )
    assert _others(exp_copy) == others  # Tune's files, the metadata, the study: untouched
    assert _statuses(exp_copy) == statuses  # the analysis reads the experiment as before
    info = export_model(str(exp_copy), tmp_path / "model")
    assert info["trial_id"] in best
    assert (tmp_path / "model" / "lossearch.yaml").is_file()


def test_keep_none_deletes_every_ended_trials_checkpoints(exp_copy: Path) -> None:
    statuses = _statuses(exp_copy)
    others = _others(exp_copy)
    result = apply_keep(str(exp_copy), "none")
    assert _trainings(exp_copy) == set()
    assert sorted(result.freed) == sorted(statuses) and result.kept == []
    assert result.line() == f"checkpoints: freed 5 trials', {human_size(result.freed_bytes)}"
    assert _others(exp_copy) == others
    assert _statuses(exp_copy) == statuses
    # a second pass finds nothing more to free
    assert apply_keep(str(exp_copy), "none").line() == "checkpoints: freed 0 trials', 0 B"



def test_export_model_after_keep_none_names_keep(exp_copy: Path, tmp_path: Path) -> None:
    from lossearch.experiment import read_meta, write_meta
    from lossearch.search.export_model import export_model

    meta = read_meta(str(exp_copy))
    write_meta(str(exp_copy), {**meta, "keep": "none"})
    apply_keep(str(exp_copy), "none")
    with pytest.raises(LossearchError, match=r"deleted when the search ended \(--keep none\)"):
        export_model(str(exp_copy), tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_a_uri_experiment_goes_through_pyarrow(exp_copy: Path) -> None:
    sizes = apply_keep(str(exp_copy), "all")
    result = apply_keep(f"file://{exp_copy}", "none")  # a URI, as s3://bucket/exp
    assert _trainings(exp_copy) == set()
    assert sorted(result.freed) == sorted(sizes.kept) and result.freed_bytes == sizes.kept_bytes


def _make_unfinished(exp: Path, trial_id: str) -> None:
    """Mark ``trial_id`` RUNNING in Tune's saved state, as when the driver died mid-trial."""
    (state_file,) = exp.glob("experiment_state-*.json")
    state = json.loads(state_file.read_text())
    found = 0
    for entry in state["trial_data"]:
        trial_json = json.loads(entry[0])
        if trial_json["trial_id"] == trial_id:
            trial_json["status"] = "RUNNING"
            entry[0] = json.dumps(trial_json)
            found += 1
    assert found == 1
    state_file.write_text(json.dumps(state))


@pytest.mark.filterwarnings("ignore::analysis.load.PartialExperimentWarning")
@pytest.mark.parametrize("keep", ["none", "best"])
def test_unfinished_trials_keep_their_checkpoints(exp_copy: Path, keep: str) -> None:
    statuses = _statuses(exp_copy)
    best = {e["trial_id"] for e in best_configs(str(exp_copy), per_loss=True)}
    running = sorted(best)[0]  # a finished trial with a checkpoint, now made unfinished
    _make_unfinished(exp_copy, running)
    # a trial that started but reported nothing yet: absent from the results, folder present
    (exp_copy / "trainings" / "fresh_trial" / "checkpoint_000000").mkdir(parents=True)
    files = {p.relative_to(exp_copy) for p in (exp_copy / "trainings" / running).rglob("*")}
    assert files, "the trial has checkpoint files to protect"
    result = apply_keep(str(exp_copy), keep)
    assert sorted(result.unfinished) == sorted([running, "fresh_trial"])
    assert running not in result.freed + result.kept
    left = {p.relative_to(exp_copy) for p in (exp_copy / "trainings" / running).rglob("*")}
    assert left == files
    assert (exp_copy / "trainings" / "fresh_trial" / "checkpoint_000000").is_dir()
    now_best = {e["trial_id"] for e in best_configs(str(exp_copy), per_loss=True)}
    kept = now_best if keep == "best" else set()
    assert _trainings(exp_copy) == {running, "fresh_trial"} | kept
    assert set(result.freed) == set(statuses) - {running} - kept
    assert result.line().endswith("; kept 2 unfinished trials' for resume")


def test_search_end_reads_the_trials_twice(
    exp_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """The end of a search reads the experiment twice: once to apply --keep (the driver's
    last step, its partial-experiment warning silenced) and once for the table and the export
    (the warning shown there); the functions under them take the frame they are given."""
    import warnings

    import analysis
    from analysis.load import PartialExperimentWarning
    from lossearch.search.export import export_best
    from lossearch.search.report import finish_search
    from lossearch.search.retention import after_search

    expected = export_best(str(exp_copy), out=tmp_path / "best.yaml")[0].read_text()
    best = {e["trial_id"] for e in best_configs(str(exp_copy), per_loss=True)}
    statuses = _statuses(exp_copy)
    running = sorted(t for t in set(statuses) - best if statuses[t] != "errored")[0]
    _make_unfinished(exp_copy, running)
    reads: list[object] = []
    load_trials = analysis.load_trials
    monkeypatch.setattr(
        analysis, "load_trials", lambda paths, **kw: reads.append(paths) or load_trials(paths, **kw)
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = after_search(str(exp_copy), "best")
    assert caught == []  # they come with the table
    assert line.startswith(f"checkpoints: kept {len(best)} trial") and "1 unfinished" in line
    assert _trainings(exp_copy) == best | {running}
    assert len(reads) == 1
    with pytest.warns(PartialExperimentWarning, match="experiment not finished: 1 running"):
        path = finish_search(str(exp_copy))
    assert len(reads) == 2
    assert path == exp_copy / "best.yaml" and path.read_text() == expected
    assert "best config:" in capsys.readouterr().out


def test_after_search_defaults_and_failures(exp_copy: Path, tmp_path: Path) -> None:
    from lossearch.experiment import SEARCH_FILE, read_meta

    before = _trainings(exp_copy)
    # an experiment from before --keep (no `keep` in its metadata) keeps everything
    meta = yaml.safe_load((exp_copy / SEARCH_FILE).read_text())
    del meta["keep"]
    (exp_copy / SEARCH_FILE).write_text(yaml.safe_dump(meta))
    keep = read_meta(str(exp_copy))["keep"]
    assert after_search(str(exp_copy), keep).startswith("checkpoints: kept 5 trials' (--keep all)")
    assert _trainings(exp_copy) == before
    # a failure is the line, not an exception: the search itself has finished
    line = after_search(str(tmp_path / "nowhere"), "best")
    assert line.startswith("checkpoints: not cleaned up (--keep best): ")
    with pytest.raises(LossearchError, match="--keep must be best, all or none, got 'some'"):
        check_keep("some")


def test_cli_bad_keep_is_one_line_before_ray(tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SEARCH_SPACE))
    proc = subprocess.run(
        [str(BIN / "lossearch"), "search", "--space", str(space), "--keep", "most",
         "--storage", str(tmp_path / "exps")],
        cwd=tmp_path, env=lossearch_env(), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == ["error: --keep must be best, all or none, got 'most'"], proc.stderr
    assert not (tmp_path / "exps").exists()


def test_search_stores_keep_and_applies_it_at_the_end_and_on_resume(
    ray_local, tmp_path: Path
) -> None:
    from lossearch.search.driver import resume, run_search

    space = {**SEARCH_SPACE, "grid": SEARCH_SPACE["grid"][:2]}  # ce and focal, both learn
    said: list[str] = []
    exp = run_search(space, num_samples=2, max_concurrent=2, storage=str(tmp_path), name="k",
                     overrides=["optim.epochs=1", "task.arith_train_size=320"], verbose=0,
                     announce=said.append, keep="none")
    assert yaml.safe_load(Path(exp, "lossearch_search.yaml").read_text())["keep"] == "none"
    assert sorted(_statuses(Path(exp)).values()) == ["finished", "finished"]
    assert not any(Path(exp, "trainings").iterdir())
    assert said[-1].startswith("checkpoints: freed 2 trials', ") and "0 B" not in said[-1]
    # resume reads `keep` from the metadata and applies it again (nothing left to free)
    said.clear()
    assert resume(exp, verbose=0, announce=said.append) == exp
    assert said == ["checkpoints: freed 0 trials', 0 B"]


def test_readme_states_the_keep_modes() -> None:
    text = (REPO / "README.md").read_text()
    assert "--keep best|all|none" in text
