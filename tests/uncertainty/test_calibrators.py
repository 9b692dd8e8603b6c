"""Post-hoc calibrators on the MC predictive: serialisation, application, and NLL fits that
recover known miscalibrations (synthetic logits with labels drawn from a known softmax)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from seguncert.errors import CheckpointError, ConfigError, DataError
from seguncert.uncertainty import calibrator_fit
from seguncert.uncertainty.calibrator_fit import fit_calibrator, mc_predictive, predictive_nll
from seguncert.uncertainty.calibrators import KINDS, calibrator_from_dict
from seguncert.uncertainty.temperature import fit_temperature

PIXEL_KINDS = [k for k in KINDS if not KINDS[k].spatial]


def _random_calibrator(kind: str, c: int, seed: int = 0):
    """A calibrator of ``kind`` with random, non-neutral parameters."""
    g = torch.Generator().manual_seed(seed)
    cls = KINDS[kind]
    params = {}
    for k, v in cls.initial_params(c).items():
        noise = 0.3 * torch.randn(v.shape, generator=g, dtype=torch.float64)
        params[k] = v * noise.exp() if k in cls.positive else v + noise
    return cls(c, params)


def _sample_labels(true: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Labels (B, H, W) drawn from softmax(true) with true (B, C, H, W)."""
    b, c, h, w = true.shape
    p = torch.softmax(true.permute(0, 2, 3, 1).reshape(-1, c), 1)
    return torch.multinomial(p, 1, generator=g).view(b, h, w)


def _data(b: int, c: int, h: int, w: int, seed: int, scale: float = 2.0):
    g = torch.Generator().manual_seed(seed)
    true = torch.randn(b, c, h, w, generator=g) * scale
    return true, _sample_labels(true, g)


def _batch(logits: torch.Tensor, labels: torch.Tensor, log_var=None) -> dict:
    """One batch dict; logits (B, C, H, W) become T = 1 MC samples."""
    logits = logits[None] if logits.dim() == 4 else logits
    out = {"logits": logits.float(), "labels": labels}
    if log_var is not None:
        out["log_var"] = log_var
    return out


@pytest.mark.parametrize("kind", list(KINDS))
def test_round_trip_is_exact(kind):
    cal = _random_calibrator(kind, 4, seed=1)
    d = json.loads(json.dumps(cal.to_dict()))
    assert {d["kind"], d["task"], d["num_classes"]} == {kind, "segmentation", 4}
    assert "version" in d and set(d["params"]) == set(cal.params)
    back = calibrator_from_dict(d, num_classes=4)
    assert type(back) is type(cal)
    g = torch.Generator().manual_seed(2)
    z, base = torch.randn(2, 2, 4, 5, 6, generator=g), torch.randn(2, 2, 4, 5, 6, generator=g)
    assert torch.equal(back(z, base=base), cal(z, base=base))
    assert kind == "identity" or not torch.equal(cal(z, base=base), z)
    assert "\n" not in cal.describe() and cal.describe()


def _good() -> dict:
    return _random_calibrator("vector", 3).to_dict()


@pytest.mark.parametrize(
    "mutate, num_classes, task",
    [
        (lambda d: d, 4, "segmentation"),  # other class count
        (lambda d: d, 3, "depth"),
        (lambda d: d.update(task="depth"), 3, "segmentation"),
        (lambda d: d.update(kind="platt"), 3, "segmentation"),
        (lambda d: d.update(version=99), 3, "segmentation"),
        (lambda d: d["params"].pop("b"), 3, "segmentation"),
        (lambda d: d["params"].update(b=[1.0, 2.0]), 3, "segmentation"),
        (lambda d: d["params"].update(b=["x", 1.0, 2.0]), 3, "segmentation"),
        (lambda d: d["params"].update(b=[float("nan"), 1.0, 2.0]), 3, "segmentation"),
        (lambda d: d["params"].update(c=[0.0]), 3, "segmentation"),
        (lambda d: d.update(params=[1, 2]), 3, "segmentation"),
    ],
)
def test_from_dict_refuses_in_one_line(mutate, num_classes, task):
    d = _good()
    mutate(d)
    with pytest.raises(CheckpointError) as e:
        calibrator_from_dict(d, num_classes=num_classes, task=task)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "kind, params",
    [
        ("temperature", {"tau": -1.0}),
        ("class_temperature", {"tau": [1.0, 0.0, 1.0]}),
        ("local_temperature", {"w1": 0.0, "b1": 0.0, "w2": 0.0, "b2": 0.0}),
    ],
)
def test_from_dict_refuses_bad_values(kind, params):
    d = {**KINDS[kind](3).to_dict(), "params": params}
    with pytest.raises(CheckpointError, match=kind):
        calibrator_from_dict(d, num_classes=3)
    assert calibrator_from_dict(KINDS[kind](3).to_dict(), 3).kind == kind
    with pytest.raises(CheckpointError):
        calibrator_from_dict("not a dict", 3)


@pytest.mark.parametrize("kind", PIXEL_KINDS)
def test_pixel_kinds_agree_on_flat_and_map_layouts(kind):
    cal = _random_calibrator(kind, 5, seed=3)
    z = torch.randn(3, 5, 4, 6, generator=torch.Generator().manual_seed(4))
    flat = z.permute(0, 2, 3, 1).reshape(-1, 5)
    out = cal(z)
    torch.testing.assert_close(out.permute(0, 2, 3, 1).reshape(-1, 5), cal(flat))
    torch.testing.assert_close(cal(torch.stack([z, 2 * z]))[1], cal(2 * z))  # (T, B, C, H, W)
    assert out.dtype == z.dtype


def test_local_temperature_uses_base_and_needs_maps():
    cal = _random_calibrator("local_temperature", 4, seed=5)
    g = torch.Generator().manual_seed(6)
    f, eps = torch.randn(3, 2, 4, 5, 5, generator=g), torch.randn(3, 2, 4, 5, 5, generator=g)
    tau = cal.scale_map(f.reshape(6, 4, 5, 5)).view(3, 2, 1, 5, 5)
    assert (tau > 0).all() and tau.std() > 0
    torch.testing.assert_close(cal(f + eps, base=f), (f + eps) / tau)
    torch.testing.assert_close(cal(f)[1], cal(f[1]))
    with pytest.raises(DataError):
        cal(torch.randn(10, 4))
    with pytest.raises(DataError):
        cal(f, base=f[0])


@pytest.mark.parametrize("kind", list(KINDS))
def test_preserves_argmax_flag_is_honest(kind):
    z = torch.randn(4000, 6, generator=torch.Generator().manual_seed(7))
    changed = any(
        not torch.equal(
            _random_calibrator(kind, 6, s)(z[:, :, None, None]).argmax(1),
            z.argmax(1)[:, None, None],
        )
        for s in range(3)
    )
    assert changed != KINDS[kind].preserves_argmax


def test_temperature_matches_exact_newton_fit():
    true, y = _data(6, 5, 12, 12, seed=8)
    y[:, :3] = 255
    logits = 1.7 * true
    batches = [_batch(logits[i : i + 3], y[i : i + 3]) for i in (0, 3)]
    tau = float(fit_calibrator("temperature", batches).params["tau"])
    assert tau == pytest.approx(fit_temperature(logits, y), abs=1e-4)
    # T identical MC samples give the same predictive, so the same temperature
    stacked = [{**b, "logits": b["logits"].expand(3, -1, -1, -1, -1)} for b in batches]
    assert float(fit_calibrator("temperature", stacked).params["tau"]) == pytest.approx(
        tau, abs=1e-6
    )


def test_temperature_recovers_overconfidence_and_lowers_nll():
    true, y = _data(20, 6, 32, 32, seed=9)
    batch = [_batch(2.5 * true, y)]
    cal = fit_calibrator("temperature", batch)
    assert float(cal.params["tau"]) == pytest.approx(2.5, rel=0.04)
    raw = predictive_nll(KINDS["identity"](6), batch)
    assert predictive_nll(cal, batch) < raw - 0.1


def test_chunked_objective_is_exact(monkeypatch):
    true, y = _data(2, 4, 10, 10, seed=10)
    batch = [_batch(torch.stack([1.5 * true, 2.0 * true]), y)]
    whole = fit_calibrator("vector", batch)
    cal = _random_calibrator("dirichlet", 4)
    nll_whole = predictive_nll(cal, batch)
    monkeypatch.setattr(calibrator_fit, "_BUDGET", 64)  # blocks of 8 pixels
    assert predictive_nll(cal, batch) == pytest.approx(nll_whole, abs=1e-12)
    torch.testing.assert_close(fit_calibrator("vector", batch).params["a"], whole.params["a"])


def _prior_shift(seed: int, shift: float, w: torch.Tensor):
    true, y = _data(16, len(w), 32, 32, seed=seed)
    return [_batch(true + shift * w.log().view(1, -1, 1, 1), y)]


def test_logit_adjust_and_vector_undo_a_class_prior_shift():
    w = torch.tensor([0.2, 0.5, 1.0, 3.0, 6.0])
    train, held = _prior_shift(11, 1.0, w), _prior_shift(12, 1.0, w)
    temp = predictive_nll(fit_calibrator("temperature", train), held)
    adjust = fit_calibrator("logit_adjust", train, class_weights=w.tolist())
    vector = fit_calibrator("vector", train)
    assert predictive_nll(adjust, held) < temp - 0.02
    assert predictive_nll(vector, held) < temp - 0.02
    assert float(adjust.params["tau_w"]) == pytest.approx(1.0, abs=0.05)
    assert float(adjust.params["tau"]) == pytest.approx(1.0, abs=0.05)
    half = fit_calibrator("logit_adjust", _prior_shift(13, 0.5, w), class_weights=w.tolist())
    assert float(half.params["tau_w"]) == pytest.approx(0.5, abs=0.05)


def _distorted(seed: int, a: torch.Tensor, c0: torch.Tensor):
    true, y = _data(12, 4, 24, 24, seed=seed)
    log_p = torch.log_softmax(true, 1).movedim(1, -1)
    return [_batch((log_p @ a.T + c0).movedim(-1, 1), y)]


def test_dirichlet_undoes_a_linear_distortion_of_log_probs():
    g = torch.Generator().manual_seed(14)
    a = torch.eye(4) * 1.8 + 0.4 * torch.randn(4, 4, generator=g)
    c0 = torch.randn(4, generator=g)
    train, held = _distorted(15, a, c0), _distorted(16, a, c0)
    cal = fit_calibrator("dirichlet", train)
    identity = predictive_nll(KINDS["identity"](4), held)
    temp = predictive_nll(fit_calibrator("temperature", train), held)
    assert predictive_nll(cal, held) < min(identity, temp) - 0.02
    strong = fit_calibrator("dirichlet", train, odir_lambda=1e3, odir_mu=1e3)

    def offdiag(cal):
        w = cal.params["W"]
        return float((w - torch.diag(w.diagonal())).norm())

    assert offdiag(strong) < 0.1 * offdiag(cal)
    assert float(strong.params["b"].norm()) < 0.1 * float(cal.params["b"].norm())


def _spatial_miscalibration(seed: int):
    """Per-pixel logits scaled by a factor that falls smoothly from 3 (left) to 0.4 (right)."""
    true, y = _data(8, 4, 24, 24, seed=seed)
    factor = torch.logspace(math.log10(3.0), math.log10(0.4), 24).view(1, 1, 1, -1)
    return [_batch(true * factor, y)]


def test_local_temperature_beats_a_global_temperature():
    train, held = _spatial_miscalibration(17), _spatial_miscalibration(18)
    glob = fit_calibrator("temperature", train)
    local = fit_calibrator("local_temperature", train, max_iter=100)
    assert predictive_nll(local, held) < predictive_nll(glob, held) - 0.05
    z = held[0]["logits"][0]
    assert torch.equal(local(z).argmax(1), z.argmax(1))
    cls = KINDS["local_temperature"]
    start = cls(4, cls.initial_params(4, temperature=2.0, hidden=5, seed=1))
    torch.testing.assert_close(
        start.scale_map(z.double()), torch.full((1, 1, 24, 24), 2.0).double().expand(8, -1, -1, -1)
    )


def _noisy_batch(seed: int, log_var: float):
    true, y = _data(4, 4, 16, 16, seed=seed)
    f = torch.stack([true, true + 0.3 * torch.randn_like(true)])
    return [_batch(f, y, log_var=torch.full((2, 4, 1, 16, 16), log_var))]


def test_noise_with_zero_sigma_is_the_noise_free_objective():
    batch = _noisy_batch(19, log_var=-200.0)
    cal = _random_calibrator("vector", 4)
    assert predictive_nll(cal, batch, noise_samples=8) == pytest.approx(
        predictive_nll(cal, batch, noise_samples=0), abs=1e-9
    )
    free = fit_calibrator("temperature", batch)
    noisy = fit_calibrator("temperature", batch, noise_samples=8)
    assert float(noisy.params["tau"]) == pytest.approx(float(free.params["tau"]), abs=1e-6)


def test_large_noise_flattens_the_predictive_and_the_fit_compensates():
    ident = KINDS["identity"](4)
    entropies = []
    for log_var in (-200.0, 0.0, 4.0):
        b = _noisy_batch(20, log_var)[0]
        p = mc_predictive(ident, b["logits"], b["log_var"], noise_samples=16)
        entropies.append(float(-torch.xlogy(p, p).sum(1).mean()))
    assert entropies[0] < entropies[1] - 0.05 < entropies[2] - 0.1
    assert entropies[2] > 0.9 * math.log(4)
    batch = _noisy_batch(20, 1.0)  # labels follow the noise-free logits
    tau = float(fit_calibrator("temperature", batch, noise_samples=16).params["tau"])
    assert tau < 0.9 * float(fit_calibrator("temperature", batch).params["tau"])
    assert predictive_nll(ident, batch, 16) > predictive_nll(ident, batch, 0)


def test_mc_predictive_matches_a_direct_noise_integral():
    f = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]]).view(2, 1, 3, 1, 1)
    log_var = torch.tensor([1.0, -1.0]).view(2, 1, 1, 1, 1)
    cal = _random_calibrator("class_temperature", 3)
    p = mc_predictive(cal, f, log_var, noise_samples=4000, seed=3)[0, :, 0, 0]
    g = torch.Generator().manual_seed(123)
    eps = torch.randn(200_000, 3, generator=g)
    sigma = torch.exp(0.5 * log_var).view(2, 1, 1)
    z = f.view(2, 1, 3) + sigma * eps  # (T, draws, C)
    direct = torch.softmax(z / cal.params["tau"].float(), -1).mean((0, 1))
    torch.testing.assert_close(p, direct, atol=0.01, rtol=0)


def test_predictive_nll_is_minus_log_mc_predictive():
    batch = _noisy_batch(21, 0.5)[0]
    batch["labels"][:, :4] = 255
    cal = _random_calibrator("local_temperature", 4, seed=2)
    p = mc_predictive(cal, batch["logits"], batch["log_var"]).double()
    y = batch["labels"]
    keep = y != 255
    direct = -p.gather(1, y.clamp(max=3)[:, None])[:, 0][keep].log().mean()
    assert predictive_nll(cal, [batch]) == pytest.approx(float(direct), abs=1e-5)


def test_fit_refuses_bad_input_in_one_line():
    batch = _noisy_batch(22, 0.0)
    cases = [
        (ConfigError, lambda: fit_calibrator("platt", batch)),
        (ConfigError, lambda: fit_calibrator("temperature", batch, odir_lambda=1.0)),
        (ConfigError, lambda: fit_calibrator("logit_adjust", batch)),
        (ConfigError, lambda: fit_calibrator("logit_adjust", batch, class_weights=[1.0, 2.0])),
        (DataError, lambda: fit_calibrator("temperature", [])),
        (DataError, lambda: fit_calibrator("temperature", [{"logits": torch.zeros(2, 4, 5, 5)}])),
        (
            DataError,
            lambda: fit_calibrator("temperature", [{**batch[0], "labels": batch[0]["labels"] + 9}]),
        ),
        (
            DataError,
            lambda: fit_calibrator(
                "temperature", [{**batch[0], "log_var": torch.zeros(2, 4, 2, 16, 16)}]
            ),
        ),
        (
            DataError,
            lambda: fit_calibrator(
                "temperature", [{**batch[0], "labels": torch.full((4, 16, 16), 255)}]
            ),
        ),
        (DataError, lambda: predictive_nll(KINDS["identity"](3), batch)),
    ]
    for error, call in cases:
        with pytest.raises(error) as e:
            call()
        assert "\n" not in str(e.value)
