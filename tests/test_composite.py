"""The loss registry, spec validation and the composite loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as TF

from lossearch.errors import LossearchError
from lossearch.losses import (
    LOSSES,
    CompositeLoss,
    LossOutput,
    _functional,
    answer_cross_entropy,
    build_loss,
    cross_entropy,
    dft_loss,
    focal_loss,
    generalized_dice_loss,
    loss_family,
    lovasz_softmax_loss,
    normalize_spec,
    poly1_loss,
    prob_power_loss,
    registry,
    self_adjusting_dice_loss,
    tversky_loss,
)

PUBLIC = {
    "ce": cross_entropy,
    "focal": focal_loss,
    "lovasz": lovasz_softmax_loss,
    "gdice": generalized_dice_loss,
    "sadl": self_adjusting_dice_loss,
    "tversky": tversky_loss,
    "poly1": poly1_loss,
    "answer_ce": answer_cross_entropy,
    "dft": dft_loss,
    "prob_power": prob_power_loss,
}

EVERYTHING = {
    "ce": {"weight": 0.4, "label_smoothing": 0.1},
    "focal": {"weight": 0.1, "gamma": 1.5, "alpha": 0.5},
    "lovasz": 0.1,
    "gdice": {"weight": 0.1, "classes": "all"},
    "sadl": {"weight": 0.1, "alpha": 0.5},
    "tversky": {"weight": 0.1, "alpha": 0.3, "beta": 0.7},
    "poly1": {"weight": 0.1, "epsilon": -0.5},
    "answer_ce": 0.1,
    "dft": 0.1,
    "prob_power": {"weight": 0.1, "alpha": 0.3},
}


# ---------------------------------------------------------------- registry and spec


def test_registry_names_and_entry_points():
    assert list(LOSSES) == [
        "ce", "focal", "lovasz", "gdice", "sadl", "tversky", "poly1", "answer_ce", "dft",
        "prob_power",
    ]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 6, generator=g, dtype=torch.float64)
    t = torch.randint(0, 6, (20,), generator=g)
    lp = torch.log_softmax(x, -1)
    for name, info in LOSSES.items():
        assert info.fn is PUBLIC[name]
        params = info.defaults()
        torch.testing.assert_close(info.fn(x, t, **params), info.from_log_probs(lp, t, **params))


def test_normalize_fills_defaults():
    spec = normalize_spec({"ce": 0.6, "focal": {"weight": 0.4, "gamma": 2.0}})
    assert spec == {
        "ce_scope": "sequence",
        "ce": {"weight": 0.6, "label_smoothing": 0.0},
        "focal": {"weight": 0.4, "gamma": 2.0, "alpha": None},
    }
    assert list(spec) == ["ce_scope", "ce", "focal"]
    full = normalize_spec(
        {"gdice": 1, "tversky": 1, "lovasz": 1, "sadl": 1, "poly1": 1, "dft": 1, "prob_power": 1}
    )
    assert full["gdice"] == {
        "weight": 1.0, "classes": "present", "smooth": 1e-5, "batch": True, "variant": "standard"
    }
    assert full["tversky"] == {
        "weight": 1.0,
        "alpha": 0.5,
        "beta": 0.5,
        "classes": "present",
        "smooth": 1e-5,
    }
    assert full["lovasz"] == {"weight": 1.0, "classes": "present"}
    assert full["sadl"] == {"weight": 1.0, "alpha": 1.0, "gamma": 1.0}
    assert full["poly1"] == {"weight": 1.0, "epsilon": 1.0}
    assert full["dft"] == {"weight": 1.0}
    assert full["prob_power"] == {"weight": 1.0, "alpha": 1.0}


def test_normalize_is_idempotent_and_converts_numbers():
    spec = normalize_spec({**EVERYTHING, "ce_scope": "answer"})
    assert normalize_spec(spec) == spec
    assert spec["ce_scope"] == "answer"
    # YAML reads 1e-5 as a string; numeric strings are accepted, ints become floats
    odd = normalize_spec({"ce": 1, "gdice": {"weight": "0.5", "smooth": "1e-5"}})
    assert odd["ce"] == {"weight": 1.0, "label_smoothing": 0.0}
    assert isinstance(odd["ce"]["weight"], float)
    assert odd["gdice"]["weight"] == 0.5 and odd["gdice"]["smooth"] == 1e-5


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"ce": 0.6, "focal": {"weight": 0.4, "gamma": -1}},
            "loss 'focal': gamma must be >= 0, got -1",
        ),
        ({"focal": {"weight": 1, "alpha": "x"}}, "loss 'focal': alpha must be null or a number"),
        ({"focal": {"weight": 1, "alpha": 1.5}}, r"alpha must be in \[0, 1\], got 1.5"),
        ({"tversky": {"weight": 1, "beta": -0.1}}, r"loss 'tversky': beta must be in \[0, 1\]"),
        ({"tversky": {"weight": 1, "alpha": 2}}, r"loss 'tversky': alpha must be in \[0, 1\]"),
        ({"sadl": {"weight": 1, "gamma": -2}}, "loss 'sadl': gamma must be >= 0"),
        ({"poly1": {"weight": 1, "epsilon": -3}}, "loss 'poly1': epsilon must be >= -1"),
        ({"gdice": {"weight": 1, "smooth": -1}}, "loss 'gdice': smooth must be >= 0"),
        ({"gdice": {"weight": 1, "batch": "no"}}, "loss 'gdice': batch must be true or false"),
        ({"lovasz": {"weight": 1, "classes": "some"}}, "loss 'lovasz': classes must be one of"),
        (
            {"focal": {"weight": 1, "gamma": "abc"}},
            "loss 'focal': gamma must be a number, got 'abc'",
        ),
        ({"focal": {"weight": 1, "gamma": True}}, "loss 'focal': gamma must be a number"),
        ({"focal": {"weight": 1, "gamma": float("nan")}}, "loss 'focal': gamma must be a number"),
        ({"focal": {"weight": 1, "beta": 1}}, "loss 'focal': unknown parameter 'beta'"),
        (
            {"ce": {"weight": 1, "gamma": 1}},
            r"loss 'ce': unknown parameter 'gamma' \(allowed: weight, label_smoothing\)",
        ),
        (
            {"dice": 1},
            "unknown loss 'dice' \\(known: ce, focal, lovasz, gdice, sadl, tversky, poly1, "
            "answer_ce, dft, prob_power\\)",
        ),
        (
            {"ce": {"weight": 1, "label_smoothing": 1.0}},
            r"loss 'ce': label_smoothing must be in \[0, 1\), got 1.0",
        ),
        (
            {"ce": {"weight": 1, "label_smoothing": -0.1}},
            r"loss 'ce': label_smoothing must be in \[0, 1\), got -0.1",
        ),
        (
            {"prob_power": {"weight": 1, "alpha": 0}},
            "loss 'prob_power': alpha must be > 0, got 0",
        ),
        (
            {"prob_power": {"weight": 1, "alpha": -1}},
            "loss 'prob_power': alpha must be > 0, got -1",
        ),
        ({"dft": {"weight": 1, "gamma": 1}}, "loss 'dft': unknown parameter 'gamma'"),
        ({"ce": -0.5, "focal": 1}, "loss 'ce': weight must be >= 0, got -0.5"),
        ({"ce": 0, "focal": 0.0}, "at least one component needs a positive weight"),
        ({}, "at least one component needs a positive weight"),
        ({"ce_scope": "answer"}, "at least one component needs a positive weight"),
        ({"ce": "lots"}, "loss 'ce': weight must be a number, got 'lots'"),
        ({"ce": None}, "loss 'ce': weight must be a number, got None"),
        ({"focal": {"gamma": 1}}, "loss 'focal': missing 'weight'"),
        ({"ce": 1, "ce_scope": "prompt"}, "ce_scope must be 'sequence' or 'answer', got 'prompt'"),
        ([("ce", 1)], "expected a mapping"),
    ],
)
def test_normalize_errors(spec, message):
    with pytest.raises(LossearchError, match=message) as info:
        normalize_spec(spec)
    assert "\n" not in str(info.value)


def test_normalize_does_not_mutate_its_input():
    raw = {"ce": 1, "focal": {"weight": 0.5}}
    normalize_spec(raw)
    assert raw == {"ce": 1, "focal": {"weight": 0.5}}


def test_loss_family():
    assert loss_family({"ce": 1.0}) == "ce"
    assert loss_family({"ce": 1.0, "focal": 0.0}) == "ce"
    assert loss_family({"ce": 0.6, "focal": 0.4}) == "focal"
    assert loss_family({"focal": 1}) == "focal"
    assert loss_family({"ce": 0.5, "tversky": 0.2, "focal": 0.3}) == "focal+tversky"
    assert loss_family(normalize_spec(EVERYTHING)) == (
        "answer_ce+dft+focal+gdice+lovasz+poly1+prob_power+sadl+tversky"
    )
    assert loss_family({"ce": 0.6, "dft": 0.4}) == "dft"
    assert loss_family({"prob_power": {"weight": 1.0, "alpha": 0.5}}) == "prob_power"
    assert loss_family({"ce": 0.6, "answer_ce": 0.4}) == "answer_ce"
    assert loss_family({"answer_ce": 1.0}) == "answer_ce"


def test_config_uses_normalize_spec():
    from lossearch.config import load_config

    cfg = load_config(overrides={"loss": {"ce": 0.7, "sadl": 0.3}})
    assert cfg.loss == normalize_spec({"ce": 0.7, "sadl": 0.3})
    with pytest.raises(LossearchError, match="gamma must be >= 0"):
        load_config(overrides={"loss": {"ce": 1, "focal": {"weight": 1, "gamma": -1}}})


# ---------------------------------------------------------------- composite loss


def batch(b=3, length=10, v=13, seed=0, dtype=torch.float64):
    """Prompt tokens at positions 0..5, answer at 6..; the first sequence is shorter."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, length, v, generator=g, dtype=dtype)
    labels = torch.randint(0, v, (b, length), generator=g)
    answer = torch.zeros(b, length, dtype=torch.long)
    answer[:, 6:] = 1
    labels[0, 8:] = -100  # padding
    answer[0, 8:] = 0
    return logits, labels, answer


def shifted_tokens(logits, labels, answer, scope):
    """The (logits, targets) rows a component sees, built independently of the library."""
    lg = logits[:, :-1].reshape(-1, logits.shape[-1])
    tg = labels[:, 1:].reshape(-1)
    mask = (tg != -100) if scope == "sequence" else (answer[:, 1:].reshape(-1) == 1) & (tg != -100)
    return lg[mask], tg[mask]


@pytest.mark.parametrize("scope", ["sequence", "answer"])
def test_total_is_weighted_sum_of_public_functions(scope):
    logits, labels, answer = batch()
    spec = {**EVERYTHING, "ce_scope": scope}
    out = build_loss(spec)(logits, labels, answer)
    assert isinstance(out, LossOutput)
    assert set(out.components) == set(PUBLIC)
    expected_total = 0.0
    norm = normalize_spec(spec)
    for name, fn in PUBLIC.items():
        params = {k: v for k, v in norm[name].items() if k != "weight"}
        x, t = shifted_tokens(logits, labels, answer, scope if name == "ce" else "answer")
        value = fn(x, t, **params)
        torch.testing.assert_close(out.components[name], value)
        expected_total = expected_total + norm[name]["weight"] * value
    torch.testing.assert_close(out.total, expected_total)


TARGET_ONLY = ("focal", "sadl", "poly1", "answer_ce", "dft", "prob_power")


@pytest.mark.parametrize("scope", ["sequence", "answer"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_gradient_is_that_of_the_weighted_sum_of_public_functions(scope, smoothing):
    """Step 5's [N, 1] column changes nothing: d total / d logits is the gradient of the
    weighted sum of the public functions, each on its own log-softmax (float64)."""
    logits, labels, answer = batch()
    spec = {**EVERYTHING, "ce": {"weight": 0.4, "label_smoothing": smoothing}, "ce_scope": scope}
    x = logits.clone().requires_grad_(True)
    build_loss(spec)(x, labels, answer).total.backward()
    y = logits.clone().requires_grad_(True)
    norm = normalize_spec(spec)
    expected = 0.0
    for name, fn in PUBLIC.items():
        params = {k: v for k, v in norm[name].items() if k != "weight"}
        rows, t = shifted_tokens(y, labels, answer, scope if name == "ce" else "answer")
        expected = expected + norm[name]["weight"] * fn(rows, t, **params)
    expected.backward()
    torch.testing.assert_close(x.grad, y.grad)


def _consumers_of_log_softmax(total: torch.Tensor) -> list[str]:
    """The autograd nodes that take the [N, V] log-softmax's output as an input."""
    seen, stack, found = set(), [total.grad_fn], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for child, _ in node.next_functions:
            if child is not None and type(child).__name__ == "LogSoftmaxBackward0":
                found.append(type(node).__name__)
            stack.append(child)
    return found


@pytest.mark.parametrize(
    ("spec", "consumers"),
    [
        ({"ce": 1.0}, ["GatherBackward0"]),
        ({"ce": 0.6, "focal": 0.4}, ["GatherBackward0"]),
        ({"ce": 0.4, **dict.fromkeys(TARGET_ONLY, 0.1)}, ["GatherBackward0"]),
        ({"ce": 0.6, "focal": 0.4, "ce_scope": "answer"}, ["GatherBackward0"]),
        # these read every class: one more [N, V] gradient, as they need
        ({"ce": {"weight": 0.6, "label_smoothing": 0.1}, "focal": 0.4}, 2),
        ({"ce": 0.6, "lovasz": 0.4}, 2),
    ],
)
def test_target_only_components_reach_the_log_probs_through_one_gather(spec, consumers):
    """A mix of CE with components that read log p_t alone backpropagates into the [N, V]
    log-probs once (one [N, V] gradient, CE's memory), not once per component."""
    logits, labels, answer = batch(dtype=torch.float32)
    out = build_loss(spec)(logits.requires_grad_(True), labels, answer)
    found = _consumers_of_log_softmax(out.total)
    if isinstance(consumers, int):
        assert len(found) == consumers, found
    else:
        assert found == consumers


def test_uses_target_only():
    assert [n for n, info in LOSSES.items() if info.uses_target_only({})] == [
        "ce", "focal", "sadl", "poly1", "answer_ce", "dft", "prob_power"
    ]
    assert not LOSSES["ce"].uses_target_only({"label_smoothing": 0.1})
    assert not LOSSES["focal"].uses_target_only({"gamma": 2.0, "alpha": torch.ones(13)})
    assert LOSSES["focal"].uses_target_only({"gamma": 2.0, "alpha": 0.5})


def test_one_log_softmax_per_step(monkeypatch):
    calls = []
    original = _functional.log_softmax

    def counting(x):
        calls.append(tuple(x.shape))
        return original(x)

    monkeypatch.setattr(_functional, "log_softmax", counting)
    logits, labels, answer = batch()
    out = build_loss(EVERYTHING)(logits.requires_grad_(True), labels, answer)
    out.total.backward()
    n_supervised = int((labels[:, 1:] != -100).sum())
    assert calls == [(n_supervised, logits.shape[-1])]


def test_prompt_logits_move_only_sequence_ce():
    logits, labels, answer = batch()
    bumped = logits.clone()
    bumped[1, 2] += torch.linspace(
        -3, 3, logits.shape[-1], dtype=logits.dtype
    )  # predicts a prompt token
    seq = build_loss({**EVERYTHING, "ce_scope": "sequence"})
    before, after = seq(logits, labels, answer), seq(bumped, labels, answer)
    assert not torch.isclose(before.components["ce"], after.components["ce"])
    for name in PUBLIC:
        if name != "ce":
            torch.testing.assert_close(before.components[name], after.components[name])
    ans = build_loss({**EVERYTHING, "ce_scope": "answer"})
    before, after = ans(logits, labels, answer), ans(bumped, labels, answer)
    torch.testing.assert_close(before.total, after.total)
    for name in PUBLIC:
        torch.testing.assert_close(before.components[name], after.components[name])
    # and the gradient: nothing flows to the prompt position with ce_scope=answer
    x = logits.clone().requires_grad_(True)
    ans(x, labels, answer).total.backward()
    assert torch.equal(x.grad[:, :5], torch.zeros_like(x.grad[:, :5]))
    assert x.grad[:, 5:].abs().sum() > 0
    # the last position predicts nothing
    assert torch.equal(x.grad[:, -1], torch.zeros_like(x.grad[:, -1]))


def test_zero_weight_components_are_skipped(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("a weight-0 component was computed")

    # the registry looks its entry points up on use: patch the one focal's entry resolves to
    monkeypatch.setattr(f"lossearch.losses.{LOSSES['focal'].module}.focal_from_log_probs", boom)
    logits, labels, answer = batch()
    loss = build_loss({"ce": 1.0, "focal": 0.0, "ce_scope": "answer"})
    out = loss(logits, labels, answer)
    assert set(out.components) == {"ce"}
    assert loss.family == "ce"


def test_gdice_per_sequence_in_composite():
    logits, labels, answer = batch(b=4)
    out = build_loss({"gdice": {"weight": 1.0, "batch": False}})(logits, labels, answer)
    per_seq_labels = torch.where(answer[:, 1:] == 1, labels[:, 1:], -100)
    expected = generalized_dice_loss(logits[:, :-1], per_seq_labels, batch=False)
    torch.testing.assert_close(out.total, expected)
    pooled = build_loss({"gdice": 1.0})(logits, labels, answer)
    assert not torch.isclose(pooled.total, out.total)


def test_no_answer_tokens_and_no_tokens():
    logits, labels, _ = batch()
    x = logits.clone().requires_grad_(True)
    out = build_loss(EVERYTHING)(x, labels, torch.zeros_like(labels))
    for name in PUBLIC:
        if name != "ce":
            assert out.components[name].item() == 0.0
    assert out.components["ce"].item() > 0
    out.total.backward()
    x = logits.clone().requires_grad_(True)
    out = build_loss(EVERYTHING)(x, torch.full_like(labels, -100), torch.ones_like(labels))
    assert out.total.item() == 0.0
    out.total.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_composite_half_precision(dtype):
    logits, labels, answer = batch(dtype=torch.float32)
    x = logits.to(dtype).requires_grad_(True)
    out = build_loss(EVERYTHING)(x, labels, answer)
    assert out.total.dtype == torch.float32
    out.total.backward()
    assert torch.isfinite(x.grad.float()).all()
    torch.testing.assert_close(
        out.total, build_loss(EVERYTHING)(x.detach().float(), labels, answer).total
    )


def test_build_loss_accepts_raw_and_normalized():
    raw = {"ce": 0.6, "focal": 0.4}
    a, b = build_loss(raw), build_loss(normalize_spec(raw))
    assert isinstance(a, CompositeLoss) and isinstance(a, torch.nn.Module)
    assert a.spec == b.spec and a.family == "focal" and a.weights == {"ce": 0.6, "focal": 0.4}
    with pytest.raises(LossearchError):
        build_loss({"focal": {"weight": 1, "gamma": -1}})


def test_composite_shape_errors():
    logits, labels, answer = batch()
    loss = build_loss({"ce": 1})
    with pytest.raises(ValueError, match=r"\[B, L, V\]"):
        loss(logits[0], labels, answer)
    with pytest.raises(ValueError, match="answer_mask"):
        loss(logits, labels, answer[:, 1:])


def test_registry_module_exports():
    assert registry.CE_SCOPES == ("sequence", "answer")


# ---------------------------------------------------------------- answer_ce


def _answer_rows(logits, labels, answer):
    return shifted_tokens(logits, labels, answer, "answer")


def test_answer_ce_is_torch_cross_entropy_on_the_answer_tokens():
    """Value and gradient equal ``F.cross_entropy`` over the answer tokens (float64)."""
    logits, labels, answer = batch()
    x = logits.clone().requires_grad_(True)
    out = build_loss({"answer_ce": 1.0})(x, labels, answer)
    assert out.total.dtype == torch.float64 and set(out.components) == {"answer_ce"}
    out.total.backward()
    y = logits.clone().requires_grad_(True)
    ref = TF.cross_entropy(*_answer_rows(y, labels, answer))
    ref.backward()
    torch.testing.assert_close(out.total, ref)
    torch.testing.assert_close(out.components["answer_ce"], ref.detach())
    torch.testing.assert_close(x.grad, y.grad)
    assert torch.equal(x.grad[:, :5], torch.zeros_like(x.grad[:, :5]))  # no prompt gradient
    # whatever ce_scope says: answer_ce is the answer tokens only
    seq = build_loss({"answer_ce": 1.0, "ce_scope": "sequence"})(logits, labels, answer)
    torch.testing.assert_close(seq.total, ref.detach())
    # ce with ce_scope: answer is the same loss
    ce_answer = build_loss({"ce": 1.0, "ce_scope": "answer"})(logits, labels, answer)
    torch.testing.assert_close(ce_answer.total, ref.detach())


def test_answer_ce_with_no_answer_tokens_is_zero_with_zero_grad():
    logits, labels, _ = batch()
    x = logits.clone().requires_grad_(True)
    out = build_loss({"answer_ce": 1.0})(x, labels, torch.zeros_like(labels))
    assert out.total.item() == 0.0
    out.total.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    x = logits.clone().requires_grad_(True)
    out = build_loss({"answer_ce": 1.0})(x, torch.full_like(labels, -100), torch.ones_like(labels))
    assert out.total.item() == 0.0
    out.total.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("w", [0.0, 0.3, 0.6, 1.0])
def test_ce_mixed_with_answer_ce_is_the_weighted_sum(w):
    """``{ce: w, answer_ce: 1 - w}`` = ``w CE(sequence) + (1 - w) CE(answer)``, by hand."""
    logits, labels, answer = batch(seed=3)
    x = logits.clone().requires_grad_(True)
    loss = build_loss({"ce": w, "answer_ce": 1 - w})
    out = loss(x, labels, answer)
    out.total.backward()
    y = logits.clone().requires_grad_(True)
    lg, tg = y[:, :-1].reshape(-1, y.shape[-1]), labels[:, 1:].reshape(-1)
    supervised = tg != -100
    in_answer = supervised & (answer[:, 1:].reshape(-1) == 1)
    expected = w * TF.cross_entropy(lg[supervised], tg[supervised]) + (1 - w) * TF.cross_entropy(
        lg[in_answer], tg[in_answer]
    )
    expected.backward()
    torch.testing.assert_close(out.total, expected)
    torch.testing.assert_close(x.grad, y.grad)
    assert loss.family == ("ce" if w == 1.0 else "answer_ce")
    if 0 < w < 1:
        assert set(out.components) == {"ce", "answer_ce"}


def test_answer_ce_in_a_config():
    from lossearch.config import load_config

    mixed = load_config(overrides={"loss": {"ce": 0.6, "answer_ce": 0.4}})
    assert mixed.loss["answer_ce"] == {"weight": 0.4}
    alone = load_config(overrides={"loss": {"answer_ce": 1.0}})
    assert set(alone.loss) == {"ce_scope", "answer_ce"}
    with pytest.raises(LossearchError, match="loss 'answer_ce': unknown parameter 'gamma'"):
        load_config(overrides={"loss": {"answer_ce": {"weight": 1, "gamma": 2}}})


# ---------------------------------------------------------------- label smoothing, dft, prob_power


@pytest.mark.parametrize("scope", ["sequence", "answer"])
def test_ce_label_smoothing_is_torch_cross_entropy(scope):
    """``ce.label_smoothing`` = ``F.cross_entropy(..., label_smoothing=eps)`` on CE's rows."""
    logits, labels, answer = batch(seed=4)
    x = logits.clone().requires_grad_(True)
    spec = {"ce": {"weight": 1.0, "label_smoothing": 0.15}, "ce_scope": scope}
    out = build_loss(spec)(x, labels, answer)
    out.total.backward()
    y = logits.clone().requires_grad_(True)
    ref = TF.cross_entropy(*shifted_tokens(y, labels, answer, scope), label_smoothing=0.15)
    ref.backward()
    torch.testing.assert_close(out.total, ref)
    torch.testing.assert_close(x.grad, y.grad)


def test_label_smoothing_is_ces_only():
    """``answer_ce`` stays plain CE next to a smoothed ``ce``."""
    logits, labels, answer = batch(seed=5)
    out = build_loss({"ce": {"weight": 0.6, "label_smoothing": 0.2}, "answer_ce": 0.4})(
        logits, labels, answer
    )
    seq = TF.cross_entropy(*shifted_tokens(logits, labels, answer, "sequence"), label_smoothing=0.2)
    ans = TF.cross_entropy(*shifted_tokens(logits, labels, answer, "answer"))
    torch.testing.assert_close(out.components["ce"], seq)
    torch.testing.assert_close(out.components["answer_ce"], ans)
    torch.testing.assert_close(out.total, 0.6 * seq + 0.4 * ans)


@pytest.mark.parametrize(
    ("name", "per_token"),
    [
        ("dft", lambda p: -p.detach() * p.log()),
        ("prob_power", lambda p: (1 - p**0.3) / 0.3),
    ],
)
def test_dft_and_prob_power_act_on_the_answer_tokens(name, per_token):
    """``w CE(sequence) + (1 - w) X(answer)``, X written out from the softmax by hand."""
    logits, labels, answer = batch(seed=6)
    x = logits.clone().requires_grad_(True)
    params = {"alpha": 0.3} if name == "prob_power" else {}
    out = build_loss({"ce": 0.6, name: {"weight": 0.4, **params}})(x, labels, answer)
    out.total.backward()
    y = logits.clone().requires_grad_(True)
    ce = TF.cross_entropy(*shifted_tokens(y, labels, answer, "sequence"))
    lg, tg = shifted_tokens(y, labels, answer, "answer")
    p_t = torch.softmax(lg, -1)[torch.arange(len(tg)), tg]
    expected = 0.6 * ce + 0.4 * per_token(p_t).mean()
    expected.backward()
    torch.testing.assert_close(out.total, expected)
    torch.testing.assert_close(x.grad, y.grad)
    # alone: no gradient reaches the prompt positions
    z = logits.clone().requires_grad_(True)
    build_loss({name: {"weight": 1.0, **params}})(z, labels, answer).total.backward()
    assert torch.equal(z.grad[:, :5], torch.zeros_like(z.grad[:, :5]))


def test_new_losses_in_a_config():
    from lossearch.config import load_config

    cfg = load_config(
        overrides={"loss": {"ce": {"weight": 0.5, "label_smoothing": 0.1}, "prob_power": 0.5}}
    )
    assert cfg.loss["ce"] == {"weight": 0.5, "label_smoothing": 0.1}
    assert cfg.loss["prob_power"] == {"weight": 0.5, "alpha": 1.0}
    assert load_config(overrides={"loss": {"dft": 1.0}}).loss["dft"] == {"weight": 1.0}
    with pytest.raises(LossearchError, match="label_smoothing must be in"):
        load_config(overrides={"loss": {"ce": {"weight": 1, "label_smoothing": 1}}})
