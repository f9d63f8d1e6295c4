"""A real, small Ray Tune search whose experiment directory the analysis tests read.

:func:`make_tune_experiment` runs Tune the way the search driver does (see
``docs/CONTRACTS.md``, "Search trials"): ``lossearch_search.yaml`` written into the
experiment directory before ``fit()``, a flat trial config (``"loss.family"``, dotted
parameter keys, ``"seeds"``), one report per epoch with the trial-mean metrics and the
per-seed ``seed<k>/<metric>`` keys. The trainable is a plain function whose "metrics" are a
deterministic function of the config, so the run takes seconds, not minutes.

What the experiment is built to contain (the tests rely on it):

* 6 trials, each trained under seeds ``[0, 1]``; 4 epochs configured (``optim.epochs``).
* Families ``ce``, ``focal`` (conditional ``loss.focal.gamma``) and ``poly`` (conditional
  ``loss.poly.epsilon``); the first three trials are enqueued, so every family occurs.
* Trials run one at a time, CE first: CE is the first to reach ASHA's rung and focal beats
  it there, so both finish and rankings (finished trials only) always have CE and focal.
* The third trial (``optim.lr`` = 0.09) raises at epoch 2 after reporting epoch 1 ("errored").
* ASHA (grace 2, reduction factor 2, max_t 4) stops at least one weak trial early ("pruned").

When the real driver (``lossearch.search.run_search``) exists, point the ``tune_experiment``
fixture at it; the checks in ``tests/test_analysis_load.py`` state what they need.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import yaml

EXPERIMENT_NAME = "analysis_fixture"
NUM_TRIALS = 6
SEEDS = [0, 1]
EPOCHS = 4
ERROR_LR = 0.08
FAMILIES = ["ce", "focal", "poly"]
ERROR_MESSAGE = "loss diverged to NaN at epoch 2"

#: Enqueued first so that every family is present, then Optuna samples the rest.
FIXED_POINTS: list[dict[str, Any]] = [
    {"loss.family": "ce", "optim.lr": 1e-3},
    {"loss.family": "focal", "optim.lr": 3e-3, "loss.focal.gamma": 2.0},
    {"loss.family": "poly", "optim.lr": 0.09, "loss.poly.epsilon": 1.0},
]

BASE_CONFIG: dict[str, Any] = {
    "task": {"name": "arith", "val_size": 200, "max_length": 128},
    "model": {"name_or_path": "tiny", "dtype": "float32", "lora": None},
    "loss": {"ce_scope": "sequence", "ce": {"weight": 1.0}},
    "optim": {"lr": 3e-3, "epochs": EPOCHS, "batch_size": 32},
    "eval": {"batch_size": 64, "max_new_tokens": 24, "every_epochs": 1},
    "scaling": {"num_workers": 1, "use_gpu": False},
    "seed": 0,
    "name": "run",
}

SPACE: dict[str, Any] = {
    "optim.lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
    "loss.family": {
        "type": "categorical",
        "choices": {
            "ce": {},
            "focal": {"loss.focal.gamma": {"type": "float", "low": 0.5, "high": 5.0}},
            "poly": {"loss.poly.epsilon": {"type": "float", "low": -1.0, "high": 2.0}},
        },
    },
}


def define_space(trial: Any) -> dict[str, Any]:
    """Optuna define-by-run space: family, log-uniform lr, one conditional parameter."""
    family = trial.suggest_categorical("loss.family", FAMILIES)
    trial.suggest_float("optim.lr", 1e-4, 1e-1, log=True)
    if family == "focal":
        trial.suggest_float("loss.focal.gamma", 0.5, 5.0)
    elif family == "poly":
        trial.suggest_float("loss.poly.epsilon", -1.0, 2.0)
    return {"seeds": list(SEEDS)}


def quality(config: dict[str, Any]) -> float:
    """Final exact match of a configuration: best near lr 3e-3, focal at gamma 2 a bit better."""
    lr = float(config["optim.lr"])
    q = 0.7 - 0.08 * (math.log10(lr) - math.log10(3e-3)) ** 2
    family = config["loss.family"]
    if family == "focal":
        q += 0.05 - 0.01 * (float(config["loss.focal.gamma"]) - 2.0) ** 2
    elif family == "poly":
        q += 0.02 - 0.01 * (float(config["loss.poly.epsilon"]) - 1.0) ** 2
    return max(0.0, min(1.0, q))


def trainable(config: dict[str, Any]) -> None:
    """A plain Tune function that reports like the real training loop, one result per epoch."""
    import time

    from ray import tune

    q = quality(config)
    diverges = float(config["optim.lr"]) >= ERROR_LR
    if diverges:  # looks great at epoch 1 (so ASHA keeps it), then blows up at epoch 2
        q = 1.0
    epochs = int(config.get("optim.epochs", EPOCHS))
    for epoch in range(1, epochs + 1):
        time.sleep(0.05)
        if diverges and epoch == 2:
            raise RuntimeError(f"{ERROR_MESSAGE}\n(second line of the message)")
        result: dict[str, Any] = {"epoch": epoch}
        per_seed_em, per_seed_loss = [], []
        for k in config["seeds"]:
            em = min(1.0, q * (epoch + 3) / (epochs + 3) + 0.01 * k)
            loss = 2.0 - em - 0.1 * epoch
            result[f"seed{k}/exact_match"] = em
            result[f"seed{k}/loss"] = loss
            per_seed_em.append(em)
            per_seed_loss.append(loss)
        result["exact_match"] = sum(per_seed_em) / len(per_seed_em)
        result["loss"] = sum(per_seed_loss) / len(per_seed_loss)
        result["loss.ce"] = result["loss"]
        result["tokens_per_s"] = 1000.0
        tune.report(result)


def make_tune_experiment(storage: Path, name: str = EXPERIMENT_NAME) -> Path:
    """Run the small search under ``storage`` and return the experiment directory."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    exp_dir = Path(storage) / name
    exp_dir.mkdir(parents=True, exist_ok=True)
    (exp_dir / "lossearch_search.yaml").write_text(
        yaml.safe_dump(
            {
                "space": SPACE,
                "base_config": BASE_CONFIG,
                "metric": "exact_match",
                "mode": "max",
                "num_seeds": len(SEEDS),
            },
            sort_keys=False,
        )
    )
    searcher = OptunaSearch(
        space=define_space,
        metric="exact_match",
        mode="max",
        points_to_evaluate=FIXED_POINTS,
        seed=7,
    )
    scheduler = ASHAScheduler(
        time_attr="training_iteration", max_t=EPOCHS, grace_period=2, reduction_factor=2
    )
    # The workers cannot import this test helper by name: ship its functions by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"CPU": 0.5}),
            tune_config=tune.TuneConfig(
                metric="exact_match",
                mode="max",
                # one at a time: which trial ASHA prunes does not depend on timing
                search_alg=ConcurrencyLimiter(searcher, max_concurrent=1),
                scheduler=scheduler,
                num_samples=NUM_TRIALS,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=str(Path(storage).resolve()),
                verbose=0,
                failure_config=tune.FailureConfig(max_failures=0),
            ),
        )
        tuner.fit()
    finally:
        if started_here:
            ray.shutdown()
    return exp_dir.resolve()
