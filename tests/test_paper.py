"""The paper, exactly: search_spaces/paper.yaml's settings and the paper's GDice bug.

Everything here runs on CPU in seconds and needs no download.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lossearch.config import TrainConfig
from lossearch.losses import build_loss
from lossearch.losses.dice import generalized_dice_loss
from lossearch.search.space import load_space, trial_to_config

PAPER = Path(__file__).resolve().parents[1] / "search_spaces" / "paper.yaml"


# --- paper.yaml ----------------------------------------------------------------------------


def _configs() -> dict[tuple[str, float], TrainConfig]:
    """The paper's table (first points) as resolved training configs."""
    import optuna

    sp = load_space(PAPER, ["model.name_or_path=/models/llama"])
    study = optuna.create_study(direction="maximize", sampler=sp.make_sampler(0))
    for point in sp.settings["first_points"]:
        study.enqueue_trial(point)
    out = {}
    for _ in sp.settings["first_points"]:
        trial = study.ask()
        flat = sp.define_by_run(trial)
        study.tell(trial, 0.5)
        out[(flat["loss.family"], flat.get("loss.ce.weight", 1.0))] = trial_to_config(
            sp.base, flat
        )
    return out


def test_paper_yaml_has_the_papers_data_model_and_optimiser() -> None:
    cfg = _configs()[("ce", 1.0)]
    t, m, o = cfg.task, cfg.model, cfg.optim
    assert (t.name, t.target_format, t.val_size, t.data_seed) == (
        "gsm8k", "formulas_paper", 0.1, 42
    )
    assert t.test_size is None  # the whole test split, 1319 questions
    assert m.dtype == "float32" and o.mixed_precision == "fp16"
    assert m.lora is not None
    assert (m.lora.r, m.lora.alpha, m.lora.dropout, m.lora.target_modules) == (
        8, 16, 0.05, "paper"
    )
    assert (o.lr, o.weight_decay, o.warmup_steps, o.epochs, o.batch_size, o.grad_accum) == (
        1e-5, 0.01, 500, 10, 2, 1
    )
    assert (o.scheduler, o.max_grad_norm, cfg.seed) == ("linear", 1.0, 42)
    assert cfg.loss["ce_scope"] == "sequence"


def test_paper_yaml_losses_are_the_papers() -> None:
    configs = _configs()
    for (family, w), cfg in configs.items():
        if family == "ce":
            continue
        assert cfg.loss[family]["weight"] == pytest.approx(1 - w)
    assert configs[("focal", 0.6)].loss["focal"]["gamma"] == 2.0
    assert configs[("focal", 0.6)].loss["focal"]["alpha"] is None
    assert configs[("sadl", 0.6)].loss["sadl"] | {"weight": 0} == {
        "weight": 0, "alpha": 1.0, "gamma": 1.0
    }
    assert configs[("lovasz", 0.6)].loss["lovasz"]["classes"] == "present"
    for w in (0.0, 0.6):
        gdice = configs[("gdice", w)].loss["gdice"]
        assert gdice["batch"] is False  # per sequence, as the paper's code


# --- the paper's GDice: a numerical no-op --------------------------------------------------


def _realistic(seed: int = 0, b: int = 2, length: int = 64, v: int = 32000, boost: float = 12.0):
    """Answer-token logits of a model that gives its targets p ~ 0.7 (as a fine-tuned LM
    does on GSM8K formulas), Llama's vocabulary size; targets repeat as text does."""
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, v, (b, length), generator=g)
    target[:, length // 2 :] = target[:, : length // 2].roll(3, 1)
    logits = torch.randn(b, length, v, generator=g)
    logits.scatter_add_(2, target.unsqueeze(2), torch.full((b, length, 1), boost))
    return logits, target


def test_paper_gdice_value_and_gradient_are_tiny() -> None:
    logits, target = _realistic()
    p_t = torch.softmax(logits, -1).gather(2, target.unsqueeze(2)).mean()
    assert 0.5 < p_t < 0.9
    x = logits.clone().requires_grad_(True)
    paper = generalized_dice_loss(x, target, batch=False, variant="paper")
    paper.backward()
    assert paper < 0 and abs(paper.item()) < 1e-18  # measured: -3.6e-20
    assert x.grad.abs().max() < 1e-20  # measured: 4.8e-22
    y = logits.clone().requires_grad_(True)
    standard = generalized_dice_loss(y, target, batch=False)
    standard.backward()
    assert 0.05 < standard.item() < 1  # measured: 0.18
    assert y.grad.abs().max() > 1e-4


def test_paper_gdice_follows_its_formula() -> None:
    """Small case against the formula written out class by class, in float64."""
    g = torch.Generator().manual_seed(1)
    b, length, v, smooth = 2, 5, 7, 1e-5
    logits = torch.randn(b, length, v, generator=g, dtype=torch.float64)
    target = torch.tensor([[0, 3, 3, 5, 1], [2, 2, 2, 6, 6]])
    probs = torch.softmax(logits, -1)
    expected = []
    for s in range(b):
        numer = denom = 0.0
        for c in range(v):
            count = float((target[s] == c).sum())
            w = 1.0 / (count + 1e-10) ** 2
            numer += w * float(probs[s, target[s] == c, c].sum())
            denom += w * (float(probs[s, :, c].sum()) + count)
        expected.append(-2 * (numer + smooth) / (denom + smooth))
    got = generalized_dice_loss(logits, target, batch=False, variant="paper", smooth=smooth)
    assert got.item() == pytest.approx(sum(expected) / b, rel=1e-9)
    # batch=True pools the whole batch as one group
    flat = generalized_dice_loss(logits.reshape(1, -1, v), target.reshape(1, -1), batch=False,
                                 variant="paper")
    pooled = generalized_dice_loss(logits.reshape(-1, v), target.reshape(-1), variant="paper")
    assert pooled.item() == pytest.approx(flat.item(), rel=1e-12)


def test_paper_gdice_leaves_the_ce_gradient_bit_for_bit() -> None:
    """0.6 CE + 0.4 paper-GDice gives exactly 0.6 CE's float32 gradient: the paper's GDice
    runs trained on CE alone."""
    logits, target = _realistic(seed=2)
    x = logits.clone().requires_grad_(True)
    ce = torch.nn.functional.cross_entropy(x.reshape(-1, x.shape[-1]), target.reshape(-1))
    gd = generalized_dice_loss(x, target, batch=False, variant="paper")
    (0.6 * ce + 0.4 * gd).backward(retain_graph=True)
    mixed = x.grad.clone()
    x.grad = None
    (0.6 * ce).backward()
    assert torch.equal(mixed, x.grad)


def test_variant_is_checked() -> None:
    logits, target = _realistic(v=50, length=4)
    with pytest.raises(ValueError, match="variant must be 'standard' or 'paper'"):
        generalized_dice_loss(logits, target, batch=False, variant="buggy")


def test_paper_gdice_through_the_composite() -> None:
    logits, target = _realistic(seed=3, length=16, v=1000)
    labels = torch.cat([target[:, :1], target], 1)[:, :16]
    answer = torch.ones_like(labels)
    out = build_loss({"ce": 0.6, "gdice": {"weight": 0.4, "batch": False, "variant": "paper"}})(
        logits, labels, answer
    )
    assert abs(out.components["gdice"].item()) < 1e-15
