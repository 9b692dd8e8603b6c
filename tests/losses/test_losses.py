"""Loss functions against slow, obvious implementations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Laplace, Normal

from seguncert.errors import ConfigError
from seguncert.losses import (
    UncertaintyWeighting,
    cross_entropy,
    gaussian_nll,
    heteroscedastic_cross_entropy,
    l1_loss,
    laplace_nll,
    predictive_variance,
)


def slow_hetero_ce(logits, log_var, target, eps, weight=None, ignore=255):
    """Explicit loops over pixels and samples, in Python floats (Kendall & Gal 2017 eq. 12)."""
    T, (B, C, H, W) = eps.shape[0], logits.shape
    num = den = 0.0
    for b in range(B):
        for i in range(H):
            for j in range(W):
                y = int(target[b, i, j])
                if y == ignore:
                    continue
                # one log-variance per pixel (broadcast over classes) or one per class
                sigma = [
                    math.exp(0.5 * float(log_var[b, c if log_var.shape[1] > 1 else 0, i, j]))
                    for c in range(C)
                ]
                mean_p = 0.0
                for t in range(T):
                    xs = [
                        float(logits[b, c, i, j]) + sigma[c] * float(eps[t, b, c, i, j])
                        for c in range(C)
                    ]
                    mean_p += math.exp(xs[y]) / sum(math.exp(v) for v in xs) / T
                w = 1.0 if weight is None else float(weight[y])
                num += -w * math.log(mean_p)
                den += w
    return num / den


@pytest.mark.parametrize("per_class", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_hetero_ce_matches_loop(per_class, weighted):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 3, 2, 2, generator=g, dtype=torch.float64).float() * 2
    log_var = torch.randn(1, 3 if per_class else 1, 2, 2, generator=g)
    target = torch.tensor([[[0, 2], [255, 1]]])
    weight = torch.tensor([0.5, 2.0, 3.0]) if weighted else None
    T = 7
    got = heteroscedastic_cross_entropy(
        logits, log_var, target, T, weight, generator=torch.Generator().manual_seed(42)
    )
    eps = torch.randn((T, 1, 3, 2, 2), generator=torch.Generator().manual_seed(42))
    want = slow_hetero_ce(logits, log_var, target, eps, weight)
    assert float(got) == pytest.approx(want, rel=1e-5)


def test_hetero_ce_without_noise_is_cross_entropy():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 3, 5, generator=g)
    target = torch.randint(0, 4, (2, 3, 5), generator=g)
    target[0, 0, :2] = 255
    weight = torch.tensor([1.0, 0.2, 3.0, 0.7])
    log_var = torch.full((2, 1, 3, 5), float("-inf"))
    for w in (None, weight):
        got = heteroscedastic_cross_entropy(logits, log_var, target, 5, w)
        torch.testing.assert_close(got, F.cross_entropy(logits, target, weight=w, ignore_index=255))
        torch.testing.assert_close(cross_entropy(logits, target, w), got)


def test_hetero_ce_is_log_of_mean_likelihood_not_mean_ce():
    # -log mean_t p_t <= mean_t -log p_t (Jensen); averaging CE would be a different objective.
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(1, 5, 4, 4, generator=g)
    log_var = torch.full((1, 1, 4, 4), 2.0)
    target = torch.randint(0, 5, (1, 4, 4), generator=g)
    T = 16
    got = heteroscedastic_cross_entropy(
        logits, log_var, target, T, generator=torch.Generator().manual_seed(5)
    )
    eps = torch.randn((T, 1, 5, 4, 4), generator=torch.Generator().manual_seed(5))
    mean_ce = torch.stack([F.cross_entropy(logits + math.e * e, target) for e in eps]).mean()
    assert float(got) < float(mean_ce) - 1e-3


def test_hetero_ce_ignore_gradients_and_empty():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(1, 3, 2, 2, generator=g, requires_grad=True)
    log_var = torch.zeros(1, 1, 2, 2, requires_grad=True)
    target = torch.tensor([[[1, 255], [0, 2]]])
    loss = heteroscedastic_cross_entropy(logits, log_var, target, 4)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[0, :, 0, 1].abs().sum() == 0  # void pixel gets no gradient
    assert log_var.grad[0, 0, 0, 1] == 0 and log_var.grad.abs().sum() > 0
    empty = torch.full((1, 2, 2), 255)
    zero = heteroscedastic_cross_entropy(logits, log_var, empty, 4)
    assert float(zero.detach()) == 0.0 and zero.requires_grad
    assert float(cross_entropy(logits, empty).detach()) == 0.0


def test_regression_nll_vs_distributions():
    g = torch.Generator().manual_seed(4)
    loc = torch.rand(2, 1, 3, 4, generator=g) * 5 + 0.1
    log_scale = torch.randn(2, 1, 3, 4, generator=g) * 0.5
    target = torch.rand(2, 3, 4, generator=g) * 5
    valid = torch.rand(2, 3, 4, generator=g) > 0.3
    target[~valid] = float("nan")  # invalid pixels must never reach the loss
    mu, s, y = loc[:, 0][valid], log_scale[:, 0][valid], target[valid]
    want_g = -Normal(mu, s.exp()).log_prob(y).mean() - 0.5 * math.log(2 * math.pi)
    want_l = -Laplace(mu, s.exp()).log_prob(y).mean() - math.log(2)
    torch.testing.assert_close(gaussian_nll(loc, log_scale, target, valid), want_g)
    torch.testing.assert_close(laplace_nll(loc, log_scale, target, valid), want_l)
    torch.testing.assert_close(l1_loss(loc, target, valid), (mu - y).abs().mean())
    # s = log sigma^2 form of the Gaussian loss
    s2 = 2 * s
    torch.testing.assert_close(
        gaussian_nll(loc, log_scale, target, valid),
        (0.5 * (-s2).exp() * (y - mu) ** 2 + 0.5 * s2).mean(),
    )
    torch.testing.assert_close(
        predictive_variance(log_scale, "gaussian"), Normal(0, log_scale.exp()).variance
    )
    torch.testing.assert_close(
        predictive_variance(log_scale, "laplace"), Laplace(0, log_scale.exp()).variance
    )
    with pytest.raises(ConfigError):
        predictive_variance(log_scale, "l1")


def test_regression_gradients_finite_with_nan_outside_mask():
    loc = torch.full((1, 1, 2, 2), 2.0, requires_grad=True)
    log_scale = torch.zeros(1, 1, 2, 2, requires_grad=True)
    target = torch.tensor([[[1.0, float("nan")], [3.0, 0.0]]])
    valid = torch.tensor([[[True, False], [True, False]]])
    (
        laplace_nll(loc, log_scale, target, valid) + gaussian_nll(loc, log_scale, target, valid)
    ).backward()
    assert torch.isfinite(loc.grad).all() and loc.grad[0, 0, 0, 1] == 0
    none = torch.zeros_like(valid)
    assert float(laplace_nll(loc, log_scale, target, none).detach()) == 0.0
    with pytest.raises(ValueError, match="shape mismatch"):
        l1_loss(loc, target[:, :1], valid)


def test_uncertainty_weighting_values_and_gradients():
    """Kendall, Gal & Cipolla 2018: exp(-s) L + s/2 (classification), exp(-s) L/2 + s/2
    (regression), s = log sigma^2; a likelihood task enters with weight 1."""
    w = UncertaintyWeighting({"seg": "classification", "depth": "regression", "nll": "likelihood"})
    with torch.no_grad():
        w.log_vars.copy_(torch.tensor([0.3, -0.4]))
    Ls, Ld, Ln = torch.tensor(1.7), torch.tensor(0.6), torch.tensor(-0.8)
    total = w({"seg": Ls, "depth": Ld, "nll": Ln})
    s1, s2 = (10 * math.tanh(v / 10) for v in (0.3, -0.4))
    want = math.exp(-s1) * 1.7 + 0.5 * s1 + 0.5 * (math.exp(-s2) * 0.6 + s2) - 0.8
    assert float(total.detach()) == pytest.approx(want, rel=1e-6)
    total.backward()
    # stationary where exp(s) = 2 L (classification) and exp(s) = L (regression)
    with torch.no_grad():
        w.log_vars.copy_(torch.atanh(torch.log(torch.tensor([2 * 1.7, 0.6])) / 10) * 10)
    w.log_vars.grad = None
    w({"seg": Ls, "depth": Ld, "nll": Ln}).backward()
    torch.testing.assert_close(w.log_vars.grad, torch.zeros(2), atol=1e-6, rtol=0)
    fixed = UncertaintyWeighting({"seg": "classification", "depth": "regression"}, "fixed")
    assert list(fixed.parameters()) == []
    assert float(fixed({"seg": Ls, "depth": Ld})) == pytest.approx(2.3)
    with pytest.raises(KeyError):
        fixed({"seg": Ls})
    with pytest.raises(ValueError, match="non-negative"):
        UncertaintyWeighting({"seg": "classification"})({"seg": torch.tensor(-0.1)})


def test_learned_weights_stay_finite_when_the_depth_nll_goes_negative():
    """The defect of e^{-s} L + s on a Laplace NLL: where residuals and scales are small the NLL is
    negative and s runs to minus infinity. Train the joint criterion's weights (and a free depth
    scale) on a fit that keeps improving: every s_k must settle."""
    from seguncert.config import Config
    from seguncert.data.common import DatasetMeta
    from seguncert.losses.criterion import build_criterion

    cfg = Config()
    cfg.model.task, cfg.loss.class_weights, cfg.model.num_classes = "joint", "none", 3
    crit = build_criterion(cfg, DatasetMeta(task="joint", class_names=list("abc")))
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 8, 8, generator=g) + 1.0
    label = torch.randint(0, 3, (2, 8, 8), generator=g)
    log_scale = torch.zeros(2, 1, 8, 8, requires_grad=True)
    logits = torch.randn(2, 3, 8, 8, generator=g, requires_grad=True)
    opt = torch.optim.Adam([*crit.parameters(), log_scale, logits], lr=0.05)
    batch = {"label": label, "depth": target, "valid": label != 255,
             "depth_valid": torch.ones_like(target, dtype=torch.bool)}  # fmt: skip
    history = []
    for _ in range(3000):
        loc = (target + 0.01).unsqueeze(1)  # a near-perfect depth fit: |r| = 0.01 m
        out = {"logits": logits, "depth_loc": loc, "depth_log_scale": log_scale}
        loss, parts = crit(out, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(parts["log_var_seg"])
    assert parts["depth"] < 0  # the NLL did go negative
    assert all(math.isfinite(v) and abs(v) < 10 for v in history)
    assert abs(history[-1] - history[-500]) < 0.05  # settled, not drifting


def _autograd_hetero_nll(f, log_var, eps, target):
    """The obvious autograd composition the fused HeteroscedasticNLL must match."""
    x = torch.addcmul(f, torch.exp(0.5 * log_var), eps)
    idx = target.unsqueeze(0).unsqueeze(2).expand(eps.shape[0], -1, 1, -1, -1)
    log_p = x.gather(2, idx).squeeze(2) - torch.logsumexp(x, dim=2)
    return math.log(eps.shape[0]) - torch.logsumexp(log_p, dim=0)


@pytest.mark.parametrize("per_class", [False, True])
def test_fused_hetero_nll_value_and_gradients_match_autograd(per_class):
    from seguncert.losses.classification import HeteroscedasticNLL

    g = torch.Generator().manual_seed(7)
    B, C, H, W, T = 2, 4, 3, 5, 6
    f = (torch.randn(B, C, H, W, generator=g, dtype=torch.float64) * 3).requires_grad_()
    log_var = torch.randn(B, C if per_class else 1, H, W, generator=g, dtype=torch.float64)
    log_var.requires_grad_()
    eps = torch.randn(T, 1, C, H, W, generator=g, dtype=torch.float64)
    target = torch.randint(0, C, (B, H, W), generator=g)
    upstream = torch.rand(B, H, W, generator=g, dtype=torch.float64)

    got = HeteroscedasticNLL.apply(f, log_var, eps, target)
    (got * upstream).sum().backward()
    grads = f.grad.clone(), log_var.grad.clone()
    f.grad = log_var.grad = None
    want = _autograd_hetero_nll(f, log_var, eps, target)
    (want * upstream).sum().backward()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(grads[0], f.grad)
    torch.testing.assert_close(grads[1], log_var.grad)
