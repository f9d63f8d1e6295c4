"""Wall time of a 4-trial search, 2 trials at a time, against the same 4 trainings in a row.

Three ways of running the same 4 trainings (CE, and CE 0.6 + focal / tversky / poly1 0.4;
the tiny model on arith, 2 epochs of ``--steps`` steps of 32 examples, greedy eval on the
validation split after each epoch):

* search: ``lossearch.search.driver.run_search`` on a fixed 4-point grid (FIFO scheduler, so
  no trial is stopped early), 2 concurrent trials. Each trial has one worker, so it runs
  ``lossearch.fit.fit`` inside its Ray Tune trial's process (``lossearch.search.trial``,
  actors reused from trial to trial), ``scaling.cpus_per_worker: 0.99``.
* plain: the same 4 configs (``trial_to_config`` of each grid point, exactly what the trials
  train) one after another through ``lossearch.fit.fit`` in this process, no Ray
  (``plain_train`` from ``benchmarks/train_step.py``: what a trial does around ``fit``,
  each epoch's checkpoint copied into a run folder).
* sequential: the same 4 configs one after another through ``lossearch.train.train``, what
  ``lossearch train`` runs. With one worker and no cluster named it trains in this process
  without Ray (a Ray Train run only with several workers or ``--address``); around ``fit``
  it adds its preflight, ``config.yaml``, the final ``checkpoint/`` and ``metrics.jsonl``,
  and it scores the test split after the last epoch, which a trial does not: the configs
  set ``task.test_size: 8`` (one short generation batch) to keep that extra work small.

Each search starts a Ray of its own as ``run_search`` starts one (``local_ray_cpus()``:
cores + 1, and a fork server whose children train the trials: :mod:`lossearch.fork_server`)
and shuts both down after. The table gives each wall time and its ratio to the plain loop
and to the sequential ``train`` runs, all measured in this one run: the search from
``run_search``'s call (Ray already started, the fork server perhaps still importing), and
the same with Ray's and the server's start (the server imports while Ray starts: only this
row counts all of its imports).
Then, per training: a trial's time from its function's start to its last report (Tune's
``result.json``) minus the plain training of the same config; what ``train`` adds; and what
the search adds over the ideal of two plain trainings side by side, amortized:
``(2 x search - plain) / 4``, which counts everything (the trials' start, their imports,
Tune's own work). Issue 16's targets, printed as verdicts, from ``run_search``'s call and
with the start:

* per-training overhead of the search over the plain loop (amortized) <= 3 s;
* the 2-concurrent search <= 0.6x the 4 plain trainings in a row.

A fourth variant, the same search with its trials training in their own processes (no fork
server; one warm worker per concurrent trial imports as Ray starts: :mod:`lossearch.warm`,
what ``LOSSEARCH_FORK_SERVER=0`` gives, and the code before the fork server), shows what
the fork server saves. A fifth, two plain lanes side by side (two processes without Ray,
each training every other config with ``plain_train``, started together after their imports
and first calls), is the
search's ideal as this machine runs it: where two trainings at once slow each other down
(shared caches, memory bandwidth, a host's SMT siblings), the plain loop's half is out of
reach for any 2-at-a-time run, and the search's overhead over these lanes is what Ray, Tune
and the trial processes' start-up add. Full mode repeats the five in the order search,
own-process search, sequential, plain, lanes, then the reverse, and takes medians. ``--steps N``
sets the steps per epoch of every training (default 50, quick 15), to see the ratios at
your own trial length.

    .venv/bin/python benchmarks/search.py                # full, ~14 minutes on 2 cores
    .venv/bin/python benchmarks/search.py --quick        # smoke check, ~3 minutes
    .venv/bin/python benchmarks/search.py --steps 200    # longer trainings
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

from train_step import (  # noqa: E402  (benchmarks/ is not a package)
    plain_train,
    print_table,
    print_verdicts,
    verdict,
)

BATCH = 32
TRIAL_OVERHEAD_TARGET_S = 3.0  # issue 16: a search trial over the plain loop, per training
SEARCH_TARGET = 0.6  # issue 16: 2-concurrent search / the plain loop, 4 in a row


def bench_space(quick: bool, steps: int) -> dict[str, Any]:
    """The search space: base config plus an explicit 4-point grid (docs/search_space.md)."""
    base = {
        "name": "bench-search",
        "seed": 0,
        "task": {
            "name": "arith",
            "arith_train_size": steps * BATCH,
            "val_size": 40 if quick else 100,
            "test_size": 8,
        },
        "model": {"name_or_path": "tiny"},
        "loss": {"ce": 1.0},
        "optim": {"epochs": 2, "batch_size": BATCH, "warmup_steps": min(10, steps)},
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


def family(cfg: Any) -> str:
    """The loss family a config trains (``ce``, ``focal``, ...), as the grid names it."""
    from lossearch.losses import loss_family

    return loss_family(cfg.loss)


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
    return sorted(out, key=lambda r: r["start"])


def run_search_timed(
    space: dict[str, Any], storage: Path, name: str, fork: bool = True
) -> tuple[float, float, str, float]:
    """One search in a Ray of its own, started as ``run_search`` starts one (cores + 1 CPUs;
    a fork server started just before it, or, if not ``fork``, one warm worker per
    concurrent trial and trials training in their own processes, as with
    ``LOSSEARCH_FORK_SERVER=0``): the seconds to start them (Ray, the server until it has
    bound its socket, the warm workers until they have registered), the seconds of
    ``run_search``, the experiment, and ``run_search``'s start (a ``time.time()``). Ray and
    the server are shut down after, so every round starts the same way."""
    import ray

    from lossearch import fork_server
    from lossearch.fork_server import ADDRESS_ENV
    from lossearch.ray_train import init_ray
    from lossearch.search.driver import local_ray_cpus, run_search, trial_processes

    user = os.environ.get(ADDRESS_ENV)
    if not fork:  # what LOSSEARCH_FORK_SERVER=0 gives
        os.environ[ADDRESS_ENV] = "0"
    try:
        processes = trial_processes(space["base"], space["search"]["max_concurrent"])
    finally:
        if user is None:
            os.environ.pop(ADDRESS_ENV, None)
        else:
            os.environ[ADDRESS_ENV] = user
    t0 = time.time()
    init_ray(None, num_cpus=local_ray_cpus(), warm=processes.warm, fork=processes.fork)
    t1 = time.time()
    try:
        exp = run_search(
            space, max_concurrent=2, scheduler="fifo", storage=str(storage), name=name, verbose=0
        )
    finally:
        t2 = time.time()
        ray.shutdown()
        fork_server.stop()
    return t1 - t0, t2 - t1, exp, t1


def run_each(kind: str, cfgs: list[Any], work: Path) -> dict[str, float]:
    """Wall seconds of each config's training, one after another, by loss family:
    ``kind`` ``plain`` (``plain_train`` as a trial) or ``sequential`` (``train``)."""
    import torch

    from lossearch.train import train

    threads = torch.get_num_threads()
    times = {}
    for k, cfg in enumerate(cfgs):
        t0 = time.perf_counter()
        if kind == "plain":
            plain_train(cfg, work / f"run{k}")
            torch.set_num_threads(threads)  # fit sets it from cpus_per_worker
        else:
            train(cfg, work / f"run{k}")
        times[family(cfg)] = time.perf_counter() - t0
        print(f"  {kind} {family(cfg)}: {times[family(cfg)]:.1f} s", flush=True)
    return times


LANE = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import search
from train_step import plain_train
from transformers.utils import logging
logging.set_verbosity_error()
cfgs = search.configs(json.loads(sys.argv[2]))
lane = [int(k) for k in sys.argv[4].split(",")]
# first calls (imports, lazy initialisations) as the plain loop's process has made them
warm_cfg = search.configs(search.bench_space(True, 1))[lane[0]]
plain_train(warm_cfg, Path(sys.argv[3]) / f"warm{lane[0]}")
print("ready", flush=True)
sys.stdin.readline()
for k in lane:
    plain_train(cfgs[k], Path(sys.argv[3]) / f"run{k}")
print("done", flush=True)
"""


def run_lanes(space: dict[str, Any], n: int, work: Path) -> float:
    """Wall seconds of the ``n`` trainings as two plain lanes side by side: two processes
    (no Ray), each training every other config in a row with ``plain_train``, started
    together once both have imported everything and trained a 1-step config (the plain
    loop's process has made its first calls too). The same work and the same two-at-a-time
    shape as the search, minus Ray, Tune and the processes' imports: on a machine whose
    cores slow each other down, what two trainings at once cost without any start-up."""
    import subprocess

    lanes = [",".join(str(k) for k in range(j, n, 2)) for j in (0, 1)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", LANE, str(Path(__file__).resolve().parent),
             json.dumps(space), str(work), lane],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        for lane in lanes
    ]
    try:
        for p in procs:  # after the warm-up training's epoch lines
            if "ready" not in (line.strip() for line in p.stdout):
                raise RuntimeError("a plain lane failed before training")
        t0 = time.perf_counter()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in procs:  # fit's epoch lines come first
            if "done" not in (line.strip() for line in p.stdout) or p.wait() != 0:
                raise RuntimeError("a plain lane failed")
        return time.perf_counter() - t0
    finally:
        for p in procs:
            p.kill()
            p.wait()


def run_round(
    i: int, space: dict[str, Any], cfgs: list[Any], work: Path, results: dict[str, list[Any]]
) -> None:
    """One round: search, the search with trials in their own processes, sequential, plain,
    two plain lanes side by side (reversed in odd rounds), appended to ``results``."""
    order = ["search", "own", "sequential", "plain", "lanes"]
    for kind in order if i % 2 == 0 else order[::-1]:
        print(f"round {i}: {kind}", flush=True)
        if kind in ("sequential", "plain"):
            results[kind].append(run_each(kind, cfgs, work / f"{kind}{i}"))
            continue
        if kind == "lanes":
            results["lanes"].append(run_lanes(space, len(cfgs), work / f"lanes{i}"))
            print(f"  two plain lanes side by side: {results['lanes'][-1]:.1f} s", flush=True)
            continue
        t_init, wall, exp, t0 = run_search_timed(
            space, work / "experiments", f"{kind}{i}", fork=kind == "search"
        )
        reports = trial_reports(exp, t0)
        results[kind].append(wall)
        results[f"{kind}_init"].append(t_init)
        results[f"{kind}_trials"].extend(reports)
        label = "search" if kind == "search" else "search, trials in their own processes"
        print(
            f"  {label}: {wall:.1f} s after starting Ray ({t_init:.1f} s), "
            f"{len(reports)} trials reported",
            flush=True,
        )
        for r in reports:
            print(
                f"    trial {r['loss']}: started at +{r['start']:.1f} s; first report "
                f"{r['first']:.1f} s later, last {r['last']:.1f} s later ({r['epochs']} epochs)",
                flush=True,
            )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small trainings, one round")
    p.add_argument("--rounds", type=int, default=None, help="repeats (full: 2, quick: 1)")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="optimizer steps per epoch of each training (full: 50, quick: 15)",
    )
    args = p.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 2)
    steps = args.steps or (15 if args.quick else 50)
    if steps < 1:
        p.error("--steps must be >= 1")

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    started = time.perf_counter()
    print(
        f"lossearch benchmarks/search.py ({'quick' if args.quick else 'full'}, {steps} steps "
        f"per epoch); {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    space = bench_space(args.quick, steps)
    cfgs = configs(space)
    work = Path(tempfile.mkdtemp(prefix="lossearch-bench-search-"))
    results: dict[str, list[Any]] = {
        "search": [], "search_init": [], "search_trials": [], "own": [], "own_init": [],
        "own_trials": [], "sequential": [], "plain": [], "lanes": [],
    }
    try:
        for i in range(rounds):
            run_round(i, space, cfgs, work, results)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    med = statistics.median
    search = med(results["search"])
    t_init = med(results["search_init"])
    own = med(results["own"])
    own_init = med(results["own_init"])
    own_with_init = med([w + i for w, i in zip(results["own"], results["own_init"], strict=True)])
    with_init = med(
        [w + i for w, i in zip(results["search"], results["search_init"], strict=True)]
    )
    seq = med([sum(t.values()) for t in results["sequential"]])
    plain = med([sum(t.values()) for t in results["plain"]])
    lanes = med(results["lanes"])
    plain_of = {f: med([t[f] for t in results["plain"]]) for f in results["plain"][0]}
    plain_each = med(list(plain_of.values()))
    trials = [t for t in results["search_trials"] if t["loss"] in plain_of]
    trial_over = med([t["last"] - plain_of[t["loss"]] for t in trials]) if trials else float("nan")
    own_trials = [t for t in results["own_trials"] if t["loss"] in plain_of]
    own_over = (
        med([t["last"] - plain_of[t["loss"]] for t in own_trials]) if own_trials else float("nan")
    )
    train_over = med(
        [
            t[f] - q[f]
            for t, q in zip(results["sequential"], results["plain"], strict=True)
            for f in t
        ]
    )
    n = len(cfgs)
    amortized = (2 * search - plain) / n
    print_table(
        f"{n} trainings ({', '.join(family(c) for c in cfgs)}): {cfgs[0].optim.epochs} epochs "
        f"of {steps} steps of {BATCH}, eval on {cfgs[0].task.val_size}; median of {rounds} "
        f"round(s)",
        ["", "wall s", "vs plain", "vs sequential"],
        [
            [
                "search, 2 at a time (run_search)",
                f"{search:.1f}",
                f"{search / plain:.3f}x",
                f"{search / seq:.3f}x",
            ],
            [
                f"  the same + starting its Ray and fork server ({t_init:.1f} s)",
                f"{with_init:.1f}",
                f"{with_init / plain:.3f}x",
                f"{with_init / seq:.3f}x",
            ],
            [
                "the same, trials in their own processes (warm workers)",
                f"{own:.1f}",
                f"{own / plain:.3f}x",
                f"{own / seq:.3f}x",
            ],
            [
                f"  the same + starting its Ray ({own_init:.1f} s)",
                f"{own_with_init:.1f}",
                f"{own_with_init / plain:.3f}x",
                f"{own_with_init / seq:.3f}x",
            ],
            [f"plain loop, {n} in a row, no Ray", f"{plain:.1f}", "1.000x", f"{plain / seq:.3f}x"],
            [
                "two plain lanes side by side, no Ray",
                f"{lanes:.1f}",
                f"{lanes / plain:.3f}x",
                f"{lanes / seq:.3f}x",
            ],
            [
                f"sequential, {n} x lossearch.train.train",
                f"{seq:.1f}",
                f"{seq / plain:.3f}x",
                "1.000x",
            ],
        ],
    )
    print_table(
        "Per training (medians over configs and rounds)",
        ["", "s", "- plain"],
        [
            ["plain loop (fit, no Ray)", f"{plain_each:.1f}", ""],
            [
                "search trial: function start to last report",
                f"{med([t['last'] for t in trials]) if trials else float('nan'):.1f}",
                f"{trial_over:+.1f}",
            ],
            [
                "search trial: function start to first report",
                f"{med([t['first'] for t in trials]) if trials else float('nan'):.1f}",
                "",
            ],
            [
                "  trials in their own processes: function start to last report",
                f"{med([t['last'] for t in own_trials]) if own_trials else float('nan'):.1f}",
                f"{own_over:+.1f}",
            ],
            ["lossearch.train.train", "", f"{train_over:+.1f}"],
            [f"search, amortized: (2 x search - plain {n}) / {n}", "", f"{amortized:+.1f}"],
            [
                f"  the same + starting its Ray: (2 x (search + Ray) - plain {n}) / {n}",
                "",
                f"{(2 * with_init - plain) / n:+.1f}",
            ],
            [f"two plain lanes side by side: (2 x lanes - plain {n}) / {n}", "",
             f"{(2 * lanes - plain) / n:+.1f}"],
            [f"search over the two lanes: 2 x (search - lanes) / {n}", "",
             f"{2 * (search - lanes) / n:+.1f}"],
        ],
    )
    print(
        "  A trial's time is from its function's start (Tune's time_total_s): it leaves out\n"
        "  the trial actor's start; the first trials wait there for the fork server's\n"
        "  imports. The amortized lines count everything the search adds over 2 plain\n"
        "  trainings side by side on 2 cores (its ideal wall: plain / 2); the targets are\n"
        "  checked on both, the second counting Ray's and the fork server's start.\n"
        "  The two plain lanes are that ideal as this machine runs it: the same trainings,\n"
        "  two at a time in two processes that have imported everything, no Ray; what the\n"
        "  search adds over them is its start-up and Ray's and Tune's own work."
    )
    print_verdicts(
        "Targets (issue 16)",
        [
            verdict(
                "search over the plain loop, per training (amortized)",
                amortized,
                TRIAL_OVERHEAD_TARGET_S,
                " s",
            ),
            verdict(
                f"search, 2 at a time / plain loop, {n} in a row", search / plain, SEARCH_TARGET
            ),
            verdict(
                "the same with Ray's and the fork server's start, per training (amortized)",
                (2 * with_init - plain) / n,
                TRIAL_OVERHEAD_TARGET_S,
                " s",
            ),
            verdict(
                "the same with Ray's and the fork server's start / plain loop",
                with_init / plain,
                SEARCH_TARGET,
            ),
        ],
        started,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
