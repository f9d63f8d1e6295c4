"""Forward+backward time and peak memory of each loss, as ratios to ``F.cross_entropy``.

    python benchmarks/losses.py            # N = 4096 tokens, V = 32000 and 128256 (~10 min)
    python benchmarks/losses.py --quick    # N = 1024, V = 8000 (seconds)

Rows: ``F.cross_entropy`` (the reference), our ``ce``, then each loss at its default
parameters except ``ce_smooth`` (``ce`` with ``label_smoothing=0.1``) and ``prob_power``
(``alpha=0.3``, where ``p_t ** alpha`` is not the plain ``p_t``).

For each vocabulary size, targets are drawn uniformly over the vocabulary ("uniform") or
from 64 distinct tokens ("64 tokens"); logits are standard normal, float32, on CPU.

Time: each loss's forward + backward (from float32 logits to ``logits.grad``). The losses
are run in turn, ``--reps`` rounds after one warm-up round, interleaved so that a slow
period of a shared machine hits all of them alike; the median per loss is reported, of the
wall-clock time and of the process CPU time (all threads; less disturbed than wall-clock
time when other processes compete for the cores).

Memory: the peak resident set size (Linux ``VmHWM``, reset through
``/proc/self/clear_refs``) during one forward + backward, minus the resident size before
it: every byte the loss really touched, the gradient of the logits included. For this pass
(run after all timings) glibc is told (``mallopt``) to serve every allocation above 1 MiB
with ``mmap``, so freed tensors go back to the system at once and allocator caching cannot
hide a peak; PyTorch's CPU allocator has no cache of its own. Counting only the tensors
saved for backward would miss the transient temporaries of forward and backward, which are
the bulk of the peak here. The kernel updates these counters lazily, so peaks of a few MiB
(``--quick`` with small ``--tokens``) are not resolved; at the default sizes they are
hundreds of MiB.

"Loop" is Lovász-softmax as the paper's code computes it: a Python loop over the classes
present in the batch, one sort per class (Berman et al.'s ``lovasz_softmax_flat``, with the
class loop already restricted to present classes). Selecting ``probs[:, c]`` makes autograd
build a dense ``[N, V]`` gradient for every class, so with thousands of present classes one
step takes many minutes. The loop therefore runs over the first ``--loop-classes`` present
classes (64; 16 for V >= 100k, where the timed rounds are also cut to 3 and the loop's to
1) and its per-class part is scaled to all of them, ``t = t_CE + (t_k - t_CE) C / k``, with
``t_CE``, the softmax part done once, taken as ``F.cross_entropy``'s time.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import re
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as TF

from lossearch.losses import (
    cross_entropy,
    dft_loss,
    focal_loss,
    generalized_dice_loss,
    lovasz_softmax_loss,
    poly1_loss,
    prob_power_loss,
    self_adjusting_dice_loss,
    tversky_loss,
)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# the spec's targets: (time and memory ratio to F.cross_entropy) per loss and target kind
TARGETS = {
    "focal": (1.3, 1.3),
    "sadl": (1.3, 1.3),
    "poly1": (1.3, 1.3),
    "ce_smooth": (1.3, 1.3),
    "dft": (1.3, 1.3),
    "prob_power": (1.3, 1.3),
    "gdice": (1.5, 1.5),
    "tversky": (1.5, 1.5),
    "lovasz": (3.0, 1.3),  # uniform targets, 64 distinct targets
}
LOOP_SPEEDUP_TARGET = 20.0


def lovasz_per_class_loop(
    logits: torch.Tensor, target: torch.Tensor, max_classes: int | None = None
) -> torch.Tensor:
    """The paper's way: softmax, then one Python iteration (and one sort) per present class.

    Each ``probs[:, c]`` also makes autograd build a dense ``[N, V]`` gradient per class in
    the backward pass. ``max_classes`` stops after that many classes (for extrapolation).
    """
    probs = torch.softmax(logits.float(), dim=-1)
    losses = []
    for c in torch.unique(target).tolist()[:max_classes]:
        fg = (target == c).float()
        errors = (fg - probs[:, c]).abs()
        errors_sorted, perm = torch.sort(errors, 0, descending=True)
        fg_sorted = fg[perm]
        gts = fg_sorted.sum()
        intersection = gts - fg_sorted.cumsum(0)
        union = gts + (1.0 - fg_sorted).cumsum(0)
        jaccard = 1.0 - intersection / union
        jaccard[1:] = jaccard[1:] - jaccard[:-1]
        losses.append(torch.dot(errors_sorted, jaccard))
    return torch.stack(losses).mean()


LOSSES: dict[str, LossFn] = {
    "F.cross_entropy": TF.cross_entropy,
    "ce": cross_entropy,
    "focal": focal_loss,
    "sadl": self_adjusting_dice_loss,
    "poly1": poly1_loss,
    "ce_smooth": partial(cross_entropy, label_smoothing=0.1),
    "dft": dft_loss,
    "prob_power": partial(prob_power_loss, alpha=0.3),
    "gdice": generalized_dice_loss,
    "tversky": tversky_loss,
    "lovasz": lovasz_softmax_loss,
}


# ------------------------------------------------------------------------- memory probe


def _limit_malloc_caching() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD: allocations > 1 MiB use mmap
    except OSError:
        pass


def _status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", text).group(1))


def _can_probe_memory() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        _status_kib("VmHWM")
    except (OSError, AttributeError):
        return False
    return True


def fwd_bwd(fn: LossFn, logits: torch.Tensor, target: torch.Tensor) -> None:
    logits.grad = None
    fn(logits, target).backward()


def peak_mib(fn: LossFn, logits: torch.Tensor, target: torch.Tensor) -> float:
    logits.grad = None
    gc.collect()
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    fwd_bwd(fn, logits, target)
    peak = _status_kib("VmHWM")
    logits.grad = None
    return (peak - before) / 1024


# ------------------------------------------------------------------------- one setting


def make_inputs(n: int, v: int, kind: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, v, generator=g).requires_grad_(True)
    if kind == "uniform":
        target = torch.randint(0, v, (n,), generator=g)
    else:
        vocab = torch.randperm(v, generator=g)[:64]
        target = vocab[torch.randint(0, 64, (n,), generator=g)]
    return logits, target


def _timed(fn: LossFn, logits: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """(wall seconds, process CPU seconds over all threads) of one forward + backward."""
    wall, cpu = time.perf_counter(), time.process_time()
    fwd_bwd(fn, logits, target)
    return time.perf_counter() - wall, time.process_time() - cpu


def measure_time(
    n: int, v: int, kind: str, reps: int, loop_reps: int, loop_classes: int
) -> dict[str, float]:
    """Median wall and CPU seconds per loss (``<name>`` and ``<name>:cpu``); ``loop``
    extrapolated when there are more present classes than ``loop_classes``."""
    logits, target = make_inputs(n, v, kind)
    present = int(torch.unique(target).numel())
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in LOSSES}
    for rep in range(reps + 1):  # round 0 is the warm-up
        for name, fn in LOSSES.items():
            timing = _timed(fn, logits, target)
            if rep > 0:
                times[name].append(timing)
    k = min(present, loop_classes)
    loop = partial(lovasz_per_class_loop, max_classes=k)
    loop_times, ce_times = [], []
    for _ in range(loop_reps):  # interleaved with CE, the loop's fixed part
        loop_times.append(_timed(loop, logits, target))
        ce_times.append(_timed(TF.cross_entropy, logits, target))
    out: dict[str, float] = {}
    for name, samples in {**times, "loop": loop_times, "loop_ce": ce_times}.items():
        out[name] = statistics.median(s[0] for s in samples)
        out[f"{name}:cpu"] = statistics.median(s[1] for s in samples)
    for suffix in ("", ":cpu"):
        # per-class part scaled from k to all present classes; the softmax part counted once
        fixed = out.pop(f"loop_ce{suffix}")
        out[f"loop{suffix}"] = fixed + (out[f"loop{suffix}"] - fixed) * present / k
    out["present"], out["loop_classes"] = present, k
    return out


def measure_memory(n: int, v: int, kind: str) -> dict[str, float]:
    logits, target = make_inputs(n, v, kind)
    fwd_bwd(TF.cross_entropy, logits, target)  # warm-up
    return {name: peak_mib(fn, logits, target) for name, fn in LOSSES.items()}


# ------------------------------------------------------------------------- report


def _ok(value: float, limit: float, higher_is_better: bool = False) -> str:
    if value != value:  # nan
        return ""
    good = value >= limit if higher_is_better else value <= limit
    return "" if good else " (miss)"


def table(results: dict[tuple[int, str], dict[str, dict[str, float]]], n: int) -> str:
    lines = [
        f"N = {n} tokens, float32 logits, CPU, {torch.get_num_threads()} threads. time: median "
        "wall-clock forward+backward; CPU: median process CPU time (all threads), steadier on a "
        "busy machine; peak: peak RSS increase. Ratios to F.cross_entropy.",
        "",
        "| V | targets | loss | time (ms) | time / CE | CPU / CE | peak (MiB) | peak / CE |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for (v, kind), res in results.items():
        t, m = res["time"], res["mem"]
        label = f"{kind} ({t['present']} present)"
        for name in LOSSES:
            t_ratio = t[name] / t["F.cross_entropy"]
            c_ratio = t[f"{name}:cpu"] / t["F.cross_entropy:cpu"]
            # a peak too small for the kernel's lazy counters reads 0 (--quick): no ratio
            m_ratio = m[name] / m["F.cross_entropy"] if m["F.cross_entropy"] > 0 else float("nan")
            t_lim, m_lim = TARGETS.get(name, (float("inf"), float("inf")))
            if name == "lovasz":
                t_lim = m_lim = TARGETS["lovasz"][0 if kind == "uniform" else 1]
            lines.append(
                f"| {v} | {label} | {name} | {t[name] * 1e3:.0f} | "
                f"{t_ratio:.2f}{_ok(t_ratio, t_lim)} | {c_ratio:.2f}{_ok(c_ratio, t_lim)} | "
                f"{m[name]:.0f} | {m_ratio:.2f}{_ok(m_ratio, m_lim)} |"
            )
        speedup = t["loop"] / t["lovasz"]
        cpu_speedup = t["loop:cpu"] / t["lovasz:cpu"]
        how = "" if t["loop_classes"] == t["present"] else f", from {t['loop_classes']} classes"
        lines.append(
            f"| {v} | {label} | lovasz per-class loop{how} | {t['loop'] * 1e3:.0f} | "
            f"{t['loop'] / t['F.cross_entropy']:.2f} | "
            f"{t['loop:cpu'] / t['F.cross_entropy:cpu']:.2f} | | ours {speedup:.0f}x "
            f"({cpu_speedup:.0f}x CPU) faster"
            f"{_ok(min(speedup, cpu_speedup), LOOP_SPEEDUP_TARGET, higher_is_better=True)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N=1024, V=8000, 3 rounds")
    parser.add_argument("--tokens", type=int, default=None, help="N (default 4096)")
    parser.add_argument("--vocab", type=int, nargs="+", default=None, help="V values")
    parser.add_argument("--reps", type=int, default=None, help="timed rounds (default 5)")
    parser.add_argument("--loop-reps", type=int, default=None, help="rounds of the loop")
    parser.add_argument(
        "--loop-classes", type=int, default=64, help="classes the loop runs (default 64)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args(argv)

    n = args.tokens or (1024 if args.quick else 4096)
    vocabs = args.vocab or ([8000] if args.quick else [32000, 128256])
    reps = args.reps or (3 if args.quick else 5)
    loop_reps = args.loop_reps or (2 if args.quick else 3)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    settings = [(v, kind) for v in vocabs for kind in ("uniform", "64 tokens")]
    results: dict[tuple[int, str], dict[str, dict[str, float]]] = {}
    for v, kind in settings:
        print(f"timing V={v}, {kind} targets ...", file=sys.stderr, flush=True)
        big = v >= 100_000
        results[(v, kind)] = {
            "time": measure_time(
                n,
                v,
                kind,
                reps=min(reps, 3) if big else reps,
                loop_reps=1 if big else loop_reps,
                loop_classes=min(args.loop_classes, 16) if big else args.loop_classes,
            )
        }
        gc.collect()
    # memory last: mallopt changes how glibc serves allocations for the rest of the run
    probe = _can_probe_memory()
    _limit_malloc_caching()
    for v, kind in settings:
        print(f"memory V={v}, {kind} targets ...", file=sys.stderr, flush=True)
        results[(v, kind)]["mem"] = (
            measure_memory(n, v, kind) if probe else dict.fromkeys(LOSSES, float("nan"))
        )
        gc.collect()
    print(table(results, n))


if __name__ == "__main__":
    main()
