"""Wall time of a 4-trial search, 2 trials at a time, against the same 4 trainings in a row.

* search: ``lossearch.search.driver.run_search`` on a fixed 4-point grid (CE, and CE 0.6 +
  focal / tversky / poly1 0.4; FIFO scheduler, so no trial is stopped early), 2 concurrent
  trials, each trial a Ray Train run with ``scaling.cpus_per_worker: 0.99``.
* sequential: the same 4 configs (``trial_to_config`` of each grid point, exactly what the
  trials train) one after another through ``lossearch.train.train``: each a Ray Train run,
  the same code path as a trial minus Tune, in the same Ray session.
* plain (for context): the same 4 trainings one after another without Ray
  (``plain_train`` from ``benchmarks/train_step.py``: the same steps, evals and checkpoints).

Target: search <= 0.75x sequential. Full mode repeats the three in the order
search, sequential, plain, plain, sequential, search and takes medians. Everything runs in
one Ray session started like ``run_search`` starts it (``num_cpus = cores + 1``).

    .venv/bin/python benchmarks/search.py            # full, ~10-13 minutes
    .venv/bin/python benchmarks/search.py --quick    # smoke check, ~4 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")

from train_step import plain_train, print_table, print_verdicts  # noqa: E402  (benchmarks/ is not a package)

SEARCH_TARGET = 0.75


def bench_space(quick: bool) -> dict[str, Any]:
    """The search space: base config plus an explicit 4-point grid (docs/search_space.md)."""
    base = {
        "name": "bench-search",
        "seed": 0,
        "task": {
            "name": "arith",
            "arith_train_size": 480 if quick else 1600,
            "val_size": 40 if quick else 100,
        },
        "model": {"name_or_path": "tiny"},
        "loss": {"ce": 1.0},
        "optim": {"epochs": 2, "batch_size": 32, "warmup_steps": 10},
        "eval": {"max_new_tokens": 24},
        "scaling": {"num_workers": 1, "use_gpu": False, "cpus_per_worker": 0.99},
    }
    grid = [
        {"loss.family": "ce"},
        {"loss.family": "focal", "loss.ce.weight": 0.6, "loss.focal.gamma": 2.0},
        {"loss.family": "tversky", "loss.ce.weight": 0.6},
        {"loss.family": "poly1", "loss.ce.weight": 0.6, "loss.poly1.epsilon": 1.0},
    ]
    return {
        "base": base,
        "search": {
            "sampler": "grid",
            "seed": 0,
            "num_samples": len(grid),
            "scheduler": "fifo",
            "max_concurrent": 2,
            "metric": "exact_match",
            "mode": "max",
        },
        "space": {"optim.lr": 3.0e-3},
        "grid": grid,
    }


def configs(space: dict[str, Any]) -> list[Any]:
    """The 4 training configs the trials run (grid order)."""
    from lossearch.search.space import load_space, trial_to_config

    sp = load_space(space)
    return [trial_to_config(sp.base, point) for point in sp.grid]


def label(cfg: Any) -> str:
    return "+".join(k for k in cfg.loss if k != "ce_scope")


def trial_reports(exp_path: str, t0: float) -> list[dict[str, Any]]:
    """Per trial, from its ``result.json``: when its trial function started (seconds after
    ``t0``, a ``time.time()``), the seconds from that start to its first and last report
    (Tune's ``time_total_s``), and the loss family."""
    out = []
    for f in sorted(Path(exp_path).glob("*/result.json")):
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        if not rows:
            continue
        out.append(
            {
                "loss": rows[0].get("config", {}).get("loss.family", "?"),
                "start": float(rows[0]["timestamp"]) - float(rows[0]["time_total_s"]) - t0,
                "first": float(rows[0]["time_total_s"]),
                "last": float(rows[-1]["time_total_s"]),
                "epochs": len(rows),
            }
        )
    return out


def run_search_timed(space: dict[str, Any], storage: Path, name: str) -> tuple[float, str, float]:
    from lossearch.search.driver import run_search

    t0 = time.time()
    exp = run_search(
        space, max_concurrent=2, scheduler="fifo", storage=str(storage), name=name, verbose=0
    )
    return time.time() - t0, exp, t0


def run_sequential(cfgs: list[Any], work: Path) -> list[float]:
    from lossearch.train import train

    times = []
    for k, cfg in enumerate(cfgs):
        t0 = time.perf_counter()
        train(cfg, work / f"run{k}")
        times.append(time.perf_counter() - t0)
        print(f"  sequential {label(cfg)}: {times[-1]:.1f} s", flush=True)
    return times


def run_plain(cfgs: list[Any], work: Path) -> tuple[list[float], list[float]]:
    """Wall time of each plain training, and the time to the end of its first epoch."""
    import torch

    threads = torch.get_num_threads()
    times, firsts = [], []
    for k, cfg in enumerate(cfgs):
        t0 = time.perf_counter()
        start = time.time()
        _, ends = plain_train(cfg, work / f"run{k}")
        times.append(time.perf_counter() - t0)
        firsts.append(ends[0] - start)
        torch.set_num_threads(threads)
        print(f"  plain {label(cfg)}: {times[-1]:.1f} s", flush=True)
    return times, firsts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small trainings, one round")
    p.add_argument("--rounds", type=int, default=None, help="repeats (full: 2, quick: 1)")
    args = p.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 2)

    import ray
    from transformers.utils import logging as hf_logging

    from lossearch.train import init_ray

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    started = time.perf_counter()
    print(
        f"lossearch benchmarks/search.py ({'quick' if args.quick else 'full'}); "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    space = bench_space(args.quick)
    cfgs = configs(space)
    work = Path(tempfile.mkdtemp(prefix="lossearch-bench-search-"))
    t0 = time.perf_counter()
    init_ray(None, num_cpus=(os.cpu_count() or 1) + 1)  # as run_search's _local_ray
    t_init = time.perf_counter() - t0

    search_t: list[float] = []
    seq_t: list[list[float]] = []
    plain_t: list[list[float]] = []
    plain_first: list[list[float]] = []
    trials: list[dict[str, Any]] = []
    try:
        for i in range(rounds):
            order = ["search", "sequential", "plain"]
            for kind in order if i % 2 == 0 else order[::-1]:
                print(f"round {i}: {kind}", flush=True)
                if kind == "search":
                    wall, exp, t0 = run_search_timed(space, work / "experiments", f"search{i}")
                    search_t.append(wall)
                    reports = sorted(trial_reports(exp, t0), key=lambda r: r["start"])
                    trials.extend(reports)
                    print(f"  search: {wall:.1f} s, {len(reports)} trials reported", flush=True)
                    for r in reports:
                        print(
                            f"    trial {r['loss']}: started at +{r['start']:.1f} s; first "
                            f"report {r['first']:.1f} s later, last {r['last']:.1f} s later "
                            f"({r['epochs']} epochs)",
                            flush=True,
                        )
                elif kind == "sequential":
                    seq_t.append(run_sequential(cfgs, work / f"seq{i}"))
                else:
                    times, firsts = run_plain(cfgs, work / f"plain{i}")
                    plain_t.append(times)
                    plain_first.append(firsts)
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)

    med = statistics.median
    search = med(search_t)
    seq = med([sum(t) for t in seq_t])
    plain = med([sum(t) for t in plain_t])
    per_run_ray = med(
        [s - q for ts, qs in zip(seq_t, plain_t, strict=True) for s, q in zip(ts, qs, strict=True)]
    )
    plain_each = med([t for ts in plain_t for t in ts])
    plain_first_med = med([t for ts in plain_first for t in ts])
    trial_first = med([t["first"] for t in trials]) if trials else float("nan")
    trial_last = med([t["last"] for t in trials]) if trials else float("nan")
    print_table(
        f"4 trainings ({label(cfgs[0])}, {', '.join(label(c) for c in cfgs[1:])}): "
        f"{cfgs[0].optim.epochs} epochs of {cfgs[0].task.arith_train_size // 32} steps, eval on "
        f"{cfgs[0].task.val_size}; median of {rounds} round(s); ray.init once: {t_init:.1f} s",
        ["", "wall s", "vs sequential", "vs plain"],
        [
            [
                "search, 2 at a time (run_search)",
                f"{search:.1f}",
                f"{search / seq:.3f}x",
                f"{search / plain:.3f}x",
            ],
            [
                "sequential, 4 x lossearch.train.train",
                f"{seq:.1f}",
                "1.000x",
                f"{seq / plain:.3f}x",
            ],
            ["plain loop, 4 in a row, no Ray", f"{plain:.1f}", f"{plain / seq:.3f}x", "1.000x"],
        ],
    )
    print(
        f"\n  per training: plain {plain_each:.1f} s; lossearch.train.train adds "
        f"{per_run_ray:+.1f} s (median over configs and rounds)\n"
        f"  per trial: first report {trial_first:.1f} s after the trial function starts "
        f"(plain loop: end of epoch 1 at {plain_first_med:.1f} s), last report at "
        f"{trial_last:.1f} s (plain loop total {plain_each:.1f} s)"
    )
    print_verdicts("Target", [("search / sequential", search / seq, SEARCH_TARGET)], started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
