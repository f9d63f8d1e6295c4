"""GPU benchmark of the training core: ``lossearch.fit.fit``, the losses and generation, no Ray.

On a machine with CUDA, torch, transformers and peft, one command measures and prints one
table (each section in its own rows; a section that fails prints its error in its row and
the others still run):

1. ``fit``: ``lossearch.fit.fit`` training a random-init Qwen2-shaped model of ~0.5B
   parameters (Qwen2.5-0.5B's shape: hidden 896, 24 layers, 14 heads / 2 KV heads, MLP 4864,
   vocabulary 151936, tied embeddings; built from a ``transformers`` config and saved to a
   temporary folder with the built-in ``tiny`` character tokenizer, so nothing is
   downloaded) with LoRA (r 16, the attention projections) on the ``arith`` task, CE 0.6 +
   focal 0.4, batch 32, 2 epochs with the greedy eval after the last: once in bf16
   (``optim.mixed_precision: bf16``, bf16 weights) and once in fp16 with the loss scaler
   (fp16 weights). Tokens/s and step time of the second epoch, peak GPU memory, wall time.
   The tokenizer's 100 ids are a corner of the 151936-row vocabulary: the output layer
   and the loss cost what they cost at full size, and a random model's predictions outside
   those ids decode to nothing.
2. The composite loss at V = 151936 and N = 8192 tokens (bf16 logits ``[8, 1025, V]``,
   uniform random targets, every token an answer token): forward + backward time and peak
   GPU memory of ``{ce: 1}`` and of ``{ce: 0.6, X: 0.4}`` for every family X in the
   registry (``lossearch.losses.LOSSES``), as ratios to ``{ce: 1}``;
   ``F.cross_entropy`` as a reference.
3. Lovász-softmax's sort: ``torch.argsort`` over the ``[C, N]`` error matrix (the path
   taken on GPU; C the classes present), and the Lovász loss alone, for uniform targets
   (C ~ N) and for 64 distinct targets.
4. Batched greedy generation, ``lossearch.metrics.generate``, with the bf16 model.

It imports no Ray (checked at the end; ``--check-imports`` checks only that). Without CUDA
it prints one line saying so and exits 0. With CUDA it exits 1 when a row holds an error.
On an H100 (2026-11-27) the full run took 72 s and ``--quick`` (fewer steps, prompts and
timed rounds; the same model and loss sizes) 53 s, each with the model build and CUDA start.
``--cpu-smoke`` runs every section on the CPU at toy sizes (vocabulary 4096, a 2-layer
model), to check the script itself on a machine without a GPU.

On a GPU machine, from the repository root (no Ray needed; pick the torch wheel that matches
the machine's CUDA driver)::

    python -m venv .venv-gpu && . .venv-gpu/bin/activate
    pip install torch transformers peft tokenizers pydantic pyyaml numpy
    pip install --no-deps -e .
    python benchmarks/gpu.py --quick
    python benchmarks/gpu.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NO_CUDA = "benchmarks/gpu.py: no CUDA device (torch.cuda.is_available() is False); nothing measured"

# Qwen2.5-0.5B's shape
QWEN_05B = {
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
}
TOY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
VOCAB = 151936


@dataclass(frozen=True)
class Sizes:
    shape: dict[str, int]
    vocab: int
    steps: int  # optimizer steps per epoch of each fit run
    val: int  # validation problems (greedy eval after the last epoch)
    loss_batch: int  # loss inputs: [loss_batch, loss_len + 1, vocab] -> loss_batch * loss_len
    loss_len: int
    reps: int  # timed rounds of each loss (after one warm-up round)
    gen_prompts: int
    gen_tokens: int


FULL = Sizes(QWEN_05B, VOCAB, 40, 128, 8, 1024, 5, 256, 64)
QUICK = Sizes(QWEN_05B, VOCAB, 10, 64, 8, 1024, 2, 64, 32)
CPU_SMOKE = Sizes(TOY, 4096, 2, 8, 2, 128, 1, 8, 8)

LORA = {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "auto"}
BATCH = 32
COLUMNS = 6  # of the table; shorter rows (errors) are padded to it


# --------------------------------------------------------------------------- helpers


def sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: Any) -> int:
    """Reset the peak counter; the bytes allocated now (0 on the CPU, where it is not kept)."""
    import torch

    if device.type != "cuda":
        return 0
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def peak_mib(device: Any, base: int = 0) -> float:
    """Peak bytes allocated since :func:`reset_peak`, above ``base``, in MiB (NaN on CPU)."""
    import torch

    if device.type != "cuda":
        return float("nan")
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def fmt(x: float, spec: str = ".1f", suffix: str = "") -> str:
    return "n/a" if x != x else f"{x:{spec}}{suffix}"  # NaN: not measured


def error_row(label: str) -> list[str]:
    """A table row for a section that raised: its label and the error's last line."""
    exc = sys.exc_info()[1]
    text = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
    traceback.print_exc(file=sys.stderr)
    return [label, "ERROR " + text[:200]]


def free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- the model


def save_random_model(root: Path, sizes: Sizes, device: Any) -> int:
    """A random-init Qwen2 of ``sizes.shape`` saved to ``root`` (bf16) with the ``tiny``
    tokenizer, loadable as ``model.name_or_path``; returns its parameter count."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from lossearch.tiny import (
        BOS_TOKEN,
        EOS_TOKEN,
        PAD_TOKEN,
        SPECIAL_TOKENS,
        build_tiny_tokenizer,
    )

    config = Qwen2Config(
        vocab_size=sizes.vocab,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        pad_token_id=SPECIAL_TOKENS.index(PAD_TOKEN),
        bos_token_id=SPECIAL_TOKENS.index(BOS_TOKEN),
        eos_token_id=SPECIAL_TOKENS.index(EOS_TOKEN),
        **sizes.shape,
    )
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(root)
    build_tiny_tokenizer().save_pretrained(root)
    del model
    free_memory()
    return n_params


# --------------------------------------------------------------------------- 1. fit


def fit_config(model_dir: Path, sizes: Sizes, precision: str, gpu: bool) -> Any:
    from lossearch.config import validate

    return validate(
        {
            "name": f"gpu-bench-{precision}",
            "task": {
                "name": "arith",
                "arith_train_size": sizes.steps * BATCH,
                "val_size": sizes.val,
            },
            "model": {
                "name_or_path": str(model_dir),
                "dtype": {"bf16": "bfloat16", "fp16": "float16"}[precision],
                "lora": LORA,
            },
            "loss": {"ce": 0.6, "focal": 0.4},
            "optim": {
                "epochs": 2,
                "batch_size": BATCH,
                "lr": 2e-4,
                "warmup_steps": 2,
                "mixed_precision": precision,
            },
            "eval": {"batch_size": 64, "max_new_tokens": 16, "every_epochs": 2},
            "scaling": {"use_gpu": gpu, "cpus_per_worker": 4},
        }
    )


def mean_tokens_per_step(cfg: Any) -> float:
    """Tokens in an average training batch of ``cfg`` (the tiny tokenizer, one per char)."""
    from lossearch.tasks import load_task, tokenize
    from lossearch.tiny import build_tiny_tokenizer

    features, _ = tokenize(load_task(cfg.task).train, build_tiny_tokenizer(), cfg.task.max_length)
    return statistics.mean(len(f["input_ids"]) for f in features) * cfg.optim.batch_size


def bench_fit(model_dir: Path, sizes: Sizes, precision: str, device: Any) -> list[str]:
    """One ``fit`` run; the row: tokens/s and step ms of epoch 2, peak memory, wall, loss."""
    import torch

    from lossearch.fit import fit

    cfg = fit_config(model_dir, sizes, precision, device.type == "cuda")
    reports: list[tuple[float, dict[str, Any]]] = []
    threads = torch.get_num_threads()
    base = reset_peak(device)
    t0 = time.perf_counter()
    try:
        fit(cfg, lambda m, _ckpt: reports.append((time.perf_counter(), m)), device=device)
    finally:
        torch.set_num_threads(threads)
    wall = time.perf_counter() - t0
    last = reports[-1][1]
    tps = float(last["tokens_per_s"])
    step_ms = mean_tokens_per_step(cfg) / tps * 1e3
    scaler = "fp16 + GradScaler" if precision == "fp16" else "bf16"
    return [
        f"fit: LoRA r{LORA['r']}, {scaler}",
        f"{tps:,.0f} tokens/s",
        f"{step_ms:.0f} ms/step",
        fmt(peak_mib(device, base) / 1024, ".2f", " GiB"),
        f"{wall:.1f} s wall ({2 * sizes.steps} steps, eval {sizes.val})",
        f"loss {float(last['loss']):.3f} -> exact_match {float(last.get('exact_match', 0)):.2f}",
    ]


# --------------------------------------------------------------------------- 2. losses


def loss_inputs(sizes: Sizes, device: Any, distinct: int | None = None) -> tuple[Any, Any, Any]:
    """bf16 logits ``[B, L + 1, V]`` (leaf, requires grad), labels, an all-ones answer mask;
    targets uniform over the vocabulary, or over ``distinct`` ids."""
    import torch

    g = torch.Generator(device=device).manual_seed(0)
    shape = (sizes.loss_batch, sizes.loss_len + 1)
    labels = torch.randint(0, distinct or sizes.vocab, shape, generator=g, device=device)
    logits = torch.randn((*shape, sizes.vocab), generator=g, device=device, dtype=torch.bfloat16)
    return logits.requires_grad_(True), labels, torch.ones_like(labels)


def time_and_peak(
    fns: dict[str, Callable[[], Any]], leaf: Any, reps: int, device: Any
) -> dict[str, tuple[float, float]]:
    """Per name: median seconds of ``fn().backward()`` over ``reps`` interleaved rounds (after
    one warm-up round) and its peak memory above what was allocated before (MiB)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    peaks: dict[str, float] = {}
    for r in range(reps + 1):
        for name, fn in fns.items():
            leaf.grad = None
            base = reset_peak(device)
            t0 = time.perf_counter()
            fn().backward()
            sync(device)
            dt = time.perf_counter() - t0
            if r:
                times[name].append(dt)
            else:
                peaks[name] = peak_mib(device, base)
    leaf.grad = None
    return {
        name: (statistics.median(ts) if ts else float("nan"), peaks[name])
        for name, ts in times.items()
    }


def bench_losses(sizes: Sizes, device: Any) -> list[list[str]]:
    """Rows: each composite (and F.cross_entropy) against ``{ce: 1}``."""
    import torch

    from lossearch.losses import LOSSES, build_loss

    logits, labels, mask = loss_inputs(sizes, device)
    specs: dict[str, dict[str, Any]] = {"ce": {"ce": 1.0}}
    specs |= {f"ce + {name}": {"ce": 0.6, name: 0.4} for name in LOSSES if name != "ce"}
    fns: dict[str, Callable[[], Any]] = {
        "F.cross_entropy": lambda: torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, sizes.vocab).float(), labels[:, 1:].reshape(-1)
        )
    }
    rows, failed = [], []
    for name, spec in specs.items():
        try:
            loss = build_loss(spec)
            fns[name] = lambda loss=loss: loss(logits, labels, mask).total
        except Exception:
            failed.append(error_row(f"loss {name}"))
    results: dict[str, tuple[float, float]] = {}
    for name, fn in fns.items():  # one by one first: a loss that fails gets its own row
        try:
            results[name] = time_and_peak({name: fn}, logits, 0, device)[name]
        except Exception:
            failed.append(error_row(f"loss {name}"))
        free_memory()
    ok = {name: fns[name] for name in results}
    try:
        results = time_and_peak(ok, logits, sizes.reps, device)
    except Exception:
        failed.append(error_row("losses: timed rounds"))
    ce_t, ce_m = results.get("ce", (float("nan"), float("nan")))
    n = sizes.loss_batch * sizes.loss_len
    for name, (t, m) in results.items():
        rows.append(
            [
                f"loss {name}",
                f"{t * 1e3:.1f} ms fwd+bwd",
                fmt(t / ce_t, ".2f", "x CE"),
                fmt(m, ",.0f", " MiB peak"),
                fmt(m / ce_m, ".2f", "x CE"),
                f"N {n}, V {sizes.vocab}",
            ]
        )
    return rows + failed


# --------------------------------------------------------------------------- 3. Lovász


def bench_lovasz(sizes: Sizes, device: Any) -> list[list[str]]:
    """``torch.argsort`` over the ``[C, N]`` errors, and the Lovász loss alone."""
    import torch

    from lossearch.losses import lovasz_softmax_loss
    from lossearch.losses.lovasz import _argsort_rows

    rows = []
    n = sizes.loss_batch * sizes.loss_len
    for kind, distinct in (("uniform targets", None), ("64 distinct targets", 64)):
        try:
            logits, labels, _ = loss_inputs(sizes, device, distinct)
            flat = logits[:, :-1].reshape(-1, sizes.vocab)
            target = labels[:, 1:].reshape(-1)
            c = int(target.unique().numel())
            keys = torch.rand((c, n), device=device)
            sort_t = []
            for r in range(sizes.reps + 1):
                sync(device)
                t0 = time.perf_counter()
                _argsort_rows(keys)
                sync(device)
                if r:
                    sort_t.append(time.perf_counter() - t0)
            del keys
            (t, m) = time_and_peak(
                {"lovasz": lambda flat=flat, target=target: lovasz_softmax_loss(flat, target)},
                logits,
                sizes.reps,
                device,
            )["lovasz"]
            rows.append(
                [
                    f"lovasz, {kind}",
                    f"argsort [{c}, {n}]: {statistics.median(sort_t) * 1e3:.1f} ms",
                    f"loss alone {t * 1e3:.1f} ms fwd+bwd",
                    fmt(m, ",.0f", " MiB peak"),
                    "",
                    f"N {n}, V {sizes.vocab}",
                ]
            )
            del logits, flat
        except Exception:
            rows.append(error_row(f"lovasz, {kind}"))
        free_memory()
    return rows


# --------------------------------------------------------------------------- 4. generation


def bench_generate(model_dir: Path, sizes: Sizes, device: Any) -> list[str]:
    """Greedy generation of ``sizes.gen_prompts`` arith prompts, batches of 64, bf16."""
    from lossearch.config import ModelConfig, TaskConfig
    from lossearch.metrics import generate
    from lossearch.models import load_model_and_tokenizer
    from lossearch.tasks import load_task

    model, tokenizer = load_model_and_tokenizer(
        ModelConfig(name_or_path=str(model_dir), dtype="bfloat16")
    )
    model = model.to(device)
    prompts = [ex.prompt for ex in load_task(TaskConfig(val_size=sizes.gen_prompts)).validation]
    generate(model, tokenizer, prompts[:8], max_new_tokens=4, batch_size=64)  # warm-up
    base = reset_peak(device)
    sync(device)
    t0 = time.perf_counter()
    generate(model, tokenizer, prompts, max_new_tokens=sizes.gen_tokens, batch_size=64)
    sync(device)
    wall = time.perf_counter() - t0
    peak = peak_mib(device, base)
    del model
    free_memory()
    new = len(prompts) * sizes.gen_tokens  # a random model does not stop early (no EOS)
    return [
        "generate (metrics.generate, bf16)",
        f"{len(prompts) / wall:,.1f} prompts/s",
        f"{new / wall:,.0f} new tokens/s",
        fmt(peak / 1024, ".2f", " GiB peak"),
        f"{wall:.1f} s wall",
        f"{len(prompts)} prompts x {sizes.gen_tokens} tokens, batch 64",
    ]


# --------------------------------------------------------------------------- main


def check_imports() -> bool:
    """Import everything the benchmark uses; True when Ray was not imported."""
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import lossearch.checkpointing  # noqa: F401
    import lossearch.config  # noqa: F401
    import lossearch.fit  # noqa: F401
    import lossearch.losses  # noqa: F401
    import lossearch.losses.lovasz  # noqa: F401
    import lossearch.metrics  # noqa: F401
    import lossearch.models  # noqa: F401
    import lossearch.tasks  # noqa: F401

    return not any(m == "ray" or m.startswith("ray.") for m in sys.modules)


def print_rows(title: str, rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print(f"\n{title}")
    for r in rows:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes (~1 minute on an H100)")
    p.add_argument(
        "--check-imports",
        action="store_true",
        help="only import what the benchmark uses and check that Ray is not among it",
    )
    p.add_argument(
        "--cpu-smoke",
        action="store_true",
        help="run every section on the CPU at toy sizes (checks the script, measures nothing)",
    )
    args = p.parse_args(argv)
    if args.check_imports:
        if check_imports():
            print("benchmarks/gpu.py: imports ok, no Ray")
            return 0
        print("benchmarks/gpu.py: Ray was imported", file=sys.stderr)
        return 1
    try:
        import torch
    except ImportError:
        print("benchmarks/gpu.py: torch is not installed; nothing measured")
        return 0
    if not args.cpu_smoke and not torch.cuda.is_available():
        print(NO_CUDA)
        return 0

    started = time.perf_counter()
    device = torch.device("cpu") if args.cpu_smoke else torch.device("cuda", 0)
    sizes = CPU_SMOKE if args.cpu_smoke else QUICK if args.quick else FULL
    name = "CPU (smoke)" if args.cpu_smoke else torch.cuda.get_device_name(device)
    print(f"benchmarks/gpu.py on {name}; torch {torch.__version__}", flush=True)
    from lossearch.fit import quiet_libraries

    quiet_libraries()
    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory(prefix="lossearch-gpu-") as tmp:
        model_dir = Path(tmp, "model")
        try:
            n_params = save_random_model(model_dir, sizes, device)
            print(f"  random Qwen2 model: {n_params / 1e6:.1f}M parameters", flush=True)
        except Exception:
            rows.append(error_row("model: random Qwen2"))
            model_dir = None
        for precision in ("bf16", "fp16"):
            try:
                if model_dir is None:
                    raise RuntimeError("no model (see the row above)")
                rows.append(bench_fit(model_dir, sizes, precision, device))
            except Exception:
                rows.append(error_row(f"fit: {precision}"))
            free_memory()
            print(f"  {rows[-1][0]}: {rows[-1][1]}", flush=True)
        for section, fn in (("losses", bench_losses), ("lovasz", bench_lovasz)):
            try:
                rows.extend(fn(sizes, device))
            except Exception:
                rows.append(error_row(section))
            print(f"  {section} done", flush=True)
        try:
            if model_dir is None:
                raise RuntimeError("no model (see the rows above)")
            rows.append(bench_generate(model_dir, sizes, device))
        except Exception:
            rows.append(error_row("generate"))
    ray_free = not any(m == "ray" or m.startswith("ray.") for m in sys.modules)
    rows.append(["imports", "no Ray imported" if ray_free else "ERROR Ray was imported"])
    rows = [r + [""] * (COLUMNS - len(r)) for r in rows]
    mode = "cpu smoke" if args.cpu_smoke else "quick" if args.quick else "full"
    total = time.perf_counter() - started
    print_rows(f"lossearch GPU benchmark ({mode}) on {name}; total {total:.0f} s", rows)
    return 1 if any(r[1].startswith("ERROR") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
