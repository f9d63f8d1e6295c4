"""``lossearch export EXP --model DIR [--merge]``: the best model's weights, loadable by the
libraries' own loaders, giving exactly the run's greedy predictions.

The full-model case exports the session's real search (``small_search``, the ``tiny`` model,
trained fully). LoRA and the confirm stage use copies of that experiment whose chosen
checkpoint is replaced: a LoRA adapter on a local base, and a confirm run with two seeds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from lossearch.errors import LossearchError
from tests import procs


def _prompts_and_refs(cfg) -> tuple[list[str], list[str], object]:
    from lossearch.tasks import load_task

    data = load_task(cfg.task, test=False)
    return [ex.prompt for ex in data.validation], [ex.target for ex in data.validation], data.spec


def _greedy(model, tokenizer, cfg, prompts: list[str]) -> list[str]:
    from lossearch.metrics import generate

    return generate(model, tokenizer, prompts, max_new_tokens=cfg.eval.max_new_tokens,
                    batch_size=cfg.eval.batch_size)


def _winner_checkpoint(exp: Path):
    from lossearch.checkpointing import latest_checkpoint
    from lossearch.search.export import best_configs

    entry = best_configs(str(exp))[0]
    return entry, latest_checkpoint(exp / "trainings" / entry["trial_id"])


def _record(out: Path) -> dict:
    return yaml.safe_load((out / "lossearch.yaml").read_text())


def test_full_model_export_reproduces_the_trial(small_search: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lossearch.metrics import score
    from lossearch.models import load_checkpoint
    from lossearch.search.export_model import export_model

    entry, ckpt = _winner_checkpoint(small_search)
    cfg = entry["config"]
    out = tmp_path / "best-model"
    info = export_model(str(small_search), out)
    assert (info["weights"], info["source"], info["seed"]) == ("full", "search", cfg.seed)
    assert info["trial_id"] == entry["trial_id"] and info["checkpoint"] == str(ckpt)
    record = _record(out)
    assert record["config"] == cfg.to_dict()  # what best.yaml holds
    assert record["validation"]["exact_match"] == entry["seed_value"]
    assert record["test"] == {}

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompts, refs, spec = _prompts_and_refs(cfg)
    preds = _greedy(model, tokenizer, cfg, prompts)
    # the exported model scores exactly the trial's final validation value ...
    assert score(spec, preds, refs)["exact_match"] == entry["seed_value"]
    # ... with exactly the predictions of the checkpoint it came from
    saved, saved_tok = load_checkpoint(cfg.model, ckpt / f"seed{cfg.seed}" / "model")
    assert preds == _greedy(saved, saved_tok, cfg, prompts)

    # --merge on a full model writes the full model; an earlier export is replaced
    weights = (out / "model.safetensors").read_bytes()
    (out / "stale.txt").write_text("from before")
    info = export_model(str(small_search), out, merge=True)
    assert info["weights"] == "full"
    assert (out / "model.safetensors").read_bytes() == weights
    assert not (out / "stale.txt").exists()
    assert not list(tmp_path.glob(".best-model.*"))  # no temporary folder left


def _lora_copy(small_search: Path, tmp_path: Path):
    """A copy of the experiment whose base is a local model trained with LoRA; the winner's
    final checkpoint holds an adapter whose weights change the predictions."""
    from lossearch.models import build_tiny_model, load_model_and_tokenizer, save_model
    from lossearch.tiny import build_tiny_tokenizer

    base = tmp_path / "base"
    build_tiny_model(7).save_pretrained(base)
    build_tiny_tokenizer().save_pretrained(base)
    exp = tmp_path / "lora-exp"
    shutil.copytree(small_search, exp)
    meta_file = exp / "lossearch_search.yaml"
    meta = yaml.safe_load(meta_file.read_text())
    meta["base_config"]["model"] = {"name_or_path": str(base), "lora": {"r": 4}}
    meta_file.write_text(yaml.safe_dump(meta))
    entry, ckpt = _winner_checkpoint(exp)
    cfg = entry["config"]
    model, tokenizer = load_model_and_tokenizer(cfg.model, cfg.seed)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    model_dir = ckpt / f"seed{cfg.seed}" / "model"
    shutil.rmtree(model_dir)
    save_model(model, tokenizer, model_dir)
    return exp, cfg, base, model, tokenizer


def test_lora_adapter_and_merged_exports_reproduce_the_adapter(
    small_search: Path, tmp_path: Path
) -> None:
    import peft
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lossearch.search.export_model import export_model

    exp, cfg, base, trained, tokenizer = _lora_copy(small_search, tmp_path)
    prompts, _, _ = _prompts_and_refs(cfg)
    expected = _greedy(trained, tokenizer, cfg, prompts)
    plain = _greedy(AutoModelForCausalLM.from_pretrained(base), tokenizer, cfg, prompts)
    assert expected != plain  # the adapter matters

    out = tmp_path / "adapter"
    info = export_model(str(exp), out)
    assert info["weights"] == "lora_adapter" and info["base_model"] == str(base)
    adapter_cfg = json.loads((out / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == str(base)
    assert not (out / "model.safetensors").exists()
    assert _record(out)["config"]["model"]["lora"]["r"] == 4
    rebuilt = AutoModelForCausalLM.from_pretrained(adapter_cfg["base_model_name_or_path"])
    model = peft.PeftModel.from_pretrained(rebuilt, out)
    assert _greedy(model, AutoTokenizer.from_pretrained(out), cfg, prompts) == expected

    merged_dir = tmp_path / "merged"
    assert export_model(str(exp), merged_dir, merge=True)["weights"] == "merged"
    assert not (merged_dir / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    assert not isinstance(merged, peft.PeftModel)
    assert _greedy(merged, AutoTokenizer.from_pretrained(merged_dir), cfg, prompts) == expected


def test_confirmed_winner_exports_the_first_confirm_seed(
    small_search: Path, tmp_path: Path
) -> None:
    """A confirm run with seeds 0 and 1 (seed 1's weights another trial's): the export is
    seed 0's model, the seed ``best.yaml`` names, with that seed's test metrics."""
    import pandas as pd

    from lossearch.checkpointing import latest_checkpoint, read_state
    from lossearch.search.export import best_configs, export_best
    from lossearch.search.export_model import export_model

    exp = tmp_path / "confirmed"
    shutil.copytree(small_search, exp, ignore=shutil.ignore_patterns("best.yaml"))
    entry, other = best_configs(str(exp), per_loss=True)[:2]
    run = exp / "confirm" / "runs" / f"{entry['family']}-{entry['trial_id']}"
    source = latest_checkpoint(exp / "trainings" / entry["trial_id"])
    ckpt = run / source.name
    shutil.copytree(source / "seed0", ckpt / "seed0")
    other_ckpt = latest_checkpoint(exp / "trainings" / other["trial_id"])
    shutil.copytree(other_ckpt / "seed0", ckpt / "seed1")
    state, history = read_state(source)
    last = {**history[-1], "seed0/test/exact_match": 0.25, "seed1/test/exact_match": 0.5}
    (ckpt / "history.jsonl").write_text(json.dumps(last) + "\n")
    (ckpt / "state.json").write_text(json.dumps({"epoch": state["epoch"], "seeds": [0, 1]}))
    config = entry["config"].model_copy(update={"seed": 0}).to_dict()
    (run / "result.json").write_text(json.dumps({"config": config, "seeds": [0, 1]}))
    pd.DataFrame([{"rank": 1, "loss": entry["family"], "config_id": entry["trial_id"],
                   "split": "test", "mean": 0.375, "ci_low": 0.2, "ci_high": 0.5, "n_seeds": 2,
                   "n_questions": 30}]).to_csv(exp / "confirm" / "verdict.csv", index=False)

    out = tmp_path / "winner"
    info = export_model(str(exp), out)
    assert (info["source"], info["seed"], info["run"]) == ("confirm", 0, str(run))
    record = _record(out)
    assert record["test"] == {"exact_match": 0.25}
    assert (out / "model.safetensors").read_bytes() == (
        ckpt / "seed0" / "model" / "model.safetensors"
    ).read_bytes()
    assert (out / "model.safetensors").read_bytes() != (
        ckpt / "seed1" / "model" / "model.safetensors"
    ).read_bytes()
    assert "confirmed on the test split" in (out / "lossearch.yaml").read_text().splitlines()[0]
    [best] = export_best(str(exp), out=tmp_path / "best.yaml")
    assert record["config"] == yaml.safe_load(best.read_text())


@pytest.mark.parametrize("trial_id", ["01234567", "8e123456"])
def test_confirmed_winner_keeps_a_numeric_looking_trial_id(tmp_path: Path, trial_id: str) -> None:
    """Tune's trial ids are hex: read from verdict.csv, ``01234567`` must not become the
    number 1234567 nor ``8e123456`` the float ``inf`` (a flaky failure seen in the suite)."""
    import pandas as pd

    from lossearch.search.export import confirmed_winner

    run = tmp_path / "confirm" / "runs" / f"focal-{trial_id}"
    run.mkdir(parents=True)
    (run / "result.json").write_text(json.dumps({"config": {}, "seeds": [3]}))
    pd.DataFrame([{"rank": 1, "loss": "focal", "config_id": trial_id, "split": "test",
                   "mean": 0.5, "ci_low": 0.4, "ci_high": 0.6, "n_seeds": 1,
                   "n_questions": 9}]).to_csv(tmp_path / "confirm" / "verdict.csv", index=False)

    entry = confirmed_winner(str(tmp_path))

    assert (entry["trial_id"], entry["run_id"]) == (trial_id, f"focal-{trial_id}")
    assert entry["config"].seed == 3


def test_bad_input_is_one_line_and_writes_nothing(small_search: Path, tmp_path: Path) -> None:
    from lossearch.search.export_model import export_model

    # a non-empty folder that is not an earlier export is left alone (through the CLI)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    done = procs.run_cli(["export", str(small_search), "--model", str(taken)], cwd=tmp_path)
    assert "not an earlier model export" in procs.error_line(done)
    assert [p.name for p in taken.iterdir()] == ["notes.txt"]
    assert (taken / "notes.txt").read_text() == "mine"

    # the chosen run has no checkpoint left: the error names the folder
    exp = tmp_path / "no-ckpt"
    shutil.copytree(small_search, exp)
    entry, ckpt = _winner_checkpoint(exp)
    for sub in ckpt.parent.glob("checkpoint_*"):
        if sub.is_dir():
            shutil.rmtree(sub)
    with pytest.raises(LossearchError, match=f"no complete checkpoint.*{entry['trial_id']}"):
        export_model(str(exp), tmp_path / "out")
    assert not (tmp_path / "out").exists()

    with pytest.raises(LossearchError, match="needs a local experiment"):
        export_model("s3://bucket/exp", tmp_path / "out")
