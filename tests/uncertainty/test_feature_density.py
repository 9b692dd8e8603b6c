"""Feature-space novelty (class-conditional Gaussian, tied covariance) against a direct numpy
reference, its storage beside a checkpoint, the deterministic scorer and the evaluation maps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from seguncert.data.common import DatasetMeta
from seguncert.errors import CheckpointError, ConfigError
from seguncert.evaluate.run import EvalConfig, SplitEval, make_sampler, stream_split
from seguncert.io.checkpoint import load_checkpoint, save_checkpoint
from seguncert.tasks import get_task
from seguncert.uncertainty.feature_density import (
    DensityFit,
    FeatureDensity,
    NoveltyScorer,
    deterministic_pass,
    fit_feature_density,
    load_density,
    resolve_stages,
    store_density,
)

from .conftest import ToyStaged

C = 4


def synthetic(seed=0, b=2, f=3, h=5, w=6):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(b, f, h, w, generator=g, dtype=torch.float64)
    labels = torch.randint(0, C - 1, (b, h, w), generator=g)  # class C-1 never appears
    feats += labels[:, None].double() * 1.5  # class-dependent shift
    labels[:, 0, :2] = 255
    return feats, labels


def numpy_reference(feats, labels, ridge):
    f = feats.movedim(1, -1).reshape(-1, feats.shape[1]).numpy()
    y = labels.reshape(-1).numpy()
    f, y = f[y != 255], y[y != 255]
    means = np.stack([f[y == c].mean(0) if (y == c).any() else np.zeros(f.shape[1])
                      for c in range(C)])  # fmt: skip
    centred = f - means[y]
    cov = centred.T @ centred / len(f)
    cov = cov + ridge * np.diag(cov).mean() * np.eye(len(cov))
    return means, cov, f, y


def numpy_distance(f, means, cov, present):
    inv = np.linalg.inv(cov)
    d = np.stack([np.einsum("nf,fg,ng->n", f - m, inv, f - m) for m in means[present]], 1)
    return d.min(1)


def test_fit_and_distances_match_a_direct_numpy_reference():
    feats, labels = synthetic()
    fit = DensityFit(C, [1], per_image=10_000)
    fit.update([feats], labels)
    d = fit.finish(ridge=1e-3, window=1)
    means, cov, f, y = numpy_reference(feats, labels, 1e-3)
    present = np.bincount(y, minlength=C) > 0
    assert not present[C - 1] and d.counts[C - 1] == 0
    np.testing.assert_allclose(d.means[0].numpy()[present], means[present], atol=1e-10)
    np.testing.assert_allclose(d.covs[0].numpy(), cov, atol=1e-10)
    probe, _ = synthetic(seed=7)
    u = d.distances([probe])[0]
    assert u.shape == (2, 5, 6)
    flat = probe.movedim(1, -1).reshape(-1, 3).numpy()
    ref = numpy_distance(flat, means, cov, present)  # absent class C-1 takes no part
    np.testing.assert_allclose(u.reshape(-1).numpy(), ref, rtol=1e-4, atol=1e-4)
    # every fitted pixel is held here (< HELD_PER_IMAGE per image): standardised on all of them
    own = numpy_distance(f, means, cov, present)
    assert float(d.score_mean[0]) == pytest.approx(own.mean(), rel=1e-4)
    assert float(d.score_std[0]) == pytest.approx(own.std(ddof=1), rel=1e-4)
    z = d.score([probe])
    np.testing.assert_allclose(z.reshape(-1).numpy(), (ref - own.mean()) / own.std(ddof=1),
                               rtol=1e-4, atol=1e-4)  # fmt: skip


def test_far_features_score_higher_and_levels_add_standardised():
    feats, labels = synthetic()
    fit = DensityFit(C, [1, 3], per_image=10_000)
    fit.update([feats, 2 * feats[:, :2]], labels)
    d = fit.finish()
    near, far = feats[:1, :, 2:3, 2:3], feats[:1, :, 2:3, 2:3] + 25.0
    one = FeatureDensity(d.stages[:1], d.means[:1], d.covs[:1], d.counts,
                         d.score_mean[:1], d.score_std[:1])  # fmt: skip
    assert float(one.score([far])) > float(one.score([near])) + 10
    u = d.distances([far, 2 * far[:, :2]])
    expected = sum((v - float(a)) / float(b) for v, a, b in zip(u, d.score_mean, d.score_std))
    torch.testing.assert_close(d.score([far, 2 * far[:, :2]]), expected)


def test_the_score_map_is_max_pooled_over_its_window():
    feats, labels = synthetic(h=9, w=11)
    fit = DensityFit(C, [1], per_image=10_000)
    fit.update([feats], labels)
    plain, pooled = fit.finish(window=1), fit.finish(window=3)
    z = plain.score([feats])
    ref = torch.nn.functional.max_pool2d(z[:, None], 3, stride=1, padding=1)[:, 0]
    torch.testing.assert_close(pooled.score([feats]), ref)
    assert (pooled.score([feats]) >= z).all() and not torch.equal(pooled.score([feats]), z)
    flat = feats.movedim(1, -1).reshape(-1, 3)  # pixel lists are not images: no pooling
    torch.testing.assert_close(pooled.score([flat]), plain.score([flat]))


def test_subsampling_caps_pixels_per_image_and_is_seeded():
    feats, labels = synthetic()
    a, b = DensityFit(C, [1], per_image=7, seed=3), DensityFit(C, [1], per_image=7, seed=3)
    a.update([feats], labels)
    b.update([feats], labels)
    assert float(a.counts.sum()) == 14  # 2 images x 7
    torch.testing.assert_close(a.sums[0], b.sums[0])
    c = DensityFit(C, [1], per_image=7, seed=4)
    c.update([feats], labels)
    assert not torch.equal(a.sums[0], c.sums[0])
    with pytest.raises(ConfigError, match="no labelled pixels"):
        DensityFit(C, [1]).finish()


def test_deterministic_pass_is_the_head_input_in_eval_mode(make_model, image):
    model = make_model(hetero=True).train()
    seen = {}
    hook = model.stages[-1].register_forward_pre_hook(lambda m, a: seen.update(x=a[0]["x"]))
    out = deterministic_pass(model, image, resolve_stages(model, [-2]))
    hook.remove()
    assert all(m.training for m in model.modules())  # flags restored
    model.eval()
    with torch.no_grad():
        ref = model(image)["logits"]
    torch.testing.assert_close(out["features"][0], seen["x"])
    torch.testing.assert_close(out["logits"], ref)
    maps = NoveltyScorer(model)(image)
    torch.testing.assert_close(maps["max_logit"], -ref.amax(1))
    torch.testing.assert_close(maps["energy"], -torch.logsumexp(ref, 1))
    assert resolve_stages(model, [-2, 0, 1]) == [0, 1]
    for bad in ([-1], [2], [5], []):
        with pytest.raises(ConfigError, match="feature stages"):
            resolve_stages(model, bad)


def _batches(n=3, seed=0, ood=False):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        label = torch.randint(0, C, (2, 6, 7), generator=g)
        batch = {"image": torch.randn(2, 3, 6, 7, generator=g), "label": label}
        if ood:
            mask = torch.zeros(2, 6, 7, dtype=torch.bool)
            mask[:, 2:4, 2:5] = True
            batch["image"][:, :, 2:4, 2:5] *= 10.0  # foreign-looking pixels
            batch["label"][mask] = 255
            batch["ood"] = mask
        out.append(batch)
    return out


def back_window(folder):
    from safetensors.torch import load_file

    entry = json.loads((folder / "best.json").read_text())["feature_density"]
    return int(load_file(str(folder / entry["file"]))["window"][0])


def _checkpoint(tmp_path, model):
    meta = DatasetMeta(class_names=[f"c{i}" for i in range(C)], palette=[[0, 0, 0]] * C)
    save_checkpoint(tmp_path, "best", model, meta=meta, config={}, calibration={"kind": "x"})
    return load_checkpoint(tmp_path, builder=lambda spec: ToyStaged(classes=C))


def test_store_and_load_round_trip_next_to_the_checkpoint(make_model, tmp_path):
    model, info = _checkpoint(tmp_path, make_model(classes=C))
    density = fit_feature_density(model, _batches(), C, stages=(-2,), per_image=20)
    entry = store_density(info["sidecar_path"], info, density, split="train")
    sidecar = json.loads((tmp_path / "best.json").read_text())
    assert sidecar["feature_density"] == entry and sidecar["calibration"] == {"kind": "x"}
    assert entry["file"].startswith("best.density.") and (tmp_path / entry["file"]).is_file()
    assert entry["pixels"] == 3 * 2 * 20 and entry["stages"] == [1] and back_window(tmp_path) == 5
    model, info = load_checkpoint(tmp_path, builder=lambda spec: ToyStaged(classes=C))
    back = load_density(info)
    for k, v in density.to_tensors().items():
        torch.testing.assert_close(back.to_tensors()[k], v)
    # a refit replaces the file the sidecar names, and the old one goes
    again = fit_feature_density(model, _batches(seed=1), C, stages=(-2,), per_image=20)
    new = store_density(info["sidecar_path"], info, again)
    assert new["file"] != entry["file"] and not (tmp_path / entry["file"]).exists()
    model, info = load_checkpoint(tmp_path, builder=lambda spec: ToyStaged(classes=C))
    path = tmp_path / new["file"]
    path.write_bytes(path.read_bytes()[:-3] + b"xyz")
    with pytest.raises(CheckpointError, match="does not match the SHA-256"):
        load_density(info)
    with pytest.raises(CheckpointError, match="fitted on other weights"):
        load_density({**info, "weights_sha256": "0" * 64})
    assert load_density({k: v for k, v in info.items() if k != "feature_density"}) is None


def test_evaluation_novelty_table_gains_the_deterministic_maps(make_model):
    model = make_model(classes=C)
    density = fit_feature_density(model, _batches(), C, stages=(-2,), per_image=50, window=1)
    meta = DatasetMeta(class_names=[f"c{i}" for i in range(C)], palette=[[0, 0, 0]] * C)
    cfg = EvalConfig(mc_samples=2, progress=False)
    evals = SplitEval(get_task("segmentation"), meta, {}, cfg)
    sampler = make_sampler(model, cfg)
    stream_split(sampler, _batches(ood=True), evals, "cpu", cfg, NoveltyScorer(model, density))
    metrics, _ = evals.compute()
    table = {r["map"]: r for r in metrics["novelty"]["table"]}
    assert {"feature_density", "max_logit", "energy", "epistemic", "max_prob"} <= set(table)
    assert table["feature_density"]["auroc"] > 0.9  # shifted inputs are far from every class
    assert table["feature_density"]["mean_ood"] > table["feature_density"]["mean_id"]


def test_evaluate_fit_density_stores_it_and_reports_the_maps(tmp_path, capsys):
    """tools/evaluate.py --fit-density on a small real network: the density is fitted on the
    training split, only the sidecar's feature_density entry is added, and the novelty table
    gains the three deterministic maps."""
    from pathlib import Path

    from seguncert.cli.evaluate import main
    from seguncert.config import load_config
    from seguncert.data.build import dataset_meta
    from seguncert.models.base import model_spec
    from seguncert.models.build import model_from_spec

    repo = Path(__file__).resolve().parents[2]
    overrides = ["data.synthetic_train=3", "data.synthetic_val=2", "data.synthetic_size=[64,64]"]
    cfg = load_config(repo / "configs" / "synthetic_demo.yaml", overrides)
    torch.manual_seed(0)
    model = model_from_spec(model_spec("segnet_basic", width=8, num_classes=11))
    run = tmp_path / "run"
    save_checkpoint(run, "best", model, meta=dataset_meta(cfg), config=cfg, calibration=None)
    before = json.loads((run / "best.json").read_text())
    args = ["--checkpoint", run, "--out", tmp_path / "eval", "--fit-density", "--ood-paste", "0",
            "--mc-samples", "2", "--limit", "2", "--examples", "0", "--no-progress"]  # fmt: skip
    assert main([str(a) for a in args]) == 0
    assert "feature density: 6000 pixels of 3 train frames" in capsys.readouterr().out
    after = json.loads((run / "best.json").read_text())
    assert {k: v for k, v in after.items() if k != "feature_density"} == before
    assert after["feature_density"]["stages"] == [5]  # SegNet-Basic's stride-4 decoder map
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    maps = {r["map"] for r in m["novelty"]["table"]}
    assert {"feature_density", "max_logit", "energy", "epistemic", "max_prob"} <= maps
