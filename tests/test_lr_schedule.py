"""The learning-rate schedule: Hugging Face's values, warmup for every shape, its state."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from lossearch.lr_schedule import SHAPES, build_scheduler, lr_factor

HF_NAME = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


def _rates(scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int) -> list[float]:
    """The rate of each of ``steps`` optimizer steps (the scheduler stepped after each)."""
    optimizer = scheduler.optimizer
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def _optimizer(lr: float = 0.5) -> torch.optim.Optimizer:
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=lr)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("warmup", "total"), [(0, 7), (3, 10), (10, 10), (1, 1)])
def test_rates_equal_hugging_faces_schedule(shape: str, warmup: int, total: int) -> None:
    from transformers import get_scheduler

    ours = _rates(build_scheduler(_optimizer(), shape, warmup, total), total)
    hf = _rates(
        get_scheduler(
            HF_NAME[shape], _optimizer(), num_warmup_steps=warmup, num_training_steps=total
        ),
        total,
    )
    assert ours == pytest.approx(hf, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_warms_up(shape: str) -> None:
    """Step t < W runs at lr · t/W; ``transformers.get_scheduler("constant")`` skipped the
    warmup, so ``optim.warmup_steps`` was silently ignored with ``scheduler: constant``."""
    rates = _rates(build_scheduler(_optimizer(0.5), shape, 4, 20), 6)
    assert rates[:5] == pytest.approx([0.0, 0.125, 0.25, 0.375, 0.5])
    assert rates[5] <= 0.5


def test_decay_ends_at_zero_and_warmup_is_capped_at_the_total() -> None:
    assert lr_factor(10, shape="cosine", warmup_steps=2, total_steps=10) == pytest.approx(0.0)
    assert lr_factor(10, shape="linear", warmup_steps=2, total_steps=10) == pytest.approx(0.0)
    assert lr_factor(6, shape="cosine", warmup_steps=2, total_steps=10) == pytest.approx(0.5)
    # 30 warmup steps asked, 5 trained: the warmup is the 5 steps, not cut off at 5/30
    assert _rates(build_scheduler(_optimizer(1.0), "constant", 30, 5), 5)[-1] == 0.8


def test_unknown_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown LR schedule 'step'"):
        build_scheduler(_optimizer(), "step", 0, 5)  # type: ignore[arg-type]


def test_state_dict_resumes_the_schedule() -> None:
    """A checkpoint's optimizer and scheduler states (``checkpointing``) put a new scheduler
    at the same step."""
    first = build_scheduler(_optimizer(), "cosine", 3, 12)
    _rates(first, 5)
    second = build_scheduler(_optimizer(), "cosine", 3, 12)
    second.optimizer.load_state_dict(first.optimizer.state_dict())
    second.load_state_dict(first.state_dict())
    assert second.last_epoch == 5
    assert second.get_last_lr() == first.get_last_lr()
    assert _rates(second, 7) == pytest.approx(_rates(first, 7))


def test_training_without_lora_never_imports_peft() -> None:
    """A whole tiny training (optimizer, schedule, checkpoint) loads neither peft nor
    ``transformers.trainer_utils``: they cost every trial process ~0.2 s (issue 16)."""
    code = (
        "import sys, tempfile\n"
        "from lossearch.config import load_config\n"
        "from lossearch.fit import fit_in_run\n"
        "cfg = load_config(overrides={'task.arith_train_size': 64, 'task.val_size': 8,\n"
        "    'optim.epochs': 1, 'optim.batch_size': 16, 'eval.max_new_tokens': 4})\n"
        "fit_in_run(cfg, tempfile.mkdtemp(), lambda m, c: None, echo=False)\n"
        "print(sorted(m for m in ('peft', 'transformers.trainer_utils') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_scheduler_state_of_earlier_checkpoints_loads() -> None:
    """Checkpoints written before this module hold ``transformers.get_scheduler``'s state."""
    from transformers import get_scheduler

    hf = get_scheduler("cosine", _optimizer(), num_warmup_steps=3, num_training_steps=12)
    _rates(hf, 5)
    ours = build_scheduler(_optimizer(), "cosine", 3, 12)
    ours.optimizer.load_state_dict(hf.optimizer.state_dict())
    ours.load_state_dict(hf.state_dict())
    assert _rates(ours, 7) == pytest.approx(_rates(hf, 7), rel=1e-12)
