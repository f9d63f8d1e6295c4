"""Bad input through the whole command line: one line on stderr, exit 2, nothing changed.

Every case runs ``.venv/bin/lossearch`` as a subprocess (cwd = a temporary directory) and
checks: exit status 2; stderr is exactly one non-empty line, ``error: ...``, naming the
problem, with no traceback; and nothing was written: the pre-made experiment directory
``exps/existing`` (a ``lossearch_search.yaml`` plus Tune-like files) hashes the same before
and after every case, no other experiment appears under ``exps/``, and no ``runs/`` folder
(``lossearch train``'s default output) is created. None of these cases may start Ray: each
is checked before ``ray.init`` (the whole table runs in seconds, with 2 cases at a time).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import procs
from tests.procs import REPO

QUICK = REPO / "search_spaces" / "quick.yaml"
SMALL = ["task.arith_train_size=320", "task.val_size=20", "optim.epochs=1"]


def _space(**space: Any) -> dict[str, Any]:
    return {
        "base": {"task": {"name": "arith", "arith_train_size": 320, "val_size": 20}},
        "search": {"sampler": "random", "num_samples": 2},
        "space": {"loss.family": "ce", "optim.lr": {"low": 1e-3, "high": 1e-2}, **space},
    }


def _make_files(root: Path) -> None:
    """Input files of the cases, and the pre-made experiment every case must leave alone."""
    (root / "bad.yaml").write_text("task:\n  name: arith\n  val_size: [1, 2\nseed: 0\n")
    (root / "space_empty_choices.yaml").write_text(
        yaml.safe_dump(_space(**{"optim.batch_size": {"choices": []}}))
    )
    (root / "empty.jsonl").write_text("")
    # PyYAML keeps the last of duplicate keys: this config's lr 0.1 would vanish
    (root / "dup.yaml").write_text("optim:\n  lr: 0.1\nseed: 1\noptim:\n  epochs: 2\n")
    dup_space = yaml.safe_dump(_space()) + "space:\n  optim.lr: 0.5\n"
    (root / "space_dup.yaml").write_text(dup_space)
    grace = {**_space(), "search": {"sampler": "random", "num_samples": 2, "grace_period": 5}}
    grace["base"] = {**grace["base"], "optim": {"epochs": 1}}
    (root / "space_grace.yaml").write_text(yaml.safe_dump(grace))
    (root / "space_inf.yaml").write_text(
        yaml.safe_dump(_space(**{"optim.lr": {"low": 1e-4, "high": float("inf")}}))
    )
    (root / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    (root / "latin1.jsonl").write_bytes(b'{"prediction": "caf\xe9", "reference": "x"}\n')
    rows = [{"prompt": f"question {i}: 1 + {i} =", "target": f"{1 + i}"} for i in range(40)]
    (root / "ok.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    long_rows = [{"prompt": "a very long question " * 4 + str(i), "target": "1"} for i in range(40)]
    (root / "long.jsonl").write_text("".join(json.dumps(r) + "\n" for r in long_rows))
    from lossearch.config import dump_config, load_config

    (root / "oldrun").mkdir()  # a run of the default config (lr 3e-3): no other config continues it
    dump_config(load_config(), root / "oldrun" / "config.yaml")
    (root / "not_an_experiment").mkdir()
    (root / "not_an_experiment" / "notes.txt").write_text("just a folder\n")
    exp = root / "exps" / "existing"
    (exp / "run_trial_0001").mkdir(parents=True)
    meta = {"space": _space(), "base_config": {"task": {"name": "arith"}}, "metric":
            "exact_match", "mode": "max", "num_seeds": 1, "seeds": [0]}
    (exp / "lossearch_search.yaml").write_text(yaml.safe_dump(meta))
    (exp / "run_trial_0001" / "params.json").write_text('{"loss.family": "ce"}')
    (exp / "run_trial_0001" / "result.json").write_text('{"epoch": 1, "exact_match": 0.5}\n')
    (exp / "trainings").mkdir()
    # an experiment whose saved space this lossearch does not read (a key of another version)
    old = root / "oldexp"
    old.mkdir()
    (old / "lossearch_search.yaml").write_text(
        yaml.safe_dump({**meta, "space": {**_space(), "extra": 1}, "overrides": {}})
    )
    (root / "cfg.yaml").write_text("task: {name: arith}\n")
    (root / "half.jsonl").write_text('{"prompt": "a", "target": \n')
    (root / "badrun").mkdir()
    (root / "badrun" / "config.yaml").write_text("foo: 1\n")


# (case id, argv, a fragment the one error line must contain)
CASES: list[tuple[str, list[str], str]] = [
    # ---- lossearch train
    ("train-malformed-yaml", ["train", "--config", "bad.yaml"], "malformed YAML"),
    ("train-unknown-loss", ["train", "loss.nope=1"], "nope"),
    ("train-negative-gamma", ["train", "loss.focal.weight=0.5", "loss.focal.gamma=-1"], "gamma"),
    (
        "train-missing-data-file",
        ["train", "task.name=jsonl", "task.train_file=missing.jsonl", "task.test_file=ok.jsonl"],
        "missing.jsonl",
    ),
    (
        "train-empty-dataset",
        ["train", "task.name=jsonl", "task.train_file=empty.jsonl", "task.test_file=ok.jsonl"],
        "empty.jsonl",
    ),
    (
        "train-val-size-too-big",
        ["train", "task.name=jsonl", "task.train_file=ok.jsonl", "task.test_file=ok.jsonl"],
        "task.val_size 200 is not smaller than the 40 training examples",
    ),
    (
        "train-missing-test-file",
        ["train", "task.name=jsonl", "task.train_file=ok.jsonl", "task.val_size=5",
         "task.test_file=no_test.jsonl"],
        "no_test.jsonl",
    ),
    # datasets logs its own line of a parse error, and wraps the cause in a generic one
    ("train-malformed-data-file",
     ["train", "task.name=jsonl", "task.train_file=half.jsonl", "task.test_file=ok.jsonl"],
     "could not read"),
    ("train-override-given-twice", ["train", "optim.lr=1e-3", "optim.lr=2e-3"],
     "override 'optim.lr' given more than once"),
    ("train-renamed-key", ["train", "task.eval_size=20"], "use task.val_size"),
    ("train-duplicate-yaml-key", ["train", "--config", "dup.yaml"],
     "dup.yaml (line 4): duplicate key 'optim'"),
    ("train-duplicate-key-in-override", ["train", "optim={lr: 1, lr: 2}"], "duplicate key 'lr'"),
    ("train-config-not-utf8", ["train", "--config", "latin1.yaml"], "not a UTF-8 text file"),
    ("train-config-is-a-directory", ["train", "--config", "not_an_experiment"],
     "not_an_experiment is a directory"),
    ("train-infinite-lr", ["train", "optim.lr=.inf"], "'optim.lr': Input should be a finite"),
    ("train-infinite-val-size", ["train", "task.val_size=.inf"], "got inf"),
    ("train-config-is-a-space", ["train", "--config", str(QUICK)],
     "is a search space, not a training config"),
    ("train-out-with-a-bad-config", ["train", "--out", "badrun", *SMALL],
     "holds a config.yaml that is not a valid config (config key 'foo': unknown key)"),
    ("train-name-is-a-path", ["train", "name=../elsewhere"], "must be a folder name"),
    ("train-log-to-nothing", ["train", "--log-to", ",", *SMALL], "names no tracker"),
    # ---- lossearch score
    ("score-not-utf8", ["score", "latin1.jsonl", "--task", "jsonl"], "not a UTF-8 text file"),
    ("score-directory", ["score", "not_an_experiment", "--task", "jsonl"], "is a directory"),
    ("score-pattern-of-another-task",
     ["score", "ok.jsonl", "--task", "gsm8k", "--answer-pattern", "(\\d+)"],
     "applies to task jsonl only"),
    # checked before Ray and before torch: the tiny tokenizer needs neither
    ("train-tiny-with-lora", ["train", "model.lora.r=8", *SMALL], "not supported with the 'tiny'"),
    ("train-out-not-a-run", ["train", "--out", "not_an_experiment", *SMALL], "not a lossearch run"),
    ("train-out-is-a-file", ["train", "--out", "ok.jsonl", *SMALL], "--out ok.jsonl is a file"),
    ("train-out-holds-another-run", ["train", "--out", "oldrun", "optim.lr=0.01"],
     "holds a run of another config (optim.lr 0.003 -> 0.01)"),
    # ---- lossearch search (into exps/, where the pre-made experiment lives)
    ("search-malformed-yaml", ["search", "--space", "bad.yaml"], "malformed YAML"),
    ("search-empty-choice-list", ["search", "--space", "space_empty_choices.yaml"],
     "empty choice list"),
    ("search-unknown-task", ["search", "--space", str(QUICK), "task.name=nope"], "unknown task"),
    # a trial's loss weights come from its family, never from the base config
    ("search-loss-weight-override", ["search", "--space", str(QUICK), "loss.ce=0"],
     "override 'loss.ce': a trial's loss weights come from its family"),
    ("search-override-given-twice", ["search", "--space", str(QUICK), "optim.lr=1e-3",
                                     "optim.lr=2e-3"], "override 'optim.lr' given more than once"),
    ("search-missing-model", ["search", "--space", str(QUICK),
                              "model.name_or_path=/no/such/model"], "/no/such/model"),
    (
        "search-prompts-too-long",
        ["search", "--space", str(QUICK), "task.name=jsonl", "task.train_file=long.jsonl",
         "task.validation_file=ok.jsonl", "task.max_length=16"],
        "max_length",
    ),
    ("search-space-is-a-config", ["search", "--space", "cfg.yaml"],
     "is a training config, not a search space"),
    ("search-warm-start-of-another-version",
     ["search", "--space", str(QUICK), "--warm-start", "oldexp"],
     "oldexp: its saved space does not load: config key 'extra': unknown key"),
    ("search-max-steps-ends-trials-early",
     ["search", "--space", str(QUICK), "optim.max_steps=50"],
     "optim.max_steps 50 ends each training in epoch 1 of optim.epochs 2"),
    ("search-grace-period-beyond-epochs", ["search", "--space", "space_grace.yaml"],
     "search.grace_period 5 is more than optim.epochs 1"),
    ("search-duplicate-space-key", ["search", "--space", "space_dup.yaml"],
     "duplicate key 'space'"),
    ("search-infinite-range", ["search", "--space", "space_inf.yaml"],
     "Input should be a finite number"),
    ("search-confirm-seeds-zero", ["search", "--space", str(QUICK), "--confirm-seeds", "0"],
     "--confirm-seeds must be at least 1"),
    # Tune reads a negative max_failures as "retry forever"
    ("search-max-failures-negative", ["search", "--space", str(QUICK), "--max-failures", "-1"],
     "--max-failures must be at least 0, got -1"),
    ("search-confirm-without-test-file",
     ["search", "--space", str(QUICK), "--confirm-seeds", "2", "task.name=jsonl",
      "task.train_file=ok.jsonl", "task.val_size=5", "task.test_file=no_test.jsonl"],
     "no_test.jsonl"),
    ("search-existing-name", ["search", "--space", str(QUICK), "--name", "existing", *SMALL],
     "already exists"),
    ("search-unknown-metric", ["search", "--space", str(QUICK), "--metric", "exact_mach"],
     "--metric 'exact_mach' is not reported"),
    ("search-name-is-a-path", ["search", "--space", str(QUICK), "--name", "../outside"],
     "--name must be a folder name"),
    # ---- resume / export / analyze on paths that are not (complete) experiments
    ("resume-not-an-experiment", ["resume", "not_an_experiment"], "not a lossearch experiment"),
    ("resume-no-tune-state", ["resume", "exps/existing"], "incomplete"),
    ("export-not-an-experiment", ["export", "not_an_experiment"], "not a lossearch experiment"),
    ("analyze-not-an-experiment", ["analyze", "not_an_experiment"], "not_an_experiment"),
    ("analyze-no-tune-state", ["analyze", "exps/existing"], "existing"),
    ("confirm-not-an-experiment", ["confirm", "not_an_experiment"], "not a lossearch experiment"),
    ("confirm-seeds-zero", ["confirm", "exps/existing", "--seeds", "0"],
     "--seeds must be at least 1"),
    ("confirm-top-zero", ["confirm", "exps/existing", "--top", "0"], "--top must be at least 1"),
    ("confirm-no-finished-trial", ["confirm", "exps/existing"], "existing"),
    ("confirm-max-concurrent-zero", ["confirm", "exps/existing", "--max-concurrent", "0"],
     "--max-concurrent must be at least 1"),
    ("confirm-max-failures-negative", ["confirm", "exps/existing", "--max-failures", "-2"],
     "--max-failures must be at least 0, got -2"),
    # ---- where export and analyze write
    ("export-bad-mode", ["export", "exps/existing", "--mode", "sideways"],
     "mode must be 'max' or 'min', got 'sideways'"),
    ("export-out-is-a-directory", ["export", "exps/existing", "--out", "not_an_experiment"],
     "--out not_an_experiment is a directory"),
    ("export-out-under-a-file", ["export", "exps/existing", "--out", "ok.jsonl/best.yaml"],
     "ok.jsonl is not a directory"),
    ("export-model-and-out", ["export", "exps/existing", "--model", "m", "--out", "x.yaml"],
     "leave out --out"),
    ("export-model-under-a-file", ["export", "exps/existing", "--model", "ok.jsonl/model"],
     "ok.jsonl is not a directory"),
    ("export-out-empty", ["export", "exps/existing", "--out", ""], "--out is empty; name a file"),
    ("analyze-out-is-a-file", ["analyze", "exps/existing", "--out", "ok.jsonl"],
     "--out ok.jsonl is a file"),
    # ---- usage errors (typer/click): unknown command or option, missing argument, bad value
    ("unknown-command", ["report", "exps/existing"], "No such command 'report'"),
    ("unknown-option", ["search", "--space", str(QUICK), "--bogus"], "No such option: --bogus"),
    ("missing-argument", ["confirm"], "Missing argument"),
    ("option-given-twice", ["score", "ok.jsonl", "--task", "arith", "-t", "gsm8k"],
     "--task given more than once"),
    ("option-given-twice-with-equals", ["export", "exps/existing", "--out=a.yaml", "--out",
                                        "b.yaml"], "--out given more than once"),
    ("option-not-a-number", ["search", "--space", str(QUICK), "--max-concurrent", "x"],
     "--max-concurrent"),
]
SEARCH_NAME = "fresh"  # search cases write (nothing) into exps/fresh


def _tree_hash(root: Path) -> str:
    """Hash of every path, file mode and file content under ``root``."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        h.update(f"{rel}\0{oct(path.stat().st_mode)}\0".encode())
        if path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()


def _argv(args: list[str]) -> list[str]:
    if args[0] == "search" and "--name" not in args:
        return [*args, "--storage", "exps", "--name", SEARCH_NAME]
    if args[0] == "search":
        return [*args, "--storage", "exps"]
    return args


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run every case once (2 at a time); each in its own copy-free cwd sharing the inputs."""
    root = tmp_path_factory.mktemp("bad_input")
    _make_files(root)
    before = _tree_hash(root / "exps")
    old_run = _tree_hash(root / "oldrun")

    def run(case: tuple[str, list[str], str]) -> tuple[str, subprocess.CompletedProcess[str]]:
        t0 = time.monotonic()
        done = procs.run_cli(_argv(case[1]), cwd=root, timeout=120)
        done.elapsed = time.monotonic() - t0  # type: ignore[attr-defined]
        return case[0], done

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(pool.map(run, CASES))
    return {
        "results": results,
        "root": root,
        "exps_before": before,
        "exps_after": _tree_hash(root / "exps"),
        "exps_listing": sorted(p.name for p in (root / "exps").iterdir()),
        "old_run_kept": _tree_hash(root / "oldrun") == old_run,
    }


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2(case: tuple[str, list[str], str], outcomes: dict) -> None:
    name, _, fragment = case
    done = outcomes["results"][name]
    line = procs.error_line(done)
    assert fragment in line, line
    assert done.elapsed < 60, f"{name} took {done.elapsed:.0f} s: did it start Ray?"


def test_nothing_was_written(outcomes: dict) -> None:
    root: Path = outcomes["root"]
    assert outcomes["exps_after"] == outcomes["exps_before"]
    assert outcomes["exps_listing"] == ["existing"]  # no exps/fresh from the search cases
    assert not (root / "runs").exists()  # lossearch train's default output
    assert not (root / "best.yaml").exists()
    assert sorted(os.listdir(root / "not_an_experiment")) == ["notes.txt"]
    assert outcomes["old_run_kept"]  # its config.yaml, not overwritten by another config


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(_has_cuda(), reason="this machine has a CUDA device")
def test_use_gpu_without_a_gpu_is_refused_before_anything_starts(tmp_path: Path) -> None:
    """Without a cluster named, a search asking a GPU on a machine without one kept its
    trials pending forever, and a train ran on the CPU without a word."""
    results = procs.run_clis(
        [["train", "scaling.use_gpu=true", *SMALL],
         ["search", "--space", str(QUICK), "--storage", "exps", "--name", "g",
          "scaling.use_gpu=true"]],
        cwd=tmp_path,
    )
    for done in results:
        assert "scaling.use_gpu is true, but no CUDA device is visible" in procs.error_line(done)
    assert list(tmp_path.iterdir()) == []
