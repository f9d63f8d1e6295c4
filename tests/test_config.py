"""The training config: defaults, YAML + overrides, and one-line errors naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lossearch.config import (
    apply_overrides,
    dump_config,
    flatten,
    load_config,
    read_yaml,
    validate,
)
from lossearch.errors import LossearchError
from tests.procs import REPO


def test_defaults_are_complete_and_round_trip(tmp_path):
    cfg = load_config()
    assert cfg.task.name == "arith" and cfg.model.name_or_path == "tiny"
    assert cfg.loss["ce"]["weight"] == 1.0 and cfg.loss["ce_scope"] == "sequence"
    dump_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_minimal_yaml_with_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "task: {name: arith}\nmodel: {name_or_path: tiny}\nloss: {ce: 0.6, focal: 0.4}\nseed: 3\n"
    )
    cfg = load_config(path, ["optim.lr=3e-4", "loss.focal.gamma=1", "eval.max_new_tokens=40"])
    assert cfg.seed == 3 and cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.loss["focal"] == {**cfg.loss["focal"], "weight": 0.4, "gamma": 1}
    assert cfg.eval.max_new_tokens == 40


def test_paper_defaults_for_lora_and_losses():
    cfg = load_config(overrides={"model.lora": {}, "loss": {"ce": 0.5, "focal": 0.2, "sadl": 0.3}})
    assert (cfg.model.lora.r, cfg.model.lora.alpha, cfg.model.lora.dropout) == (8, 16, 0.05)
    assert cfg.loss["focal"]["gamma"] == 2.0
    assert (cfg.loss["sadl"]["alpha"], cfg.loss["sadl"]["gamma"]) == (1.0, 1.0)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["optim.lrr=1"], "optim.lrr"),
        (["optim.lr=-1"], "optim.lr"),
        (["task.max_length=abc"], "task.max_length"),
        (["scaling.num_workers=0"], "scaling.num_workers"),
        (["loss.focal=0.4", "loss.focal.gamma=-1"], "gamma"),
        (["loss.focal.gamma=1"], "weight"),
        (["loss.nosuchloss=1"], "nosuchloss"),
        (["loss.ce=0"], "loss"),
        (["optim.lr"], "key=value"),
        # infinity passed every range check: lr .inf trained until the loss was NaN
        (["optim.lr=.inf"], "optim.lr"),
        (["optim.weight_decay=.inf"], "optim.weight_decay"),
        (["optim.max_grad_norm=.inf"], "optim.max_grad_norm"),
        (["scaling.cpus_per_worker=.inf"], "scaling.cpus_per_worker"),
        (["model.lora={alpha: .inf}"], "model.lora.alpha"),
        (["task.val_size=.inf"], "task.val_size"),
        (["optim.lr=.nan"], "finite"),
        (["name=../elsewhere"], "name"),
        (["name=a/b"], "folder name"),
    ],
)
def test_bad_values_name_the_key(overrides, needle):
    with pytest.raises(LossearchError) as err:
        load_config(overrides=overrides)
    msg = str(err.value)
    assert needle in msg and "\n" not in msg


def test_malformed_and_missing_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: [unclosed\n")
    with pytest.raises(LossearchError, match="malformed YAML"):
        read_yaml(bad)
    with pytest.raises(LossearchError, match="file not found"):
        read_yaml(tmp_path / "nope.yaml")


def test_a_key_written_twice_is_an_error_naming_it_and_its_line(tmp_path):
    """PyYAML keeps the last of duplicate keys: the first ``optim``'s lr vanished."""
    dup = tmp_path / "dup.yaml"
    dup.write_text("optim:\n  lr: 0.1\nseed: 1\noptim:\n  epochs: 2\n")
    with pytest.raises(LossearchError, match=r"dup.yaml \(line 4\): duplicate key 'optim'"):
        read_yaml(dup)
    nested = tmp_path / "nested.yaml"
    nested.write_text("optim:\n  lr: 0.1\n  lr: 0.2\n")
    with pytest.raises(LossearchError, match="duplicate key 'lr'"):
        read_yaml(nested)
    with pytest.raises(LossearchError, match="override 'optim={lr: 1, lr: 2}': duplicate"):
        load_config(overrides=["optim={lr: 1, lr: 2}"])
    merged = tmp_path / "merged.yaml"  # a merge key's keys may be set again: YAML's rule
    merged.write_text("a: &x {b: 1, c: 2}\nd:\n  <<: *x\n  b: 3\n")
    assert read_yaml(merged)["d"] == {"b": 3, "c": 2}


def test_a_file_that_is_not_utf8_or_is_a_directory_is_named(tmp_path):
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(LossearchError, match="latin1.yaml is not a UTF-8 text file"):
        read_yaml(latin)
    with pytest.raises(LossearchError, match="is a directory"):
        read_yaml(tmp_path)


def test_keys_another_task_reads_are_named_not_dropped():
    from lossearch.config import ignored_task_keys

    arith = load_config(overrides=["task.arith_ops=+-", "task.arith_max_operand=9"])
    assert ignored_task_keys(arith.task) == []
    as_jsonl = load_config(overrides=["task.arith_ops=+-", "task.name=jsonl"])
    assert ignored_task_keys(as_jsonl.task) == ["task.arith_ops '+-' (arith only)"]
    resolved = validate(load_config(overrides=["task.name=gsm8k"]).to_dict())
    assert ignored_task_keys(resolved.task) == []  # every key at its default is no request


def test_flatten_joins_nested_keys_and_inverts_overrides():
    tree = {"optim": {"lr": 1e-3, "betas": [0.9, 0.99]}, "name": "x", "lora": {}}
    assert flatten(tree) == {"optim.lr": 1e-3, "optim.betas": [0.9, 0.99], "name": "x"}
    assert flatten({"a": {"b": {"c": 1}}}, sep="/") == {"a/b/c": 1}
    cfg = validate({"optim": {"lr": 3e-4}})
    assert apply_overrides({}, flatten(cfg.to_dict())) == cfg.to_dict()


def test_override_scalar_loss_weight_becomes_section():
    tree = apply_overrides({"loss": {"focal": 0.4}}, ["loss.focal.gamma=3"])
    assert tree["loss"]["focal"] == {"weight": 0.4, "gamma": 3}


def test_loss_overrides_change_the_default_loss_when_the_config_has_none(tmp_path):
    """Without a ``loss`` section the config trains ``{ce: 1.0}``; an override of one of its
    keys changes that loss rather than replacing it (it lost CE's weight: "missing 'weight'"),
    exactly as on a YAML that spells the default out."""
    spelled = tmp_path / "spelled.yaml"
    spelled.write_text("loss: {ce: 1.0}\n")
    for overrides in (["loss.ce.label_smoothing=0.1"], ["loss.focal.weight=0.4"],
                      ["loss.ce_scope=answer"]):
        assert load_config(overrides=overrides).loss == \
            load_config(spelled, overrides=overrides).loss, overrides
    assert load_config(overrides=["loss.ce.label_smoothing=0.1"]).loss["ce"] == \
        {"weight": 1.0, "label_smoothing": 0.1}
    assert set(load_config(overrides=["loss={focal: 1.0}"]).loss) == {"focal", "ce_scope"}


def test_exponent_floats_without_a_dot_are_numbers(tmp_path):
    """``1e-3`` is a float in what users write (YAML 1.2); PyYAML's YAML 1.1 made it the
    string "1e-3", and a search space refused ``low: 1e-4`` as "not a valid number"."""
    from lossearch.search.space import load_space

    config = tmp_path / "c.yaml"
    config.write_text("optim: {lr: 1e-3, weight_decay: 1E-2}\n")
    assert load_config(config).optim.lr == 1e-3
    assert load_config(overrides=["optim.lr=2e-4"]).optim.lr == 2e-4
    space = tmp_path / "s.yaml"
    space.write_text("base: {task: {name: arith}}\n"
                     "space: {loss.family: ce, optim.lr: {low: 1e-4, high: 1e-2, log: true}}\n")
    assert load_space(space).param_range("optim.lr") == {"ce": [1e-4, 1e-2]}


def test_local_paths_are_made_absolute_where_the_config_is_first_read(tmp_path, monkeypatch):
    """Trials and Ray Train workers run in other working directories: a relative data file
    or model directory is resolved against the command's own, once, and stays so."""
    monkeypatch.chdir(tmp_path)
    cfg = load_config(overrides=["task.train_file=data/train.jsonl", "task.test_file=~/t.jsonl",
                                 "model.name_or_path=./base"])
    assert cfg.task.train_file == str(tmp_path / "data" / "train.jsonl")
    assert cfg.task.test_file == str(Path("~/t.jsonl").expanduser())
    assert cfg.model.name_or_path == str(tmp_path / "base")
    monkeypatch.chdir("/")
    assert validate(cfg.to_dict()) == cfg  # read again elsewhere (a trial): unchanged
    for kept in ("tiny", "Qwen/Qwen2.5-0.5B"):
        assert load_config(overrides=[f"model.name_or_path={kept}"]).model.name_or_path == kept
    assert load_config(overrides=["task.data_dir=s3://b/d"]).task.data_dir == "s3://b/d"


CHECK_WITHOUT_TORCH = """
import sys
from lossearch.config import load_config
from lossearch.errors import LossearchError
from lossearch.search.space import load_space
cfg = load_config(overrides=["loss.focal.weight=0.4", "loss.focal.gamma=1.5"])
assert cfg.loss["focal"]["gamma"] == 1.5
try:
    load_config(overrides=["loss.focal.weight=0.4", "loss.focal.gamma=-1"])
    raise SystemExit("no error")
except LossearchError:
    pass
load_space("search_spaces/quick.yaml")
heavy = sorted(m for m in ("torch", "transformers", "ray") if m in sys.modules)
print(",".join(heavy) or "none")
"""


def test_checking_a_config_or_space_imports_no_torch():
    """A bad config is reported in a fraction of a second: the checks (loss parameters
    included) need neither torch, transformers nor Ray; the loss functions load on use."""
    done = subprocess.run([sys.executable, "-c", CHECK_WITHOUT_TORCH], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "none"


def test_preflight_names_what_the_training_will_not_do_as_written(tmp_path):
    import json
    import warnings

    from lossearch.config import IgnoredKeyWarning
    from lossearch.preflight import preflight, warn

    rows = [{"prompt": f"q {i}: 1 + {i} =", "target": str(1 + i)} for i in range(80)]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = ["task.name=jsonl", f"task.train_file={data}", "task.val_size=8",
            "optim.batch_size=8", "optim.epochs=2"]
    # 72 rows: 9 steps an epoch, 18 in all
    assert preflight(load_config(overrides=[*base, "optim.warmup_steps=2"])) == []
    notices = preflight(load_config(overrides=[
        *base, "task.arith_max_operand=9", "optim.max_steps=50", "optim.warmup_steps=40",
        "task.max_length=16", "scaling.gpus_per_worker=2",
    ]))
    assert notices[0] == "task jsonl does not read task.arith_max_operand 9 (arith only): ignored"
    assert notices[1].startswith("training examples cut to task.max_length: kept ")
    assert notices[2] == ("optim.max_steps 50 is more than the 2 epochs make (18 steps): "
                          "training stops at 18")
    assert notices[3] == ("optim.warmup_steps 40 covers the whole training (18 steps): the "
                          "learning rate only rises, its cosine phase never comes")
    assert notices[4] == "scaling.gpus_per_worker 2.0 without scaling.use_gpu: true: no GPU is used"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        warn(notices)
    assert [w.category for w in seen] == [IgnoredKeyWarning] * 5
    # a search refuses a max_steps that ends the trainings before their last epoch, not one
    # that ends inside it (the last epoch is still evaluated and reported)
    last = [*base, "optim.warmup_steps=2", "optim.max_steps=13"]
    assert preflight(load_config(overrides=last), search=True) == []
    with pytest.raises(LossearchError, match=r"^optim.max_steps 9 ends each training in epoch "
                                             r"1 of optim.epochs 2 \(9 steps an epoch\)"):
        preflight(load_config(overrides=[*base, "optim.warmup_steps=2", "optim.max_steps=9"]),
                  search=True)
    capped = load_config(overrides=["task.arith_train_size=320", "task.train_size=1000",
                                    "task.val_size=20", "optim.warmup_steps=0"])
    assert preflight(capped) == ["task.train_size 1000 is more than task.arith_train_size 320, "
                                 "the problems generated: 320 used"]


def test_data_files_with_the_default_arith_task_are_refused(tmp_path):
    from lossearch.preflight import preflight

    with pytest.raises(LossearchError, match="task.train_file is set, but task arith generates"):
        preflight(load_config(overrides=[f"task.train_file={tmp_path / 'mine.jsonl'}"]))
