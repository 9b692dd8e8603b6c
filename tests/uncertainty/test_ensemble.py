"""Deep ensembles: M members x T dropout samples fused into one set of maps, against a direct
computation from every member's samples, and the between-member / dropout split."""

from __future__ import annotations

import pytest
import torch

from seguncert.errors import CheckpointError
from seguncert.uncertainty.ensemble import EnsembleSampler, check_members
from seguncert.uncertainty.sampler import MCSampler


def _entropy(p: torch.Tensor, dim: int) -> torch.Tensor:
    return -torch.xlogy(p, p).sum(dim)


def test_maps_equal_a_direct_computation_over_all_samples(make_model, image):
    members = [make_model(seed=s) for s in (0, 1, 2)]
    ens = EnsembleSampler(members, samples=4, seed=3)(image)
    per_member = [
        MCSampler(m, samples=4, seed=3 + 1009 * i, return_samples=True)(image)["samples"]
        for i, m in enumerate(members)
    ]
    p = torch.stack(per_member)  # (M, T, B, C, H, W)
    p_bar = p.mean((0, 1))
    total = _entropy(p_bar, 1)
    aleatoric = _entropy(p, 3).mean((0, 1))
    members_part = total - _entropy(p.mean(1), 2).mean(0)
    torch.testing.assert_close(ens["probs"], p_bar, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ens["entropy"], total, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ens["aleatoric"], aleatoric, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        ens["epistemic"], (total - aleatoric).clamp_min(0), atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(
        ens["epistemic_members"], members_part.clamp_min(0), atol=1e-5, rtol=1e-5
    )
    split = ens["epistemic_members"] + ens["epistemic_dropout"]
    torch.testing.assert_close(split, ens["epistemic"], atol=1e-6, rtol=0)
    assert float(ens["epistemic_members"].mean()) > 0  # different weights disagree


def test_one_member_is_the_mc_sampler_and_equal_members_agree(make_model, image):
    model = make_model(seed=0)
    one = EnsembleSampler([model], samples=5, seed=7)(image)
    ref = MCSampler(model, samples=5, seed=7)(image)
    for k in ref:
        torch.testing.assert_close(one[k], ref[k])
    twins = EnsembleSampler([model, make_model(seed=0)], samples=3, seed=1)(image)
    assert float(twins["epistemic_members"].max()) < 0.05  # same weights: only mask noise


def test_depth_members_split(make_model, image):
    members = [make_model(seed=s, task="depth") for s in (0, 1)]
    out = EnsembleSampler(members, samples=3)(image)
    total = out["epistemic_var"]
    torch.testing.assert_close(out["depth_members_var"] + out["depth_dropout_var"], total)


def test_members_must_match():
    a = {"kind": "segmentation", "meta": {"class_names": ["a", "b"]}, "sidecar_path": "a"}
    check_members([a, dict(a)])
    with pytest.raises(CheckpointError, match="task"):
        check_members([a, {**a, "kind": "depth"}])
    with pytest.raises(CheckpointError, match="class_names"):
        check_members([a, {**a, "meta": {"class_names": ["a"]}}])
