"""Export the best model of an experiment, not only its config: ``lossearch export --model``.

The model is the one :func:`lossearch.search.export.export_best` names: the confirmed winner
(``EXP/confirm/runs/<family>-<trial_id>/``, the first confirm seed, as in ``best.yaml``) when
the experiment has a verdict, else the best finished search trial (``EXP/trainings/
<trial_id>/``, the trial's first seed). Its final weights are taken from the run's latest
checkpoint (``seed<k>/model/``, see :mod:`lossearch.checkpointing`) and written as a Hugging
Face directory:

- a LoRA run: the adapter, loadable with ``peft.PeftModel.from_pretrained(base, DIR)``;
  ``adapter_config.json``'s ``base_model_name_or_path`` names the base (a local base path made
  absolute); with ``merge`` the adapter merged into the base (``merge_and_unload``), a full
  model loadable with ``AutoModelForCausalLM.from_pretrained(DIR)``;
- a fully fine-tuned run (``tiny`` included): the full model (``merge`` changes nothing);

plus the tokenizer and ``lossearch.yaml``: what was exported from where, how to load it, the
training config (``config:``, the one ``best.yaml`` holds) and the seed's own final validation
(and, for a confirmed winner, test) metrics.

The directory is built beside ``DIR`` and renamed into place at the end, so a failed export
leaves ``DIR`` as it was. ``DIR`` may be new, empty or an earlier export (replaced).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from lossearch.errors import LossearchError
from lossearch.experiment import confirm_path, read_meta, trainings_path
from lossearch.tiny import TINY

MARKER = "lossearch.yaml"
"""The file every model export holds; a directory with it is an earlier export."""


def _check_out(out: str | Path) -> Path:
    """``out`` (absolute, ``~`` expanded) when it is absent, an empty directory or an earlier
    export; else one-line error."""
    from lossearch.storage import check_local_target

    out = check_local_target(out, "--model", kind="dir")
    if out.exists() and any(out.iterdir()) and not _is_export(out):
        raise LossearchError(
            f"--model {out} is not empty and not an earlier model export (no {MARKER}); "
            "name a new or empty directory"
        )
    return out


def _is_export(path: Path) -> bool:
    try:
        meta = yaml.safe_load((path / MARKER).read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(meta, dict) and isinstance(meta.get("export"), dict)


def _source(exp: str, winner: dict[str, Any]) -> tuple[str, Path]:
    """``(kind, run directory)`` of ``winner``: a confirm run or a search trial's training."""
    if "run_id" in winner:
        return "confirm", Path(confirm_path(exp), "runs", winner["run_id"])
    run_dir = Path(trainings_path(exp), winner["trial_id"])
    keep = read_meta(exp)["keep"]
    if not run_dir.is_dir() and keep != "all":
        raise LossearchError(
            f"trial {winner['trial_id']}'s checkpoints were deleted when the search ended "
            f"(--keep {keep}): run lossearch confirm {exp} and export its winner, or search "
            "again with --keep best"
        )
    return "search", run_dir


def _final_model(run_dir: Path, seed: int, epochs: int) -> tuple[Path, int, dict[str, Any]]:
    """``(seed<k>/model folder, epoch, last history row)`` of ``run_dir``'s final checkpoint."""
    from lossearch.checkpointing import latest_checkpoint, read_state

    ckpt = latest_checkpoint(run_dir) if run_dir.is_dir() else None
    if ckpt is None:
        raise LossearchError(f"no complete checkpoint (checkpoint_*/state.json) in {run_dir}")
    try:
        state, history = read_state(ckpt)
    except (OSError, ValueError) as err:  # a missing or malformed history.jsonl
        why = err.strerror if isinstance(err, OSError) else "malformed JSON"
        raise LossearchError(f"checkpoint {ckpt} is unreadable: {why}") from None
    epoch = int(state["epoch"])
    if epoch < epochs:
        raise LossearchError(
            f"the latest checkpoint {ckpt} holds epoch {epoch} of {epochs}: the run did not "
            "finish, its final weights are not there"
        )
    model_dir = ckpt / f"seed{seed}" / "model"
    if not model_dir.is_dir() or not any(model_dir.iterdir()):
        raise LossearchError(f"checkpoint {ckpt} has no weights for seed {seed} ({model_dir})")
    return model_dir, epoch, history[-1] if history else {}


def base_model_ref(name_or_path: str) -> str:
    """How a user rebuilds the base: a local path made absolute (when it exists here), else
    the hub id (or ``tiny``) unchanged."""
    from lossearch.config import looks_like_path

    if looks_like_path(name_or_path):
        path = Path(name_or_path).expanduser()
        if path.exists():
            return str(path.resolve())
    return name_or_path


def _write_adapter(model_dir: Path, tmp: Path, base: str) -> None:
    shutil.copytree(model_dir, tmp)
    config_file = tmp / "adapter_config.json"
    adapter = json.loads(config_file.read_text())
    adapter["base_model_name_or_path"] = base
    config_file.write_text(json.dumps(adapter, indent=2, sort_keys=True) + "\n")


def _write_merged(model_dir: Path, tmp: Path, model_cfg: Any) -> None:
    from lossearch.models import load_checkpoint

    model, tokenizer = load_checkpoint(model_cfg, model_dir)
    merged = model.merge_and_unload()
    merged.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)


def _search_metric(exp: str) -> str:
    from lossearch.experiment import read_meta

    return read_meta(exp)["metric"]


def _load_hint(weights: str, base: str) -> str:
    if weights != "lora_adapter":
        return "transformers.AutoModelForCausalLM.from_pretrained(DIR)"
    return (
        f"peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained("
        f"'{base}'), DIR)"
    )


def export_model(
    exp: str,
    out: str | Path,
    *,
    merge: bool = False,
    metric: str | None = None,
    mode: str | None = None,
) -> dict[str, Any]:
    """Write the best model of experiment ``exp`` to directory ``out``; returns the
    ``export:`` mapping of its ``lossearch.yaml`` (``weights``, ``seed``, ``checkpoint``...).

    ``metric`` / ``mode`` choose the search's best trial as for ``export_best`` (another
    ``metric`` than the search's skips the confirmed winner).

    Raises:
        LossearchError: ``exp`` a URI or not an experiment, no finished trial, no complete
            final checkpoint for the chosen run and seed, ``out`` not empty and not an earlier
            export, a LoRA base that cannot be loaded for ``merge``.
    """
    from lossearch.search.confirm import seed_metrics
    from lossearch.search.export import pick_winner, search_header
    from lossearch.storage import absolute_path, is_uri

    if is_uri(exp):
        raise LossearchError(
            f"model export needs a local experiment directory, not {exp}: copy the experiment "
            "(e.g. aws s3 sync) and export from the copy"
        )
    exp = absolute_path(exp)
    out = _check_out(out)
    winner = pick_winner(exp, metric, mode)
    cfg = winner["config"]
    seed = int(cfg.seed)
    kind, run_dir = _source(exp, winner)
    model_dir, epoch, last = _final_model(run_dir, seed, cfg.optim.epochs)

    from lossearch.models import is_adapter_checkpoint

    adapter = is_adapter_checkpoint(model_dir)
    base = base_model_ref(cfg.model.name_or_path)
    weights = ("merged" if merge else "lora_adapter") if adapter else "full"
    validation, test = seed_metrics(last, seed)
    info: dict[str, Any] = {
        "experiment": exp,
        "source": kind,
        "family": winner["family"],
        "trial_id": winner["trial_id"],
        "run": str(run_dir),
        "checkpoint": str(model_dir.parent.parent),
        "epoch": epoch,
        "seed": seed,
        "weights": weights,
        "base_model": base,
        "dtype": cfg.model.dtype,
        "load": _load_hint(weights, base),
    }
    if base == TINY:
        info["base_model_rebuild"] = f"lossearch.models.build_tiny_model(seed={seed})"
    record = {
        "export": info,
        "metric": winner.get("metric") or _search_metric(exp),
        "validation": validation,
        "test": test,
        "config": cfg.to_dict(),
    }
    header = winner.get("header") or search_header(winner)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.export-{os.getpid()}"
    old = out.parent / f".{out.name}.replaced-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if weights == "merged":
            model_cfg = cfg.model.model_copy(
                update={"name_or_path": base, "gradient_checkpointing": False}
            )
            _write_merged(model_dir, tmp, model_cfg)
        elif weights == "lora_adapter":
            _write_adapter(model_dir, tmp, base)
        else:
            shutil.copytree(model_dir, tmp)
        (tmp / MARKER).write_text(
            header + f"# load with: {info['load']}\n"
            + yaml.safe_dump(record, sort_keys=False)
        )
        if out.exists():
            os.replace(out, old)
        try:
            os.replace(tmp, out)
        except OSError:
            if old.exists():
                os.replace(old, out)
            raise
    except OSError as err:
        raise LossearchError(f"cannot write model export {out}: {err}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    return info
