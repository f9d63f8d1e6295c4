"""The search end to end: real Ray Tune + Optuna + Ray Train, resume after SIGKILL, export."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import EASY_BASE

from analysis import load_trials
from lossearch.config import load_config
from lossearch.search.export import export_best
from lossearch.train import train

pytestmark = pytest.mark.slow


def test_search_runs_every_trial_once(small_search):
    df = load_trials([small_search])
    assert df["trial_id"].nunique() == 5 and len(df) == 5
    assert sorted(df["loss"]) == ["ce", "ce", "focal", "poly1", "tversky"]
    assert (small_search / "lossearch_search.yaml").is_file()
    # no --log-to tensorboard, so no event files (Ray Tune writes them by default)
    assert len(list(small_search.glob("run_trial_*/result.json"))) == 5
    assert not list(small_search.rglob("events.out.tfevents*"))


def test_conditional_parameters_only_where_they_apply(small_search):
    df = load_trials([small_search])

    def present(col: str, families: set[str]) -> bool:
        """``col`` is set on every trial of ``families`` and on no other trial."""
        mine = df["loss"].isin(families)
        return bool(df.loc[mine, col].notna().all() and df.loc[~mine, col].isna().all())

    assert present("param.loss.focal.gamma", {"focal"})
    assert present("param.loss.tversky.alpha", {"tversky"})
    assert present("param.loss.tversky.beta", {"tversky"})
    assert present("param.loss.poly1.epsilon", {"poly1"})
    assert present("param.loss.ce.weight", {"focal", "tversky", "poly1"})


def test_asha_prunes_and_divergence_fails_the_trial(small_search):
    df = load_trials([small_search])
    pruned = df[df["status"] == "pruned"]
    assert len(pruned) >= 1
    assert ((pruned["param.optim.lr"] - 1e-7).abs() < 1e-12).any()
    errored = df[df["status"] == "errored"]
    assert list(errored["loss"]) == ["poly1"]
    assert "loss became" in errored["error"].iloc[0]
    # which of the learning trials ASHA keeps depends on which reaches the rung first (they
    # run concurrently); the first to arrive always goes on, so at least one finishes
    finished = df[df["status"] == "finished"]
    assert len(finished) >= 1 and (finished["epochs"] == 2).all()


def test_export_then_train_reproduces_the_metric(small_search, tmp_path):
    out = export_best(str(small_search), out=tmp_path / "best.yaml")[0]
    header = out.read_text().splitlines()[0]
    expected = float(header.split("final exact_match ")[1].split()[0])
    cfg = load_config(out)
    assert cfg.seed == 0 and cfg.task.arith_max_operand == 5
    last = train(cfg, out_dir=tmp_path / "rerun")
    assert abs(last["exact_match"] - expected) <= 0.02


def test_export_per_loss_writes_one_file_per_family(small_search, tmp_path):
    paths = export_best(str(small_search), out=tmp_path / "best.yaml", per_loss=True)
    names = sorted(p.name for p in paths)
    # only finished trials are exported: one file per family that has one
    finished = load_trials([small_search]).query("status == 'finished'")
    assert set(names) == {f"best-{family}.yaml" for family in finished["loss"].unique()}
    assert "best-poly1.yaml" not in names
    for p in paths:
        load_config(p)


def test_export_out_expands_the_home_directory(small_search, tmp_path, monkeypatch):
    """``--out=~/best.yaml`` (a shell leaves ``~`` after ``=`` as it is) writes into home,
    not into a folder named ``~``."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (path,) = export_best(str(small_search), out="~/best.yaml")
    assert path == tmp_path / "home" / "best.yaml" and path.is_file()
    assert not (tmp_path / "~").exists()


def test_another_metric_is_ranked_in_its_own_direction(small_search):
    """The search maximised exact_match; export and confirm by ``loss`` pick the lowest loss
    (as ``lossearch analyze`` ranks it), not the highest under the search's mode."""
    from lossearch.search.confirm import plan
    from lossearch.search.export import best_configs

    finished = load_trials([small_search]).query("status == 'finished'")
    lowest = finished.groupby("trial_id")["final.loss"].mean().idxmin()
    assert best_configs(str(small_search), metric="loss")[0]["trial_id"] == lowest
    confirm = plan(str(small_search), seeds=1, top_k=1, metric="loss")
    assert confirm.mode == "min"
    assert plan(str(small_search), seeds=1, top_k=1).mode == "max"


# --------------------------------------------------------------------------- SIGKILL + resume


def _session_pids(sid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    pids.append(int(entry))
            except (ProcessLookupError, PermissionError):
                pass
    return pids


def _kill_session(sid: int) -> None:
    for pid in _session_pids(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _reported_trials(exp: Path) -> int:
    return sum(1 for p in exp.glob("*/result.json") if p.stat().st_size > 0)


def test_sigkill_then_resume_completes_n_unique_trials(tmp_path):
    """Fair budgets too: exactly per_family trials of each family after the resume."""
    space = {
        # short trainings: this test is about the driver's death, not about learning
        "base": {**EASY_BASE, "task": {**EASY_BASE["task"], "arith_train_size": 320,
                                       "val_size": 20}, "eval": {"max_new_tokens": 8}},
        "search": {"sampler": "random", "seed": 1, "scheduler": "fifo", "per_family": 2},
        "space": {
            "loss.family": {"choices": {"ce": {}, "focal": {"loss.focal.gamma": {
                "low": 0.5, "high": 3.0}}}},
            "loss.ce.weight": {"low": 0.3, "high": 0.9},
            "optim.lr": {"low": 2e-3, "high": 8e-3, "log": True},
        },
    }
    space_file = tmp_path / "space.yaml"
    space_file.write_text(yaml.safe_dump(space))
    cli = [sys.executable, "-m", "lossearch.cli"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    exp = tmp_path / "exps" / "kill"
    log = open(tmp_path / "search.log", "w")
    proc = subprocess.Popen(
        [*cli, "search", "--space", str(space_file), "--max-concurrent", "2",
         "--storage", str(tmp_path / "exps"), "--name", "kill"],
        cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    try:
        deadline = time.time() + 240
        while _reported_trials(exp) < 1 and time.time() < deadline and proc.poll() is None:
            time.sleep(1)
        assert _reported_trials(exp) >= 1, (tmp_path / "search.log").read_text()[-3000:]
    finally:
        _kill_session(proc.pid)
        proc.wait()
    assert load_trials([exp])["trial_id"].nunique() <= 4

    done = subprocess.run([*cli, "resume", str(exp)], cwd=tmp_path, capture_output=True,
                          text=True, env=env, timeout=600, start_new_session=True)
    assert done.returncode == 0, done.stderr[-3000:]
    df = load_trials([exp])
    assert df["trial_id"].nunique() == 4 and len(df) == 4
    assert df["loss"].value_counts().to_dict() == {"ce": 2, "focal": 2}
    assert set(df["status"]) == {"finished"}
    assert (df["epochs"] == 2).all()
    configs = df[[c for c in df.columns if c.startswith("param.")]].round(12)
    assert not configs.duplicated().any()
    # every JSON file Tune and lossearch left is whole (search_gen_state-*.json is a pickle,
    # result.json is JSON lines, checked below)
    for path in exp.rglob("*.json"):
        if not path.name.startswith("search_gen_state") and path.name != "result.json":
            json.loads(path.read_text())
    for path in exp.rglob("result.json"):
        for line in path.read_text().splitlines():
            assert math.isfinite(json.loads(line)["epoch"])
    # the command to re-run the best config is printed on one line, whatever its length
    assert f"re-run it:   lossearch train --config {exp / 'best.yaml'}\n" in done.stdout


def test_analyze_the_real_search(small_search, tmp_path):
    out = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "-m", "lossearch.cli", "analyze", str(small_search), "--out", str(out),
         "--format", "json"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    ranks = json.loads(proc.stdout)
    families = {r["loss"] for r in ranks}
    # exactly the families with a finished trial rank (whether ASHA pruned the CE point
    # depends on which concurrent trial reached the rung first); the errored poly1 never does
    trials = load_trials([small_search])
    assert families == set(trials.loc[trials["status"] == "finished", "loss"])
    assert families and "poly1" not in families
    assert (out / "report.md").is_file() and (out / "trials.parquet").is_file()
    for link in re.findall(r"\]\(([^)]+\.png)\)", (out / "report.md").read_text()):
        assert (out / link).stat().st_size > 0
