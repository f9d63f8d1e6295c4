"""The search's persistent Optuna study and warm starts (lossearch/search/study.py).

``small_search`` (tests/conftest.py) is read, never changed; one small real search
warm-starts from it. The bad-input cases run the command line and stop before Ray starts.
"""

from __future__ import annotations

import copy
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from analysis.load import load_trials
from lossearch.search import study as st
from tests.conftest import SEARCH_SPACE
from tests.procs import run_clis


def _journal(exp: Path) -> optuna.storages.BaseStorage:
    backend = optuna.storages.journal.JournalFileBackend(str(exp / st.JOURNAL_FILE))
    return optuna.storages.JournalStorage(backend)


def test_small_search_study_loads_with_ids_seeds_values_and_states(small_search: Path) -> None:
    study = optuna.load_study(study_name="small", storage=_journal(small_search))
    trials = load_trials([small_search])
    by_id = {t.user_attrs["ray_trial_id"]: t for t in study.trials}
    assert sorted(by_id) == sorted(set(trials["trial_id"]))  # each Tune trial once
    for trial_id, rows in trials.groupby("trial_id"):
        t = by_id[trial_id]
        assert t.user_attrs["seeds"] == [0] and t.user_attrs["experiment"] == str(small_search)
        assert t.params["grid_point"] == rows["param.grid_point"].iloc[0]
        state = {"finished": TrialState.COMPLETE, "pruned": TrialState.PRUNED,
                 "errored": TrialState.FAIL}[rows["status"].iloc[0]]
        assert t.state == state
        if state == TrialState.COMPLETE:
            assert t.value == pytest.approx(rows["final.exact_match"].mean())
            assert t.intermediate_values  # the per-epoch metric
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert st.load_study(str(small_search)).trials == study.trials


def test_recording_a_trial_twice_keeps_one(tmp_path: Path) -> None:
    """A resumed search that finishes a trial again does not duplicate it."""
    meta = {"mode": "max", "metric": "m", "seeds": [0, 1], "study_name": "x",
            "base_config": {"optim": {"epochs": 2}}}
    rec = st.StudyRecorder(str(tmp_path), meta)
    ot = optuna.trial.create_trial(
        params={"a": 0.5}, distributions={"a": optuna.distributions.FloatDistribution(0, 1)},
        value=0.0, intermediate_values={1: 0.2, 2: 0.4},
    )
    rec.record("t1", ot, {"m": 0.4, "epoch": 2}, False)
    rec.record("t1", ot, {"m": 0.4, "epoch": 2, "done": True}, False)
    rec.record("t2", ot, {"m": 0.1, "epoch": 1, "done": True}, False)  # stopped by ASHA
    rec.record("t3", ot, None, True)
    rec.record("t4", ot, None, False)  # removed before it ran: not recorded
    import pickle

    again = pickle.loads(pickle.dumps(rec))  # as Tune checkpoints the searcher
    again.record("t1", ot, {"m": 0.4, "epoch": 2}, False)
    trials = optuna.load_study(study_name="x", storage=_journal(tmp_path)).trials
    assert [(t.user_attrs["ray_trial_id"], t.state, t.value) for t in trials] == [
        ("t1", TrialState.COMPLETE, 0.4), ("t2", TrialState.PRUNED, None),
        ("t3", TrialState.FAIL, None),
    ]
    assert trials[0].user_attrs["seeds"] == [0, 1]


def test_warm_start_search(small_search: Path, tmp_path: Path) -> None:
    """Earlier trials are in the new study (values kept); measured points are not re-run;
    resuming the finished search adds nothing."""
    from lossearch.experiment import read_meta
    from lossearch.search.driver import resume, run_search

    exp = Path(run_search(SEARCH_SPACE, max_concurrent=2, storage=str(tmp_path), name="warm",
                          overrides=["optim.epochs=1"], warm_start=[str(small_search)],
                          verbose=0))
    meta = read_meta(str(exp))
    assert meta["warm_start"] == [str(small_search)] and meta["num_samples"] == 1
    old = optuna.load_study(study_name="small", storage=_journal(small_search)).trials
    new = optuna.load_study(study_name="warm", storage=_journal(exp)).trials
    warm = [t for t in new if t.user_attrs.get("warm_start")]
    assert {(t.user_attrs["ray_trial_id"], t.state, t.value, t.params["grid_point"])
            for t in warm} == {(t.user_attrs["ray_trial_id"], t.state, t.value,
                                t.params["grid_point"]) for t in old}
    measured = {t.params["grid_point"] for t in old if t.state != TrialState.FAIL}
    ran = [t for t in new if not t.user_attrs.get("warm_start")]
    assert len(ran) == 1 and ran[0].params["grid_point"] not in measured
    assert ran[0].user_attrs["experiment"] == str(exp)
    resume(str(exp))
    assert len(optuna.load_study(study_name="warm", storage=_journal(exp)).trials) == len(new)


def test_warm_start_trials_do_not_count_toward_per_family() -> None:
    from lossearch.search.space import load_space
    from lossearch.search.trial_config import FAMILY_KEY

    space = {"base": SEARCH_SPACE["base"], "search": {"sampler": "random", "per_family": 2},
             "space": {"loss.family": {"choices": ["ce", "focal"]},
                       "optim.lr": {"low": 1e-4, "high": 1e-2, "log": True}}}
    sp = load_space(space)
    dists = {FAMILY_KEY: sp.family.dist, "optim.lr": sp.families[0].params[0].dist}
    warm = [optuna.trial.create_trial(params={FAMILY_KEY: "ce", "optim.lr": 1e-3},
                                      distributions=dists, value=0.5,
                                      user_attrs={st.WARM_ATTR: True, "ray_trial_id": w})
            for w in ("w1", "w2")]
    from lossearch.experiment import SearchMeta

    meta = SearchMeta(space=space, base_config={"optim": {"epochs": 1}}, per_family=2).model_dump()
    searcher = st.make_searcher(sp, meta, None)
    searcher._ot_study.add_trials(warm)  # as warm_start() would give
    searcher._ot_study.sampler.__class__ = st.FreshFamilyBudget
    families = [searcher.suggest(f"t{i}")[FAMILY_KEY] for i in range(4)]
    assert sorted(families) == ["ce", "ce", "focal", "focal"]  # 2 new of each


@pytest.fixture(scope="module")
def cli_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    (root / "same.yaml").write_text(yaml.safe_dump(SEARCH_SPACE))
    other = copy.deepcopy(SEARCH_SPACE)
    other["grid"][1]["loss.focal.gamma"] = 3.0
    (root / "other.yaml").write_text(yaml.safe_dump(other))
    (root / "folder").mkdir()
    return root


BAD_INPUT = [
    (["--space", "same.yaml", "--warm-start", "folder"], "not a lossearch experiment"),
    (["--space", "same.yaml", "--warm-start", "nowhere"], "not an experiment directory"),
    (["--space", "other.yaml", "--warm-start", "{small}"],
     "a different search space (first: 'grid[1] loss.focal.gamma')"),
    (["--space", "same.yaml", "--warm-start", "{small}", "--num-samples", "3"],
     "exceeds the grid's 1 unmeasured points"),
    (["--space", "same.yaml", "--optuna-storage", "sqlite:////no/such/dir/x.db"],
     "--optuna-storage sqlite:////no/such/dir/x.db:"),
    (["--space", "same.yaml", "--optuna-storage", "studies.db"], "must be a database URL"),
]


@pytest.fixture(scope="module")
def bad_input_runs(cli_dir: Path, small_search: Path) -> list:
    """Every bad-input case through ``lossearch search``, 2 at a time (none may start Ray)."""
    commands = [["search", *[a.format(small=small_search) for a in args], "--storage", "exps",
                 "--name", "x"] for args, _ in BAD_INPUT]
    return run_clis(commands, cwd=cli_dir)


@pytest.mark.parametrize("case", range(len(BAD_INPUT)),
                         ids=[f"args{i}-{expect}" for i, (_, expect) in enumerate(BAD_INPUT)])
def test_bad_input(cli_dir: Path, bad_input_runs: list, case: int) -> None:
    expect = BAD_INPUT[case][1]
    out = bad_input_runs[case]
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, out.stderr[-2000:]
    assert len(lines) == 1 and expect in lines[0], lines
    assert not (cli_dir / "exps" / "x").exists()


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_resume_of_state_saved_by_other_code_is_one_line_and_changes_nothing(
    small_search: Path, tmp_path: Path
) -> None:
    """State pickled by another lossearch (here: a module name that no longer exists, as
    after a rename) fails before Ray starts, in one line; Tune would have raised a
    traceback (tuner.pkl) or started a new run inside the experiment (searcher state)."""
    import shutil

    from tests.procs import error_line

    cases = {"tuner.pkl": b"lossearch.search.space_compile",
             "searcher-state-*.pkl": b"lossearch.search.study"}
    commands, changed = [], {}
    for i, (pattern, module) in enumerate(cases.items()):
        exp = Path(shutil.copytree(small_search, tmp_path / f"exp{i}"))
        pkl = max(exp.glob(pattern))  # of several searcher states, Tune reads the newest
        data = pkl.read_bytes()
        assert module in data
        pkl.write_bytes(data.replace(module, module[:-1] + b"X"))  # same length
        changed[exp] = (pkl.name, _files(exp))
        commands.append(["resume", exp])
    for (exp, (name, before)), done in zip(changed.items(), run_clis(commands, cwd=tmp_path),
                                           strict=True):
        line = error_line(done)
        assert f"cannot resume {exp}: its saved search state ({name})" in line, line
        assert "ModuleNotFoundError" in line and f"--warm-start {exp}" in line
        assert _files(exp) == before
