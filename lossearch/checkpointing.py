"""What a training checkpoint holds, and how it is written and read back.

Layout of one checkpoint directory (a Ray Train ``Checkpoint``)::

    state.json            {"epoch": E, "seeds": [...]}
    history.jsonl         one JSON object per finished epoch (the reported metrics)
    seed<k>/model/        adapter (LoRA) or full weights + tokenizer, see models.save_model
    seed<k>/trainer.pt    optimizer and LR-scheduler state (and the fp16 GradScaler's, if any)

``epoch`` counts finished epochs, so training resumes at ``epoch + 1``.

A run trained without Ray Train (a single-worker search trial, see
``lossearch.search.trial``) keeps its checkpoints itself, in the same layout as a Ray Train
run directory: ``<run>/checkpoint_<epoch:06d>/`` folders, of which :func:`save_to_run`
keeps the newest two, and ``<run>/latest_checkpoint.json`` naming the one to resume from
(written after the folder is complete, so a run killed mid-copy resumes from the previous).
The run folder is a local path or a URI (:mod:`lossearch.storage`). Finding and reading
checkpoints imports no torch (a search trial whose training ran in a fork server's child
reads them; :mod:`lossearch.fork_server`); writing and restoring one does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lossearch import storage

POINTER = "latest_checkpoint.json"


def record_name(seed: int) -> str:
    """File name of one seed's per-question test record (JSON lines) in a run's checkpoint."""
    return f"test_predictions.seed{seed}.jsonl"


def write_checkpoint(
    directory: str | Path,
    epoch: int,
    history: list[dict[str, Any]],
    replicas: list[Any],
) -> None:
    """Write ``replicas`` (objects with seed, model, tokenizer, optimizer, scheduler)."""
    import torch

    from lossearch.models import save_model, unwrap

    root = Path(directory)
    for rep in replicas:
        sub = root / f"seed{rep.seed}"
        sub.mkdir(parents=True, exist_ok=True)
        save_model(unwrap(rep.model), rep.tokenizer, sub / "model")
        state = {"optimizer": rep.optimizer.state_dict(), "scheduler": rep.scheduler.state_dict()}
        scaler = getattr(rep, "scaler", None)
        if scaler is not None:
            state["scaler"] = scaler.state_dict()
        torch.save(state, sub / "trainer.pt")
    (root / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    state = {"epoch": epoch, "seeds": [r.seed for r in replicas]}
    (root / "state.json").write_text(json.dumps(state))


def read_state(directory: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Return ``(state, history)`` of a checkpoint directory."""
    root = Path(directory)
    state = json.loads((root / "state.json").read_text())
    lines = (root / "history.jsonl").read_text().splitlines()
    return state, [json.loads(line) for line in lines if line.strip()]


def restore_replica(directory: str | Path, rep: Any) -> None:
    """Load weights and optimizer/scheduler state of ``rep.seed`` from a checkpoint in place.

    The GradScaler state is restored when both the checkpoint and ``rep`` have one.
    """
    import torch

    from lossearch.models import load_weights, unwrap

    sub = Path(directory) / f"seed{rep.seed}"
    load_weights(unwrap(rep.model), sub / "model")
    state = torch.load(sub / "trainer.pt", map_location="cpu", weights_only=False)
    rep.optimizer.load_state_dict(state["optimizer"])
    rep.scheduler.load_state_dict(state["scheduler"])
    scaler = getattr(rep, "scaler", None)
    if scaler is not None and "scaler" in state:
        scaler.load_state_dict(state["scaler"])


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The ``checkpoint_*`` directory of ``run_dir`` that holds the most finished epochs.

    Works for both layouts lossearch writes: a Ray Train run directory and a run written by
    :func:`lossearch.fit.fit` without Ray. Only complete checkpoints count (``state.json`` is
    written last); ties go to the newest name. None when there is none.
    """
    best: tuple[int, str, Path] | None = None
    for sub in Path(run_dir).glob("checkpoint_*"):
        state_file = sub / "state.json"
        if not state_file.is_file():
            continue
        try:
            epoch = int(json.loads(state_file.read_text())["epoch"])
        except (ValueError, KeyError, TypeError):
            continue
        key = (epoch, sub.name, sub)
        if best is None or key[:2] > best[:2]:
            best = key
    return best[2] if best else None


def save_to_run(run: str, source: str | Path, epoch: int, keep: int = 2) -> None:
    """Copy the checkpoint folder ``source`` into ``run`` as epoch ``epoch``'s and point to it.

    Then deletes the checkpoint ``keep`` epochs older (each save removes one, so at most
    ``keep`` remain of an uninterrupted run).
    """
    name = f"checkpoint_{epoch:06d}"
    storage.copy_dir(source, run, name)
    storage.write_text(run, POINTER, json.dumps({"checkpoint": name, "epoch": epoch}))
    if epoch > keep:
        storage.remove_dir(run, f"checkpoint_{epoch - keep:06d}")


@contextmanager
def latest_in_run(run: str) -> Iterator[Path | None]:
    """The checkpoint :func:`save_to_run` last completed in ``run`` as a local folder, or None.

    A URI's checkpoint is downloaded into a temporary folder that lives as long as the context.
    """
    import tempfile

    try:
        name = json.loads(storage.read_text(run, POINTER))["checkpoint"]
    except OSError:
        yield None
        return
    with tempfile.TemporaryDirectory() as tmp:
        yield storage.fetch_dir(run, name, tmp)
