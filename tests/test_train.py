"""End-to-end training on Ray Train V2 with the tiny model on ``arith`` (real Ray, real files)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from lossearch.config import load_config
from lossearch.fit import epoch_batches
from lossearch.train import train

pytestmark = pytest.mark.slow

# An easy arith (operands 1..5, + and -): 60 optimizer steps take the tiny model past chance.
EASY = {
    "task.arith_train_size": 1920,
    "task.val_size": 50,
    "task.arith_max_operand": 5,
    "task.arith_ops": "+-",
    "optim.epochs": 1,
    "optim.lr": 5e-3,
    "eval.max_new_tokens": 16,
}


def _metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


_UNTRAINED: dict[tuple, float] = {}


def _untrained_exact_match(cfg) -> float:
    """Exact match of the untrained model (seed ``cfg.seed``) on ``cfg``'s validation split;
    computed once per task, model and seed (the loss plays no part before training)."""
    from lossearch.metrics import generate, score
    from lossearch.models import load_model_and_tokenizer
    from lossearch.tasks import load_task

    key = (cfg.task.model_dump_json(), cfg.model.model_dump_json(), cfg.seed)
    if key not in _UNTRAINED:
        data = load_task(cfg.task)
        model, tok = load_model_and_tokenizer(cfg.model, seed=cfg.seed)
        preds = generate(model, tok, [e.prompt for e in data.validation], max_new_tokens=16,
                         batch_size=64, stop_after_answer=True)
        _UNTRAINED[key] = score(data.spec, preds, [e.target for e in data.validation])[
            "exact_match"]
    return _UNTRAINED[key]


@pytest.fixture(scope="module")
def ce_run(ray_local, tmp_path_factory):
    cfg = load_config(overrides={**EASY, "loss": {"ce": 1.0}})
    out = tmp_path_factory.mktemp("ce") / "run"
    last = train(cfg, out_dir=out)
    return cfg, out, last


def test_run_directory_contents(ce_run):
    cfg, out, last = ce_run
    assert load_config(out / "config.yaml") == cfg
    rows = _metrics(out)
    assert [r["epoch"] for r in rows] == [1]
    for key in ("loss", "loss.ce", "exact_match", "formula_iou", "tokens_per_s"):
        assert key in rows[0]
    assert rows[0] == last
    assert (out / "checkpoint" / "seed0" / "model").is_dir()
    assert (out / "checkpoint" / "seed0" / "trainer.pt").is_file()


@pytest.mark.parametrize("loss", [{"ce": 0.6, "focal": 0.4}, {"ce": 0.6, "lovasz": 0.4}])
def test_composite_losses_learn(ray_local, loss, tmp_path):
    cfg = load_config(overrides={**EASY, "loss": loss})
    last = train(cfg, out_dir=tmp_path / "run")
    component = next(k for k in loss if k != "ce")
    assert f"loss.{component}" in last and "loss.ce" in last
    assert last["exact_match"] > _untrained_exact_match(cfg)


def test_ce_learns_and_same_seed_same_metrics(ce_run, tmp_path):
    cfg, _, first = ce_run
    assert first["exact_match"] > _untrained_exact_match(cfg)
    again = train(cfg, out_dir=tmp_path / "again")
    # timing and where it ran (process id, placement group) differ between runs
    drop = {"tokens_per_s", "seed0/tokens_per_s", "worker_pid", "placement_group", "node_id"}
    assert {k: v for k, v in again.items() if k not in drop} == {
        k: v for k, v in first.items() if k not in drop
    }


def test_restart_continues_at_next_epoch(ce_run, tmp_path):
    import shutil

    cfg, out, first = ce_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    longer = cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"epochs": 2})})
    train(longer, out_dir=run)
    rows = _metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2]
    # epoch 1 was restored from the checkpoint, not trained again: even its timing is the same
    assert rows[0]["tokens_per_s"] == first["tokens_per_s"]
    assert rows[1]["loss"] < rows[0]["loss"]


def test_epoch_batches_split_global_batches_across_workers():
    one = epoch_batches(40, 8, seed=3, epoch=2)
    two = [epoch_batches(40, 4, seed=3, epoch=2, rank=r, world=2) for r in (0, 1)]
    assert len(one) == len(two[0]) == len(two[1]) == 5
    for s in range(5):
        assert two[0][s] + two[1][s] == one[s]
    assert epoch_batches(40, 8, seed=3, epoch=3) != one


def _fixed_length_jsonl(path, n: int) -> None:
    # every example has the same number of tokens, so per-worker token means average exactly
    rows = [{"prompt": f"{a:02d}+{b:02d}=", "target": f"{a + b:03d}"}
            for a in range(10, 10 + n) for b in (11,)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_two_workers_match_one_worker_first_step_gradient(ray_local, tmp_path):
    """Same global batch per optimizer step, accumulated over 2 micro-batches: the 2-worker
    DDP run (all-reducing only each group's last micro-batch, no_sync) gives 1 worker's
    gradient. (Without accumulation, DDP all-reduces every micro-batch: counted, with the
    no_sync case, in test_train_steps.py; one Ray run here covers the averaging for both.)"""
    accum = 2
    data = tmp_path / "sums.jsonl"
    _fixed_length_jsonl(data, 32)
    base = {
        "task.name": "jsonl", "task.train_file": str(data), "task.test_file": str(data),
        "task.val_size": 4, "optim.max_steps": 1, "optim.warmup_steps": 0,
        "optim.max_grad_norm": None, "eval.max_new_tokens": 4, "optim.grad_accum": accum,
    }
    single = load_config(overrides={**base, "optim.batch_size": 8 // accum})
    double = load_config(
        overrides={**base, "optim.batch_size": 4 // accum, "scaling.num_workers": 2}
    )
    train(single, out_dir=tmp_path / "one")
    train(double, out_dir=tmp_path / "two")

    def first_moments(run):
        state = torch.load(run / "checkpoint/seed0/trainer.pt", weights_only=False)
        return [s["exp_avg"] for _, s in sorted(state["optimizer"]["state"].items())]

    one, two = first_moments(tmp_path / "one"), first_moments(tmp_path / "two")
    assert len(one) == len(two) > 0
    # Adam's first moment after one step is (1 - beta1) * grad: the all-reduced DDP gradient
    for a, b in zip(one, two, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-8)
    assert any(a.abs().sum() > 0 for a in one)


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["optim.lrr=1"], "optim.lrr"), (["loss.focal=0.4", "loss.focal.gamma=-2"], "gamma"),
     (["--config", "missing.yaml"], "missing.yaml")],
)
def test_cli_bad_config_exits_2_naming_the_key(args, needle, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "lossearch.cli", "train", *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_summary_line_counts_epochs_and_skips_missing_metrics():
    from lossearch.metrics import summary_line

    m = {"epoch": 2, "loss": 0.41234, "exact_match": 0.5, "tokens_per_s": float("nan")}
    assert summary_line(m, 4) == "epoch 2/4  loss 0.4123  exact_match 0.5  tokens_per_s nan"
    assert summary_line(m).startswith("epoch 2  loss")
