"""The confirm stage on real Ray: the search never reads test, confirm does; a killed confirm
resumes; export takes the confirmed winner.

The task is a jsonl whose every training target is ``ok`` (the tiny model learns it within
one short epoch) and whose test references are a string the model is never trained to say:
validation exact match is above zero, test exact match is exactly zero.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests import procs


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def searched(cli_search: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of conftest's ``cli_search`` (a 2-trial search, ce and focal, run while the
    test file did not even exist), in a folder of its own; the test file now written."""
    root = tmp_path_factory.mktemp("confirm")
    assert not (cli_search["root"] / "test.jsonl").exists()
    _write_jsonl(cli_search["root"] / "test.jsonl",
                 [{"prompt": f"item {i}: ", "target": "never said"} for i in range(700, 730)])
    shutil.copytree(cli_search["exp"], root / "exps" / "s")
    return root


@pytest.fixture(scope="module")
def confirmed(searched: Path) -> dict:
    """``lossearch confirm --seeds 2`` SIGKILLed once its first run has finished (with
    everything Ray started), then run again to the end: one confirm, read by both tests."""
    from analysis import load_trials

    exp = searched / "exps" / "s"
    trials = load_trials([exp])  # before confirm has written anything
    args = ["confirm", str(exp), "--seeds", "2", "--max-concurrent", "1"]
    proc = procs.start([procs.BIN / "lossearch", *args], log=searched / "kill.log",
                       cwd=searched, env=procs.lossearch_env())
    runs = exp / "confirm" / "runs"
    try:
        first = procs.wait_until(
            lambda: next(iter(runs.glob("*/result.json")), None) if runs.exists() else None,
            timeout=300,
            what="the first confirm run to finish",
        )
        mtime = first.stat().st_mtime_ns
        procs.kill_driver(proc)  # SIGKILL to the driver and everything Ray started
    finally:
        procs.stop(proc)
    finished_at_kill = len(list(runs.glob("*/result.json")))
    done = procs.run_cli(args, cwd=searched, timeout=400)
    return {"exp": exp, "trials": trials, "runs": runs, "first": first, "mtime": mtime,
            "finished_at_kill": finished_at_kill, "done": done}


def test_search_never_reads_test_and_confirm_scores_it(searched: Path, confirmed: dict) -> None:
    from analysis import load_confirmed

    exp = confirmed["exp"]
    trials = confirmed["trials"]
    assert (trials["status"] == "finished").all()
    assert trials["final.exact_match"].max() > 0  # validation: learnable
    assert not any(c.startswith(("final.test/", "best.test/")) for c in trials.columns)

    done = confirmed["done"]
    assert done.returncode == 0, done.stderr[-3000:]
    assert "on the test split" in done.stdout
    # the experiment's best.yaml is now the confirmed winner's config
    assert f"confirmed winner's config: {exp / 'best.yaml'}" in done.stdout
    assert "confirmed on the test split" in (exp / "best.yaml").read_text().splitlines()[0]
    plan = yaml.safe_load((exp / "confirm" / "confirm.yaml").read_text())
    assert {r["family"] for r in plan["runs"]} == {"ce", "focal"}
    assert plan["seeds"] == [0, 1]

    rows = load_confirmed([exp])
    assert len(rows) == 4  # 2 families x 2 seeds
    assert (rows["test.exact_match"] == 0).all()  # the references are never produced
    for path in rows["predictions"]:
        records = [json.loads(line) for line in Path(path).read_text().splitlines()]
        assert len(records) == 30 and {r["reference"] for r in records} == {"never said"}
    table = pd.read_csv(exp / "confirm" / "verdict.csv")
    assert set(table["loss"]) == {"ce", "focal"}
    assert (table["split"] == "test").all() and (table["n_seeds"] == 2).all()
    assert (table["n_questions"] == 30).all() and (table["mean"] == 0).all()

    # export now writes the confirmed winner, saying so
    out = searched / "winner.yaml"
    done = procs.run_cli(["export", str(exp), "--out", str(out)], cwd=searched, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "confirmed on the test split" in out.read_text().splitlines()[0]


def test_killed_confirm_resumes_with_every_run_once(confirmed: dict) -> None:
    runs, first, done = confirmed["runs"], confirmed["first"], confirmed["done"]
    assert confirmed["finished_at_kill"] == 1
    assert done.returncode == 0, done.stderr[-3000:]
    assert "1 already done" in done.stdout
    assert first.stat().st_mtime_ns == confirmed["mtime"]  # the finished run was not trained again
    results = sorted(p.parent.name for p in runs.glob("*/result.json"))
    assert len(results) == 2 and {r.split("-")[0] for r in results} == {"ce", "focal"}
