"""Training-step cost of the composite losses, and the overhead of running on Ray Train.

Three parts, every figure a ratio of variants measured side by side in this one run
(interleaved, repeated, medians), so that load from other processes cancels out as far as it
can:

1. Tiny model (``model.name_or_path: tiny``, ~0.54M parameters, vocabulary 100) on batches
   of 32 from the real ``arith`` task: tokens/s of a full training step (forward, composite
   loss, backward, clip, AdamW) with CE alone against CE 0.6 + X 0.4 for each other loss.
   Target: every composite step <= 1.2x the CE-only step.
2. A ~110M-parameter random Llama (``llama_config_for_size(768, 12, 12, 32000)``) on random
   4 x 128 token batches whose answer mask covers the last 32 tokens: the same comparison in
   rounds of one step per variant between CE steps (as many rounds as fit in ~2 minutes),
   plus the loss alone (forward + backward on fixed logits, repeated) so that the small
   difference is not lost in step noise. Skipped with ``--quick``.
3. ``lossearch.train.train`` two ways: as a Ray Train V2 run (a controller and a worker
   process running ``lossearch.fit.fit``, reports and checkpoints through Ray; asked for by
   passing the local Ray's address) against its one-worker path without Ray (``fit`` in
   this process, checkpoints copied into the run directory by ``save_to_run``). Everything
   else is the same code: preflight, ``config.yaml``, 2 checkpoints kept, the test split
   scored after the last epoch, the final ``checkpoint/``, test records and
   ``metrics.jsonl``. Report times are when each epoch's checkpoint folder appears in the
   run directory (``NewEntries``, a thread that lists it); nothing in lossearch is patched.
   Full size: the default config (arith, tiny, 200 steps per epoch, eval on 200) with as many
   epochs as make the plain loop take ~2 minutes (a 1-epoch plain run is timed first;
   ``--ray-epochs N`` fixes it). Runs alternate plain, Ray, Ray, plain.
   Target: Ray <= 1.15x the plain loop.

Every part uses one intra-op thread (``torch.set_num_threads(1)``), as a Ray Train worker with
``scaling.cpus_per_worker: 1`` does; on a shared 2-core machine that is also far steadier
than 2 threads.

    .venv/bin/python benchmarks/train_step.py            # full, ~15-20 minutes
    .venv/bin/python benchmarks/train_step.py --quick    # smoke check, ~2 minutes
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")

LOSS_NAMES = ("focal", "lovasz", "gdice", "sadl", "tversky", "poly1")
STEP_TARGET = 1.2
RAY_TARGET = 1.15


def loss_specs() -> dict[str, dict[str, float]]:
    """``ce`` alone, then ``ce 0.6 + X 0.4`` for each other registered loss (defaults)."""
    specs: dict[str, dict[str, float]] = {"ce": {"ce": 1.0}}
    for name in LOSS_NAMES:
        specs[f"ce+{name}"] = {"ce": 0.6, name: 0.4}
    return specs


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def fmt_ratio(r: float, target: float | None = None) -> str:
    if not math.isfinite(r):
        return "n/a"
    ok = "" if target is None else ("  ok" if r <= target else "  MISSED")
    return f"{r:.3f}x{ok}"


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  " + "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for r in rows:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


Verdict = tuple[str, float, float, str]
"""``(measure, value, target, unit)``: met when value <= target; unit ``"x"`` (a ratio) or
``" s"`` (seconds)."""


def verdict(name: str, value: float, target: float, unit: str = "x") -> Verdict:
    return (name, value, target, unit)


def print_verdicts(title: str, verdicts: list[Verdict], started: float) -> None:
    """The closing table of verdicts (met: value <= target), then the script's total time
    (since ``started``, a ``perf_counter``) and the load average."""
    print_table(
        title,
        ["measure", "value", "target", "met"],
        [
            [name, f"{value:.3f}{unit}", f"<= {target}{unit}", "yes" if value <= target else "NO"]
            for name, value, target, unit in verdicts
        ],
    )
    print(
        f"\ntotal {time.perf_counter() - started:.0f} s; load average now "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )


# --------------------------------------------------------------------------- one step


def train_step(
    model: Any, optimizer: Any, loss_fn: Any, batch: dict[str, torch.Tensor]
) -> torch.Tensor:
    """What ``train_epoch`` does per batch (grad_accum 1): forward, loss, backward, clip, step."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    out = loss_fn(logits, batch["labels"], batch["answer_mask"])
    out.total.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return out.total.detach()


def loss_only_times(
    losses: dict[str, Any], batch: dict[str, torch.Tensor], logits: torch.Tensor, rounds: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds of the loss alone (forward + backward to the logits), interleaved in rounds:
    the median per loss, and the median over rounds of its extra time over ``ce`` in the same
    round (paired, so that a burst of load hits both sides).

    ``torch F.cross_entropy`` (shifted, ignore -100, the fused op Hugging Face models use)
    is timed alongside as a reference for the library's CE.
    """

    def torch_ce(x: torch.Tensor) -> torch.Tensor:
        v = x.shape[-1]
        return torch.nn.functional.cross_entropy(
            x[:, :-1].reshape(-1, v).float(), batch["labels"][:, 1:].reshape(-1)
        )

    fns: dict[str, Any] = {"torch F.cross_entropy": torch_ce}
    for name, fn in losses.items():
        fns[name] = lambda x, fn=fn: fn(x, batch["labels"], batch["answer_mask"]).total
    times: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns)
    for r in range(rounds + 1):  # round 0 is warm-up
        for name in order[r % len(order) :] + order[: r % len(order)]:
            x = logits.detach().clone().requires_grad_(True)
            t0 = time.perf_counter()
            fns[name](x).backward()
            dt = time.perf_counter() - t0
            if r:
                times[name].append(dt)
    extra = {
        name: median([t - c for t, c in zip(ts, times["ce"], strict=True)])
        for name, ts in times.items()
    }
    return {name: median(ts) for name, ts in times.items()}, extra


# --------------------------------------------------------------------------- part 1: tiny


def tiny_batches(n: int, batch_size: int = 32) -> list[dict[str, torch.Tensor]]:
    """The first ``n`` training batches of the default ``arith`` task, as ``train_epoch``
    draws them (seed 0, epoch 1)."""
    from lossearch.config import TaskConfig
    from lossearch.fit import epoch_batches
    from lossearch.tasks import collate, load_task, tokenize
    from lossearch.tiny import build_tiny_tokenizer

    cfg = TaskConfig()
    data = load_task(cfg)
    tok = build_tiny_tokenizer()
    features, _ = tokenize(data.train, tok, cfg.max_length)
    order = epoch_batches(len(features), batch_size, seed=0, epoch=1)[:n]
    return [collate([features[j] for j in idx], tok.pad_token_id) for idx in order]


def bench_tiny(rounds: int, steps: int) -> list[list[str]]:
    """Part 1. Each round runs ``steps`` consecutive steps of every variant (rotating the
    order), all on the same batches; ratios are medians over rounds of per-round ratios."""
    from lossearch.losses import build_loss
    from lossearch.models import build_tiny_model

    specs = loss_specs()
    losses = {name: build_loss(spec) for name, spec in specs.items()}
    batches = tiny_batches(steps)
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    model = build_tiny_model(seed=0).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    names = list(specs)
    per_round: list[dict[str, float]] = []
    per_round_cpu: list[dict[str, float]] = []
    for r in range(rounds + 1):  # round 0 is warm-up
        t: dict[str, float] = {}
        c: dict[str, float] = {}
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0, c0 = time.perf_counter(), time.process_time()
            for b in batches:
                train_step(model, optimizer, losses[name], b)
            t[name] = (time.perf_counter() - t0) / len(batches)
            c[name] = (time.process_time() - c0) / len(batches)
        if r:
            per_round.append(t)
            per_round_cpu.append(c)
    with torch.no_grad():
        logits = model(input_ids=batches[0]["input_ids"]).logits
    loss_alone, _ = loss_only_times(losses, batches[0], logits, rounds)
    rows = []
    for name in names:
        step = median([t[name] for t in per_round])
        ratio = median([t[name] / t["ce"] for t in per_round])
        cpu = median([c[name] / c["ce"] for c in per_round_cpu])
        target = STEP_TARGET if name != "ce" else None
        rows.append(
            [
                name,
                f"{tokens / len(batches) / step:,.0f}",
                f"{step * 1e3:.1f}",
                fmt_ratio(ratio, target),
                fmt_ratio(cpu, target),
                f"{loss_alone[name] * 1e3:.2f}",
            ]
        )
    rows.append(
        [
            "torch F.cross_entropy",
            "",
            "",
            "",
            "",
            f"{loss_alone['torch F.cross_entropy'] * 1e3:.2f}",
        ]
    )
    b0 = batches[0]["input_ids"].shape
    print_table(
        f"Part 1: tiny model, arith batches of {b0[0]} (~{tokens // len(batches)} tokens/batch), "
        f"{rounds} rounds x {steps} steps per variant",
        ["loss", "tokens/s", "step ms", "step vs CE", "CPU time vs CE", "loss fwd+bwd ms"],
        rows,
    )
    print(
        "  step vs CE: median over rounds of the per-round ratio of wall-clock step times;\n"
        "  CPU time vs CE: the same with the process's CPU time, which a busy machine\n"
        "  disturbs less (1 thread: CPU time ~ work done)."
    )
    return rows


# --------------------------------------------------------------------------- part 2: 110M


def bench_100m(
    batch: int, length: int, answer: int, loss_rounds: int, budget_s: float
) -> tuple[list[list[str]], int]:
    """Part 2: rounds of one step per variant (shuffled), each round opened by a CE step and
    the last closed by one, as many rounds as fit in ``budget_s`` (at least one); each
    variant's step is compared with the mean of the two CE steps around its round. Then the
    loss alone, ``loss_rounds`` interleaved repeats."""
    from transformers import LlamaForCausalLM

    from lossearch.losses import build_loss
    from lossearch.models import llama_config_for_size

    vocab = 32000
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(llama_config_for_size(768, 12, 12, vocab)).train()
    n_params = sum(p.numel() for p in model.parameters())
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, vocab, (batch, length), generator=g)
    mask = torch.zeros_like(ids)
    mask[:, -answer:] = 1
    b = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": ids,
        "answer_mask": mask,
    }
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    specs = loss_specs()
    losses = {name: build_loss(spec) for name, spec in specs.items()}

    cpu: dict[str, list[float]] = {n: [] for n in specs}

    def step(name: str) -> float:
        t0, c0 = time.perf_counter(), time.process_time()
        train_step(model, optimizer, losses[name], b)
        cpu[name].append(time.process_time() - c0)
        return time.perf_counter() - t0

    started = time.perf_counter()
    step("ce")  # warm-up
    others = [n for n in specs if n != "ce"]
    ce_steps = [step("ce")]
    rounds: list[dict[str, float]] = []
    while True:
        order = others[:]
        random.Random(len(rounds)).shuffle(order)
        rounds.append({name: step(name) for name in order})
        ce_steps.append(step("ce"))
        spent = time.perf_counter() - started
        print(
            f"  110M round {len(rounds)}: CE {ce_steps[-2]:.2f} s .. {ce_steps[-1]:.2f} s, "
            + ", ".join(f"{n[3:]} {t:.2f}" for n, t in rounds[-1].items()),
            flush=True,
        )
        if spent * (len(rounds) + 1) / len(rounds) > budget_s:
            break
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    loss_alone, loss_extra = loss_only_times(losses, b, logits, loss_rounds)
    ce_round = [(ce_steps[i] + ce_steps[i + 1]) / 2 for i in range(len(rounds))]
    ce_step = median(ce_steps)
    ce_cpu = cpu["ce"][1:]  # [0] is the warm-up step
    ce_cpu_round = [(ce_cpu[i] + ce_cpu[i + 1]) / 2 for i in range(len(rounds))]
    tokens = batch * length
    rows = []
    for name in specs:
        if name == "ce":
            step_s, measured, measured_cpu = ce_step, 1.0, 1.0
        else:
            step_s = median([r[name] for r in rounds])
            measured = median([r[name] / c for r, c in zip(rounds, ce_round, strict=True)])
            measured_cpu = median([x / c for x, c in zip(cpu[name], ce_cpu_round, strict=True)])
        derived = (ce_step + loss_extra[name]) / ce_step
        rows.append(
            [
                name,
                f"{tokens / step_s:,.0f}",
                f"{step_s:.2f}",
                fmt_ratio(measured, STEP_TARGET if name != "ce" else None),
                fmt_ratio(measured_cpu, STEP_TARGET if name != "ce" else None),
                f"{loss_alone[name] * 1e3:.0f}",
                fmt_ratio(derived, STEP_TARGET if name != "ce" else None),
            ]
        )
    rows.append(
        [
            "torch F.cross_entropy",
            "",
            "",
            "",
            "",
            f"{loss_alone['torch F.cross_entropy'] * 1e3:.0f}",
            "",
        ]
    )
    print_table(
        f"Part 2: random Llama, {n_params / 1e6:.0f}M parameters, vocab {vocab}, batch "
        f"{batch} x {length} tokens, answer mask on the last {answer}; {len(rounds)} round(s) "
        f"of one step per variant between CE steps; loss alone: median of {loss_rounds}",
        ["loss", "tokens/s", "step s", "step vs CE", "CPU vs CE", "loss fwd+bwd ms", "step vs CE*"],
        rows,
    )
    print(
        "  step vs CE: median over rounds of the step / the mean of the CE steps around it;\n"
        "  CPU vs CE: the same with the process's CPU time.\n"
        "  * = (CE step + extra time of loss X alone over CE alone, median of per-round\n"
        "    differences) / CE step. The model's forward and backward are the same work for\n"
        "    every loss, so the loss alone carries the difference; this keeps it apart from\n"
        "    the step-to-step noise of a loaded machine."
    )
    return rows, len(rounds)


# --------------------------------------------------------------------------- part 3: Ray


def plain_train(cfg: Any, out_dir: str | Path) -> tuple[dict[str, Any], list[float]]:
    """One training as a one-worker search trial runs it, minus Tune: ``lossearch.fit.fit``
    in this process, each epoch's checkpoint copied into the run folder ``out_dir/plain_train``
    by ``checkpointing.save_to_run`` (2 kept) before the report (``lossearch.search.trial``).

    Returns the last epoch's metrics and the time (``time.time()``) each epoch's report ended.
    """
    from lossearch.checkpointing import save_to_run
    from lossearch.fit import fit

    run = str(Path(out_dir).resolve() / "plain_train")
    ends: list[float] = []

    def report(metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        if checkpoint_dir is not None:
            save_to_run(run, checkpoint_dir, int(metrics["epoch"]))
        ends.append(time.time())

    history = fit(cfg, report)
    return history[-1], ends


class NewEntries:
    """When folders named ``pattern`` first appear in the folder ``root``: a thread lists it
    every ``interval`` seconds while the context is open.

    Gives a Ray Train run's report times from outside: each report's checkpoint becomes a
    new ``checkpoint_*`` folder of the run (Train persists it before the report counts).
    """

    def __init__(self, root: Path, pattern: str = "checkpoint_*", interval: float = 0.05):
        self.root, self.pattern, self.interval = root, pattern, interval
        self.seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _poll(self) -> None:
        now = time.time()
        for entry in self.root.glob(self.pattern):
            if entry.is_dir():  # not Train V2's checkpoint_manager_snapshot.json
                self.seen.setdefault(entry.name, now)

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self._poll()

    def __enter__(self) -> NewEntries:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._poll()

    def times(self) -> list[float]:
        return sorted(self.seen.values())


def train_timed(cfg: Any, out_dir: Path, on_ray: bool) -> tuple[dict[str, Any], list[float]]:
    """``lossearch.train.train(cfg, out_dir)``; returns its metrics and its report times:
    when each epoch's checkpoint folder appears in the run directory.

    ``on_ray``: a Ray Train run (``out_dir/ray_train``), asked for by naming the running
    local Ray's address; else ``train``'s own one-worker path, ``fit`` in this process
    without Ray (``out_dir/checkpoints``).
    """
    import ray

    from lossearch.train import train

    address = ray.get_runtime_context().gcs_address if on_ray else None
    with NewEntries(Path(out_dir) / ("ray_train" if on_ray else "checkpoints")) as seen:
        final = train(cfg, out_dir, address=address)
    return final, seen.times()


def _noop_loop(config: dict[str, Any]) -> None:
    """A Ray Train loop with nothing to train: ``reports`` reports, each with a 1-file
    checkpoint. Its ``fit()`` time is Ray Train's own cost for a run of that many epochs."""
    import tempfile
    from pathlib import Path

    import ray.train

    for epoch in range(1, config["reports"] + 1):
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "state.json").write_text("{}")
            ray.train.report({"epoch": epoch}, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def noop_fit(storage: Path, name: str, reports: int, lossearch_way: bool = True) -> float:
    """Seconds of a no-op ``fit()`` with 1 CPU worker.

    ``lossearch_way``: the trainer class and settings ``lossearch.ray_train.build_trainer`` uses
    (0.5 s controller polling, no per-run DatasetManager/PlacementGroupCleaner actors, no
    PreemptionWatcher on local Ray); otherwise a plain ``TorchTrainer`` at Ray's defaults.
    """
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from lossearch.ray_internals import trainer_class, use_train_env

    saved = {k: os.environ.get(k) for k in RAY_DEFAULTS}
    if lossearch_way:
        use_train_env()
    else:
        os.environ.update(RAY_DEFAULTS)  # passed on to the controller and workers
    try:
        trainer = (trainer_class() if lossearch_way else TorchTrainer)(
            _noop_loop,
            train_loop_config={"reports": reports},
            scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
            run_config=RunConfig(
                name=name,
                storage_path=str(storage),
                checkpoint_config=CheckpointConfig(num_to_keep=2),
            ),
        )
        t0 = time.perf_counter()
        trainer.fit()
        return time.perf_counter() - t0
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# Ray Train V2's own values of the settings lossearch changes (lossearch/ray_internals.py)
RAY_DEFAULTS = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "2.0",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "1",
}


def cold_import_s() -> float:
    """Wall seconds for a fresh Python to import what a training worker imports."""
    import subprocess

    mods = "torch, transformers, ray.train.torch, lossearch.ray_train, lossearch.fit, "
    mods += "lossearch.models, lossearch.losses, lossearch.tasks, lossearch.metrics"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {mods}"], check=True)
    return time.perf_counter() - t0


def bench_ray(cfg: Any, rounds: int) -> list[list[str]]:
    """Part 3: ``rounds`` pairs of runs in the order plain, Ray, Ray, plain, ..."""
    import ray

    from lossearch.ray_train import init_ray

    work = Path(tempfile.mkdtemp(prefix="lossearch-bench-"))
    threads = torch.get_num_threads()
    t0 = time.perf_counter()
    init_ray(None)
    t_init = time.perf_counter() - t0
    runs: dict[str, list[dict[str, float]]] = {"plain": [], "ray": []}
    order = [("plain", "ray") if i % 2 == 0 else ("ray", "plain") for i in range(rounds)]
    noop: list[float] = []
    noop_defaults: list[float] = []
    imports: list[float] = []
    try:
        noop.append(noop_fit(work, "noop0", cfg.optim.epochs))
        noop_defaults.append(noop_fit(work, "noop_defaults0", cfg.optim.epochs, False))
        imports.append(cold_import_s())
        print(
            f"  no-op Ray Train run: {noop[-1]:.1f} s as lossearch runs it, "
            f"{noop_defaults[-1]:.1f} s at Ray's defaults; cold import: {imports[-1]:.1f} s"
        )
        for i, pair in enumerate(order):
            for kind in pair:
                out = work / f"{kind}{i}"
                start = time.time()
                final, ends = train_timed(cfg, out, on_ray=kind == "ray")
                torch.set_num_threads(threads)  # fit sets it from cpus_per_worker
                stop = time.time()
                runs[kind].append(
                    {
                        "total": stop - start,
                        "first": ends[0] - start if ends else float("nan"),
                        "between": ends[-1] - ends[0] if ends else float("nan"),
                        "tail": stop - ends[-1] if ends else float("nan"),
                        "exact_match": float(final.get("exact_match", float("nan"))),
                    }
                )
                r = runs[kind][-1]
                print(
                    f"  {kind:5s} run {i}: {r['total']:.1f} s (to 1st epoch end {r['first']:.1f}"
                    f", epochs 2..n {r['between']:.1f}, after last epoch {r['tail']:.1f}), "
                    f"exact_match {r['exact_match']:.3f}",
                    flush=True,
                )
        noop.append(noop_fit(work, "noop1", cfg.optim.epochs))
        noop_defaults.append(noop_fit(work, "noop_defaults1", cfg.optim.epochs, False))
        imports.append(cold_import_s())
        print(
            f"  no-op Ray Train run: {noop[-1]:.1f} s as lossearch runs it, "
            f"{noop_defaults[-1]:.1f} s at Ray's defaults; cold import: {imports[-1]:.1f} s"
        )
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)

    def med(kind: str, key: str) -> float:
        return median([r[key] for r in runs[kind]])

    def row(name: str, key: str, extra: float = 0.0, target: float | None = None) -> list[str]:
        plain, ray_s = med("plain", key), med("ray", key) + extra
        ratio = fmt_ratio(ray_s / plain, target) if target else ""
        return [name, f"{plain:.1f}", f"{ray_s:.1f}", f"{ray_s - plain:+.1f}", ratio]

    rows = [
        row("whole run", "total", target=RAY_TARGET),
        row("  start to end of epoch 1", "first"),
        row("  end of epoch 1 to last", "between"),
        row("  last epoch end to return", "tail"),
        row("whole run + ray.init", "total", extra=t_init, target=RAY_TARGET),
        [f"no-op Ray Train run, {cfg.optim.epochs} reports", "", f"{median(noop):.1f}", "", ""],
        ["  the same at Ray Train's defaults", "", f"{median(noop_defaults):.1f}", "", ""],
        ["cold import of torch+transformers+lossearch", f"{median(imports):.1f}", "", "", ""],
    ]
    steps = cfg.optim.epochs * (len_train(cfg) // cfg.optim.batch_size)
    print_table(
        f"Part 3: lossearch.train.train on Ray Train V2 vs without Ray (plain); "
        f"{cfg.optim.epochs} epochs, {steps} steps, eval on {cfg.task.val_size} each epoch; "
        f"median of {rounds} run(s) each; ray.init once: {t_init:.1f} s",
        ["", "plain s", "Ray s", "Ray - plain", "Ray / plain"],
        rows,
    )
    print(
        "  (Times per epoch are when the epoch's checkpoint folder appears in the run\n"
        "   directory: Ray Train's ray_train/ or the plain path's checkpoints/. Ray's 'to end\n"
        "   of epoch 1' includes starting the controller and worker processes, the worker's\n"
        "   imports and the worker group. No-op run: a trainer whose loop only reports, with\n"
        "   a 1-file checkpoint each time: Ray Train's own cost per run, as lossearch\n"
        "   configures it and at Ray's defaults.\n"
        "   Cold import: a fresh Python importing what the worker needs, paid by every\n"
        "   Ray run and not by the plain loop.)"
    )
    return rows


def len_train(cfg: Any) -> int:
    from lossearch.tasks import load_task

    return len(load_task(cfg.task).train)


def ray_config(quick: bool, epochs: int | None, target_s: float) -> Any:
    """The config of part 3: the default config (arith, tiny, 200 steps per epoch, eval on 200)
    with ``epochs`` epochs, or, when None, as many as make the plain loop take about
    ``target_s`` seconds, from a 1-epoch plain run timed first. ``quick``: 2 short epochs."""
    from lossearch.config import load_config

    if quick:
        return load_config(
            None,
            [
                "name=bench-quick",
                "task.arith_train_size=640",
                "task.val_size=50",
                "optim.epochs=2",
                "optim.warmup_steps=5",
            ],
        )
    if epochs is None:
        threads = torch.get_num_threads()
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            plain_train(load_config(None, ["name=calibrate", "optim.epochs=1"]), tmp)
            one = time.perf_counter() - t0
        torch.set_num_threads(threads)
        epochs = max(1, round(target_s / one))
        print(f"  calibration: 1 epoch in the plain loop took {one:.1f} s -> {epochs} epochs")
    return load_config(None, ["name=bench", f"optim.epochs={epochs}"])


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small smoke run, no 110M model")
    p.add_argument("--skip-100m", action="store_true", help="skip part 2")
    p.add_argument("--skip-ray", action="store_true", help="skip part 3")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--ray-rounds", type=int, default=None, help="plain/Ray pairs (full: 2)")
    p.add_argument(
        "--ray-epochs",
        type=int,
        default=None,
        help="epochs of the part-3 run (default: calibrated to ~2 minutes in the plain loop)",
    )
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    started = time.perf_counter()
    print(
        f"lossearch benchmarks/train_step.py ({'quick' if args.quick else 'full'}); "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    verdicts: list[Verdict] = []

    rows = bench_tiny(rounds=5 if args.quick else 15, steps=3 if args.quick else 5)
    comp = [r for r in rows if r[0].startswith("ce+")]
    worst = max(float(r[3].split("x")[0]) for r in comp)
    verdicts.append(verdict("tiny: worst composite step / CE step", worst, STEP_TARGET))
    worst = max(float(r[4].split("x")[0]) for r in comp)
    verdicts.append(verdict("tiny: the same in CPU time", worst, STEP_TARGET))

    if not (args.quick or args.skip_100m):
        t0 = time.perf_counter()
        rows, n = bench_100m(batch=4, length=128, answer=32, loss_rounds=10, budget_s=150)
        comp = [r for r in rows if r[0].startswith("ce+")]
        worst = max(float(r[3].split("x")[0]) for r in comp)
        what = f"110M: worst composite step / CE step, measured ({n} round(s))"
        verdicts.append(verdict(what, worst, STEP_TARGET))
        worst = max(float(r[4].split("x")[0]) for r in comp)
        verdicts.append(verdict("110M: the same in CPU time", worst, STEP_TARGET))
        worst = max(float(r[6].split("x")[0]) for r in comp)
        verdicts.append(verdict("110M: the same from the loss alone (*)", worst, STEP_TARGET))
        print(f"  (part 2 took {time.perf_counter() - t0:.0f} s)")

    if not args.skip_ray:
        rounds = args.ray_rounds or (1 if args.quick else 2)
        rows = bench_ray(ray_config(args.quick, args.ray_epochs, 120.0), rounds)
        verdicts.append(
            verdict("Ray Train run / plain loop", float(rows[0][4].split("x")[0]), RAY_TARGET)
        )

    print_verdicts("Targets", verdicts, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
