"""The token losses against independent references, gradients, ignore_index and numerics."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as TF

from lossearch.losses import (
    answer_cross_entropy,
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
from lossearch.losses import lovasz as lovasz_module

ALL_LOSSES = {
    "ce": cross_entropy,
    "focal": focal_loss,
    "focal_g05_a": lambda x, t, **kw: focal_loss(x, t, gamma=0.5, alpha=0.25, **kw),
    "lovasz": lovasz_softmax_loss,
    "lovasz_all": lambda x, t, **kw: lovasz_softmax_loss(x, t, classes="all", **kw),
    "gdice": generalized_dice_loss,
    "gdice_all": lambda x, t, **kw: generalized_dice_loss(x, t, classes="all", **kw),
    "sadl": self_adjusting_dice_loss,
    "sadl_a05": lambda x, t, **kw: self_adjusting_dice_loss(x, t, alpha=0.5, gamma=0.1, **kw),
    "tversky": tversky_loss,
    "tversky_all": lambda x, t, **kw: tversky_loss(x, t, alpha=0.3, beta=0.7, classes="all", **kw),
    "poly1": poly1_loss,
    "answer_ce": answer_cross_entropy,
    "ce_smoothed": lambda x, t, **kw: cross_entropy(x, t, label_smoothing=0.1, **kw),
    "dft": dft_loss,
    "prob_power": prob_power_loss,
    "prob_power_a03": lambda x, t, **kw: prob_power_loss(x, t, alpha=0.3, **kw),
    "prob_power_a1e-4": lambda x, t, **kw: prob_power_loss(x, t, alpha=1e-4, **kw),
}


def make(n: int = 24, v: int = 7, seed: int = 0, dtype=torch.float64, classes: int | None = None):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, v, generator=g) * 2).to(dtype)
    target = torch.randint(0, classes or v, (n,), generator=g)
    return logits, target


# ---------------------------------------------------------------- references (plain loops)


def ref_lovasz(logits, target, classes="present"):
    """Berman et al.'s algorithm, one class at a time."""
    probs = torch.softmax(logits, -1)
    losses = []
    for c in range(probs.shape[1]):
        fg = (target == c).to(probs.dtype)
        if classes == "present" and fg.sum() == 0:
            continue
        errors = (fg - probs[:, c]).abs()
        errors_sorted, perm = torch.sort(errors, descending=True)
        fg_sorted = fg[perm]
        gts = fg_sorted.sum()
        intersection = gts - fg_sorted.cumsum(0)
        union = gts + (1 - fg_sorted).cumsum(0)
        jaccard = 1.0 - intersection / union
        jaccard = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
        losses.append(torch.dot(errors_sorted, jaccard))
    return torch.stack(losses).mean()


def ref_class_sums(logits, target):
    probs = torch.softmax(logits, -1)
    onehot = TF.one_hot(target, logits.shape[1]).to(probs.dtype)
    inter = (probs * onehot).sum(0)
    fp = (probs * (1 - onehot)).sum(0)
    fn = ((1 - probs) * onehot).sum(0)
    return probs, onehot, inter, fp, fn


def ref_gdice_present(logits, target, smooth=1e-5):
    probs, onehot, inter, _, _ = ref_class_sums(logits, target)
    g = onehot.sum(0)
    keep = g > 0
    w = 1.0 / g[keep] ** 2
    union = probs.sum(0)[keep] + g[keep]
    return 1 - (2 * (w * inter[keep]).sum() + smooth) / ((w * union).sum() + smooth)


def ref_tversky(logits, target, alpha, beta, classes="present", smooth=1e-5):
    _, onehot, inter, fp, fn = ref_class_sums(logits, target)
    ti = (inter + smooth) / (inter + alpha * fp + beta * fn + smooth)
    if classes == "present":
        ti = ti[onehot.sum(0) > 0]
    return (1 - ti).mean()


def ref_pt(logits, target):
    return torch.softmax(logits, -1)[torch.arange(len(target)), target]


# ---------------------------------------------------------------- parity


def test_cross_entropy_matches_torch():
    x, t = make()
    t[3] = -100
    torch.testing.assert_close(cross_entropy(x, t), TF.cross_entropy(x, t))


def test_answer_ce_matches_torch_on_the_tokens_given():
    x, t = make()
    t[[1, 6]] = -100
    torch.testing.assert_close(answer_cross_entropy(x, t), TF.cross_entropy(x, t))
    assert answer_cross_entropy(x, t).dtype == torch.float64


def test_focal_gamma0_is_cross_entropy():
    x, t = make(dtype=torch.float32)
    t[::5] = -100
    torch.testing.assert_close(focal_loss(x, t, gamma=0.0), TF.cross_entropy(x, t))


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_focal_matches_formula(gamma):
    x, t = make()
    p = ref_pt(x, t)
    expected = (-((1 - p) ** gamma) * p.log()).mean()
    torch.testing.assert_close(focal_loss(x, t, gamma=gamma), expected)
    torch.testing.assert_close(focal_loss(x, t, gamma=gamma, alpha=0.25), 0.25 * expected)
    alpha = torch.linspace(0.1, 0.9, x.shape[1], dtype=x.dtype)
    per_class = (-alpha[t] * (1 - p) ** gamma * p.log()).mean()
    torch.testing.assert_close(focal_loss(x, t, gamma=gamma, alpha=alpha), per_class)


@pytest.mark.parametrize("classes", ["present", "all"])
@pytest.mark.parametrize(("n", "v", "c"), [(30, 6, 4), (200, 40, 25), (1, 3, 3), (9, 4, 1)])
def test_lovasz_matches_per_class_reference(classes, n, v, c):
    x, t = make(n, v, seed=n, classes=c)
    x.requires_grad_(True)
    ours = lovasz_softmax_loss(x, t, classes=classes)
    ref = ref_lovasz(x, t, classes=classes)
    torch.testing.assert_close(ours, ref)
    (g_ours,) = torch.autograd.grad(ours, x)
    (g_ref,) = torch.autograd.grad(ref, x)
    torch.testing.assert_close(g_ours, g_ref)


def test_lovasz_torch_argsort_path_agrees(monkeypatch):
    x, t = make(60, 9, seed=3)
    expected = lovasz_softmax_loss(x, t)
    monkeypatch.setattr(lovasz_module, "_np", None)
    torch.testing.assert_close(lovasz_softmax_loss(x, t), expected)


def test_lovasz_ties_do_not_matter():
    # equal logits: every error ties; the Lovász extension does not depend on the order
    x = torch.zeros(10, 4, dtype=torch.float64)
    t = torch.tensor([0, 1, 1, 2, 0, 0, 3, 1, 2, 0])
    torch.testing.assert_close(lovasz_softmax_loss(x, t), ref_lovasz(x, t))


def test_generalized_dice_all_matches_monai():
    monai_losses = pytest.importorskip("monai.losses")
    x, t = make(40, 9, seed=1, dtype=torch.float32, classes=6)  # classes 6..8 absent
    monai = monai_losses.GeneralizedDiceLoss(
        softmax=True, w_type="square", batch=True, smooth_nr=1e-5, smooth_dr=1e-5
    )
    onehot = TF.one_hot(t, x.shape[1]).float()
    expected = monai(x.unsqueeze(-1), onehot.unsqueeze(-1))  # [N, V, 1]: tokens as batch
    ours = generalized_dice_loss(x, t, classes="all", smooth=1e-5)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
    # and the gradients
    xa = x.clone().requires_grad_(True)
    xb = x.clone().requires_grad_(True)
    generalized_dice_loss(xa, t, classes="all").backward()
    monai(xb.unsqueeze(-1), onehot.unsqueeze(-1)).backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-7)


def test_generalized_dice_present_matches_formula():
    x, t = make(40, 9, seed=2, classes=5)
    torch.testing.assert_close(generalized_dice_loss(x, t), ref_gdice_present(x, t))
    torch.testing.assert_close(
        generalized_dice_loss(x, t, smooth=0.5), ref_gdice_present(x, t, smooth=0.5)
    )


@pytest.mark.parametrize("classes", ["present", "all"])
def test_generalized_dice_per_sequence_matches_loop(classes):
    b, length, v = 4, 9, 8
    g = torch.Generator().manual_seed(5)
    x = torch.randn(b, length, v, generator=g, dtype=torch.float64)
    t = torch.randint(0, 5, (b, length), generator=g)
    t[1, :4] = -100
    t[2] = -100  # a sequence with no tokens does not count
    ours = generalized_dice_loss(x, t, classes=classes, batch=False)
    loop = torch.stack(
        [generalized_dice_loss(x[i], t[i], classes=classes) for i in (0, 1, 3)]
    ).mean()
    torch.testing.assert_close(ours, loop)
    # pooled over the batch (the default) is a different number
    pooled = generalized_dice_loss(x, t, classes=classes)
    torch.testing.assert_close(
        pooled, generalized_dice_loss(x.reshape(-1, v), t.reshape(-1), classes=classes)
    )
    assert not torch.isclose(pooled, ours)


def test_generalized_dice_per_sequence_needs_3d():
    x, t = make()
    with pytest.raises(ValueError, match="batch=False"):
        generalized_dice_loss(x, t, batch=False)


@pytest.mark.parametrize(("alpha", "gamma"), [(1.0, 1.0), (0.5, 0.1), (0.0, 0.0)])
def test_sadl_matches_formula(alpha, gamma):
    x, t = make()
    p = ref_pt(x, t)
    q = (1 - p) ** alpha * p
    expected = (1 - (2 * q + gamma) / (q + 1 + gamma)).mean()
    torch.testing.assert_close(self_adjusting_dice_loss(x, t, alpha=alpha, gamma=gamma), expected)


@pytest.mark.parametrize("classes", ["present", "all"])
@pytest.mark.parametrize(("alpha", "beta"), [(0.5, 0.5), (0.3, 0.7), (1.0, 0.0)])
def test_tversky_matches_formula(classes, alpha, beta):
    x, t = make(40, 9, seed=4, classes=6)
    ours = tversky_loss(x, t, alpha=alpha, beta=beta, classes=classes)
    torch.testing.assert_close(ours, ref_tversky(x, t, alpha, beta, classes))


@pytest.mark.parametrize("epsilon", [1.0, -1.0, 2.5])
def test_poly1_matches_formula(epsilon):
    x, t = make()
    p = ref_pt(x, t)
    expected = (-p.log() + epsilon * (1 - p)).mean()
    torch.testing.assert_close(poly1_loss(x, t, epsilon=epsilon), expected)


def _value_and_grad(fn, x, t):
    """``fn(x, t)`` and its gradient with respect to ``x`` (a fresh leaf)."""
    leaf = x.detach().clone().requires_grad_(True)
    value = fn(leaf, t)
    (grad,) = torch.autograd.grad(value, leaf)
    return value.detach(), grad


def _kept(x, t):
    keep = t != -100
    return x[keep], t[keep]


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5, 0.9])
def test_ce_label_smoothing_matches_torch(eps):
    """Value and gradient equal ``F.cross_entropy(..., label_smoothing=eps)`` (float64)."""
    x, t = make(40, 9, seed=11)
    t[[0, 7, 8]] = -100
    ours = _value_and_grad(lambda z, tt: cross_entropy(z, tt, label_smoothing=eps), x, t)
    ref = _value_and_grad(lambda z, tt: TF.cross_entropy(z, tt, label_smoothing=eps), x, t)
    torch.testing.assert_close(ours, ref)
    # and the formula it stands for: CE against (1 - eps) onehot + eps / V
    z, tt = _kept(x, t)
    q = (1 - eps) * TF.one_hot(tt, z.shape[1]).to(z.dtype) + eps / z.shape[1]
    torch.testing.assert_close(ours[0], -(q * torch.log_softmax(z, -1)).sum(1).mean())


def test_dft_matches_formula():
    """``-sg(p_t) log p_t``: value, and gradient ``p_t`` times CE's per-token gradient."""
    x, t = make(30, 8, seed=12)
    t[[2, 3]] = -100

    def ref(z, tt):
        z, tt = _kept(z, tt)
        p = ref_pt(z, tt)
        return (-p.detach() * p.log()).mean()

    value, grad = _value_and_grad(dft_loss, x, t)
    torch.testing.assert_close((value, grad), _value_and_grad(ref, x, t))
    # the gradient written out: (1/N) p_t (softmax - onehot) on the kept rows, 0 elsewhere
    z, tt = _kept(x, t)
    p = torch.softmax(z, -1)
    p_t = p[torch.arange(len(tt)), tt]
    expected = torch.zeros_like(x)
    expected[t != -100] = p_t[:, None] * (p - TF.one_hot(tt, z.shape[1])) / len(tt)
    torch.testing.assert_close(grad, expected)
    # same gradient as 1 - p_t (prob_power at alpha = 1), a different value
    pp_value, pp_grad = _value_and_grad(prob_power_loss, x, t)
    torch.testing.assert_close(pp_grad, grad)
    assert not torch.isclose(pp_value, value)


@pytest.mark.parametrize("alpha", [0.05, 0.3, 1.0, 3.0])
def test_prob_power_matches_formula(alpha):
    x, t = make(30, 8, seed=13)
    t[[5, 9]] = -100

    def ref(z, tt):
        z, tt = _kept(z, tt)
        return ((1 - ref_pt(z, tt) ** alpha) / alpha).mean()

    ours = _value_and_grad(lambda z, tt: prob_power_loss(z, tt, alpha=alpha), x, t)
    torch.testing.assert_close(ours, _value_and_grad(ref, x, t))
    if alpha == 1.0:  # the 1 - p loss
        z, tt = _kept(x, t)
        torch.testing.assert_close(ours[0], (1 - ref_pt(z, tt)).mean())


def test_prob_power_small_alpha_is_cross_entropy():
    """``alpha -> 0`` gives CE, value and gradient; the gap shrinks in proportion to alpha."""
    x, t = make(30, 8, seed=14)
    t[4] = -100
    ce = _value_and_grad(cross_entropy, x, t)
    gaps = []
    for alpha in (1e-4, 1e-6):
        value, grad = _value_and_grad(lambda z, tt, a=alpha: prob_power_loss(z, tt, alpha=a), x, t)
        torch.testing.assert_close(value, ce[0], rtol=1e-3, atol=0)
        torch.testing.assert_close(grad, ce[1], rtol=1e-3, atol=1e-7)
        gaps.append(float((value - ce[0]).abs()))
    assert gaps[1] < gaps[0] / 50  # first order in alpha: 100x smaller alpha, ~100x smaller gap
    # in float32 too (no 1 - p^alpha cancellation: expm1)
    value32 = prob_power_loss(x.float(), t, alpha=1e-4)
    torch.testing.assert_close(value32, ce[0].float(), rtol=1e-3, atol=0)


# ---------------------------------------------------------------- gradients, ignore_index


# DFT's gradient is by design not its value's derivative (stop-gradient on p_t), so gradcheck
# does not apply; test_dft_matches_formula checks it against the formula and shows it equal to
# the gradient of 1 - p_t, which gradcheck covers as prob_power.
STOP_GRADIENT = {"dft"}


@pytest.mark.parametrize("name", [n for n in ALL_LOSSES if n not in STOP_GRADIENT])
def test_gradcheck(name):
    fn = ALL_LOSSES[name]
    x, t = make(12, 5, seed=7, classes=4)
    t[2] = -100
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: fn(z, t), (x,))


@pytest.mark.parametrize("name", list(ALL_LOSSES))
def test_ignore_index_drops_tokens(name):
    fn = ALL_LOSSES[name]
    x, t = make(30, 6, seed=8)
    t[[0, 4, 5, 17]] = -100
    keep = t != -100
    torch.testing.assert_close(fn(x, t), fn(x[keep], t[keep]))
    t2 = torch.where(keep, t, torch.full_like(t, 99))
    torch.testing.assert_close(fn(x, t2, ignore_index=99), fn(x[keep], t[keep]))


@pytest.mark.parametrize("name", list(ALL_LOSSES))
def test_all_ignored_is_zero_with_zero_grad(name):
    fn = ALL_LOSSES[name]
    x = torch.randn(5, 4, requires_grad=True)
    t = torch.full((5,), -100)
    loss = fn(x, t)
    assert loss.item() == 0.0
    loss.backward()
    assert x.grad is not None and torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("name", list(ALL_LOSSES))
def test_extreme_logits_are_finite(name):
    fn = ALL_LOSSES[name]
    x, t = make(16, 6, seed=9, dtype=torch.float32)
    x = torch.where(x > 0, 1e4, -1e4)
    x[0, t[0]] = 1e4  # a token predicted with p_t = 1
    x[1] = -1e4
    x[1, (t[1] + 1) % 6] = 1e4  # a token predicted with p_t = 0
    x.requires_grad_(True)
    loss = fn(x, t)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", list(ALL_LOSSES))
def test_extreme_logits_half_precision(name, dtype):
    """±1e4 logits in float16/bfloat16: p_t = 1, p_t = 0 and ties all stay finite."""
    fn = ALL_LOSSES[name]
    x, t = make(16, 6, seed=9, dtype=torch.float32)
    x = torch.where(x > 0, 1e4, -1e4)
    x[0, t[0]] = 1e4
    x[1] = -1e4
    x[1, (t[1] + 1) % 6] = 1e4
    x = x.to(dtype).requires_grad_(True)
    loss = fn(x, t)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad.float()).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", list(ALL_LOSSES))
def test_half_precision_inputs(name, dtype):
    fn = ALL_LOSSES[name]
    x32, t = make(16, 6, seed=10, dtype=torch.float32)
    x = x32.to(dtype).requires_grad_(True)
    loss = fn(x, t)
    assert loss.dtype == torch.float32  # computed in float32
    loss.backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad.float()).all()
    torch.testing.assert_close(loss, fn(x.detach().float(), t))
    big = (x32.sign() * 6e4).to(dtype).requires_grad_(True)  # near the float16 maximum
    loss = fn(big, t)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(big.grad.float()).all()


def test_shape_and_argument_errors():
    x, t = make()
    with pytest.raises(ValueError, match=r"\[N, V\]"):
        cross_entropy(x[None], t)
    with pytest.raises(ValueError, match=r"target must be \[N\]"):
        focal_loss(x, t[:-1])
    with pytest.raises(ValueError, match="integer"):
        poly1_loss(x, t.double())
    with pytest.raises(ValueError, match="classes"):
        lovasz_softmax_loss(x, t, classes="some")
    with pytest.raises(ValueError, match="gamma"):
        focal_loss(x, t, gamma=-1)
    with pytest.raises(ValueError, match="per-class alpha"):
        focal_loss(x, t, alpha=torch.ones(3))
    for eps in (-0.1, 1.0):
        with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\)"):
            cross_entropy(x, t, label_smoothing=eps)
    for alpha in (0.0, -0.5):
        with pytest.raises(ValueError, match="alpha must be > 0"):
            prob_power_loss(x, t, alpha=alpha)
