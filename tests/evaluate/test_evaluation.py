"""evaluate_checkpoint on a tiny saved checkpoint: files, schema, equality with a direct
computation on the same predictions, calibration, depth / joint sections."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix, jaccard_score, roc_auc_score
from torchmetrics.functional.classification import multiclass_calibration_error

from seguncert.config import Config, ModelConfig
from seguncert.data.common import DatasetMeta
from seguncert.data.transforms import build_eval_transform
from seguncert.errors import CheckpointError, ConfigError, DataError
from seguncert.evaluate.calibration import calibrate_and_store, split_in_order
from seguncert.evaluate.run import EvalConfig, evaluate_checkpoint
from seguncert.io.checkpoint import load_checkpoint, save_checkpoint
from seguncert.models.build import build_model
from seguncert.uncertainty.calibrators import KINDS
from seguncert.uncertainty.checkpoint_calibration import checkpoint_calibrator
from seguncert.uncertainty.sampler import MCSampler

NAMES = ["road", "car", "sky", "tree"]
PALETTE = [[128, 64, 128], [64, 0, 128], [128, 128, 128], [128, 128, 0]]
H, W = 40, 56  # eval pads to 64 x 64: predictions must be cropped back
SEG_FILES = {
    "metrics.json",
    "calibration_per_class.md",
    "calibration_per_class.csv",
    "reliability.png",
    "reliability_per_class.png",
    "precision_vs_uncertainty.png",
    "examples.png",
    "report.html",
}
REQUIRED = (
    "miou per_class_iou ece mce classwise_ece mean_classwise_ece nll brier pavpu uncertainty "
    "pixel_accuracy class_accuracy mc_samples calibration split num_images num_pixels"
).split()


class TinyScenes(torch.utils.data.Dataset):
    """Blocky random images; labels = ``model``'s deterministic prediction except on its least
    confident quarter of pixels (random there), so errors follow uncertainty; 255 on top rows."""

    def __init__(self, model, n=4, task="segmentation"):
        self.transform = build_eval_transform()
        rng = np.random.default_rng(0)
        small = rng.integers(0, 255, (n, H // 8, W // 8, 3)).astype(np.uint8)
        self.images = small.repeat(8, 1).repeat(8, 2)
        self.images = (self.images.astype(int) + rng.integers(-20, 20, self.images.shape)).clip(
            0, 255
        )
        self.images = self.images.astype(np.uint8)
        self.labels, self.depths = [], []
        with torch.no_grad():
            for img in self.images:
                x = self.transform({"image": img})["image"][None]
                out = model.eval()(x)
                lab = None
                if "logits" in out:
                    conf, lab = out["logits"][0, :, :H, :W].softmax(0).max(0)
                    lab, conf = lab.numpy(), conf.numpy()
                    # the least confident quarter of the pixels gets random labels
                    noise = conf < np.quantile(conf, 0.25)
                    lab = np.where(noise, rng.integers(0, len(NAMES), (H, W)), lab)
                    lab[:3] = 255
                    self.labels.append(lab.astype(np.int64))
                self.depths.append(rng.uniform(0.5, 9.5, (H, W)).astype(np.float32))
        self.task = task

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        lab = self.labels[i] if self.labels else np.zeros((H, W), np.int64)
        s = {"image": self.images[i], "name": f"frame{i}"}
        if self.task in ("segmentation", "joint"):
            s["label"] = lab
        valid = lab != 255
        if self.task in ("depth", "joint"):
            s["depth"] = self.depths[i]
            s["depth_valid"] = np.ones((H, W), bool)
            valid = s["depth_valid"] if self.task == "depth" else valid
        s["valid"] = valid
        return self.transform(s)


def make_checkpoint(root, task="segmentation", heteroscedastic=True, concrete=False):
    torch.manual_seed(0)
    cfg = Config()
    cfg.model = ModelConfig(
        arch="segnet_basic",
        width=8,
        num_classes=len(NAMES),
        task=task,
        heteroscedastic=heteroscedastic,
        concrete_dropout=concrete,
    )
    model = build_model(cfg.model)
    with torch.no_grad():  # larger logits than at init: a confident, non-uniform classifier
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d) and m.out_channels == len(NAMES):
                m.weight.mul_(8.0)
    meta = DatasetMeta(task=task, class_names=NAMES, palette=PALETTE, min_depth=0.5, max_depth=10)
    save_checkpoint(root, "best", model, meta=meta, config=cfg)
    return load_checkpoint(root)


def cfg(**kw) -> EvalConfig:
    return EvalConfig(**{"mc_samples": 3, "examples": 2, "progress": False, **kw})


class Args:
    """The evaluate tool's calibration arguments."""

    def __init__(self, calibrate="temperature", split="val", fraction=0.5):
        self.calibrate, self.split, self.calibration_split = calibrate, split, None
        self.calibration_fraction, self.data_root = fraction, None


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    model, info = make_checkpoint(root / "run")
    calibrator = KINDS["temperature"](len(NAMES), {"tau": 1.3})
    loader = torch.utils.data.DataLoader(TinyScenes(model), batch_size=2)
    metrics = evaluate_checkpoint(model, info, loader, root / "eval", cfg(), calibrator)
    return model, info, loader, metrics, root


def test_writes_every_file_and_key(seg_run):
    _, _, _, metrics, root = seg_run
    out = root / "eval"
    assert SEG_FILES <= {p.name for p in out.iterdir()}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left
    for name in SEG_FILES - {"metrics.json"}:
        assert (out / name).stat().st_size > 100
    saved = json.loads((out / "metrics.json").read_text())
    for key in REQUIRED:
        assert key in saved, key
    for key in ("miou", "ece", "mce", "mean_classwise_ece", "nll", "brier", "pixel_accuracy"):
        assert math.isfinite(saved[key]), key
    assert list(saved["per_class_iou"]) == NAMES and list(saved["classwise_ece"]) == NAMES
    assert set(saved["uncertainty"]) == {
        "entropy",
        "aleatoric",
        "epistemic",
        "prob_var",
        "logit_var",
    }
    for m in saved["uncertainty"].values():
        assert 0 <= m["auroc"] <= 1 and 0 <= m["aupr"] <= 1 and 0 <= m["aurc"] <= 1
    pav = saved["pavpu"]
    assert 0 <= pav["value"] <= 1 and 10 < len(pav["sweep"]["pavpu"]) <= 300
    # default threshold = the epistemic map's mean, resolved by the zoomed histogram
    mean_mi = saved["uncertainty"]["epistemic"]["mean"]
    assert pav["threshold"] == pytest.approx(mean_mi, rel=0.05, abs=1e-6)
    assert saved["num_images"] == 4 and saved["mc_samples"] == 3 and saved["split"] == "val"
    assert saved["num_pixels"] == 4 * (H - 3) * W
    csv_lines = (out / "calibration_per_class.csv").read_text().splitlines()
    assert csv_lines[0].startswith("class,support,") and len(csv_lines) == 1 + len(NAMES)
    md = (out / "calibration_per_class.md").read_text()
    assert all(f"| {n} |" in md for n in NAMES)


def test_html_report_is_self_contained(seg_run):
    """report.html parses, embeds every figure as a PNG data URI, links nothing outside
    itself, and shows the headline numbers and one table row per class."""
    import base64
    from html.parser import HTMLParser

    _, _, _, metrics, root = seg_run

    class Page(HTMLParser):
        def __init__(self):
            super().__init__()
            self.images, self.links, self.rows, self.text = [], [], 0, []

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag == "img":
                self.images.append(a.get("src", ""))
            for key in ("href", "src"):
                if key in a and not a[key].startswith("data:"):
                    self.links.append(a[key])
            if tag == "script":
                self.links.append("script")
            self.rows += tag == "tr"

        def handle_data(self, data):
            self.text.append(data)

    page = Page()
    page.feed((root / "eval" / "report.html").read_text())
    assert page.links == []
    figures = {"reliability.png", "reliability_per_class.png", "precision_vs_uncertainty.png",
               "examples.png"}  # fmt: skip
    assert len(page.images) == len(figures)
    for src in page.images:
        head, data = src.split(",", 1)
        assert head == "data:image/png;base64"
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    text = " ".join(page.text)
    assert f"{100 * metrics['miou']:.2f}%" in text and all(n in text for n in NAMES)
    assert page.rows >= 1 + len(NAMES)


def test_metrics_equal_direct_computation(seg_run):
    """Same images, batches, seed and temperature -> same probabilities; recompute the metrics
    with sklearn / torchmetrics on the cropped arrays."""
    model, _, loader, metrics, _ = seg_run
    assert metrics["calibration"] == "temperature tau=1.3"
    sampler = MCSampler(model, 3, seed=0, temperature=1.3)
    probs, labels, unc = [], [], {"entropy": [], "epistemic": []}
    for batch in loader:
        out = sampler(batch["image"])
        for i, (h, w) in enumerate(batch["orig_size"].tolist()):
            keep = batch["label"][i, :h, :w] != 255
            probs.append(out["probs"][i, :, :h, :w][:, keep].T)
            labels.append(batch["label"][i, :h, :w][keep])
            for k, v in unc.items():
                v.append(out[k][i, :h, :w][keep])
    p, y = torch.cat(probs), torch.cat(labels)
    pred = p.argmax(1).numpy()
    iou = jaccard_score(y.numpy(), pred, average=None, labels=range(len(NAMES)), zero_division=0)
    present = np.isin(range(len(NAMES)), np.union1d(y.numpy(), pred))
    assert metrics["miou"] == pytest.approx(iou[present].mean(), abs=1e-9)
    assert metrics["pixel_accuracy"] == pytest.approx((pred == y.numpy()).mean(), abs=1e-9)
    cm = confusion_matrix(y.numpy(), pred, labels=range(len(NAMES)))
    assert metrics["confusion"] == cm.tolist()
    ece = multiclass_calibration_error(p, y, num_classes=len(NAMES), n_bins=15, norm="l1")
    assert metrics["ece"] == pytest.approx(float(ece), abs=1e-5)
    nll = -torch.log(p.double().gather(1, y[:, None]).clamp_min(1e-12)).mean()
    assert metrics["nll"] == pytest.approx(float(nll), rel=1e-5)
    for k, v in unc.items():  # histogram AUROC (ties within a fine log bin) vs exact
        auroc = roc_auc_score(pred != y.numpy(), torch.cat(v).numpy())
        assert metrics["uncertainty"][k]["auroc"] == pytest.approx(auroc, abs=2e-3), k
    # The fixture's errors sit where the model is least confident: the maps must carry that.
    assert 0.5 < metrics["pixel_accuracy"] < 0.95
    assert metrics["uncertainty"]["entropy"]["auroc"] > 0.6


def test_calibration_is_fitted_on_other_frames_stored_and_reused(tmp_path):
    """--calibrate: fitted on the first frames' MC samples, stored, applied; the rest scored."""
    model, info = make_checkpoint(tmp_path / "run")
    data = TinyScenes(model, n=6)
    config = cfg(mc_samples=4)
    calibrator, rest, fitted = calibrate_and_store(
        model, info, data, Args("temperature,vector"), config
    )
    assert set(fitted) == {"identity", "temperature", "vector"}
    assert calibrator.kind in ("temperature", "vector") and len(rest) == 3
    assert list(rest.indices) == [3, 4, 5]  # in order, disjoint from the calibration frames
    sidecar = json.loads(open(info["sidecar_path"]).read())
    assert sidecar["calibration"]["kind"] == calibrator.kind
    table = sidecar["calibration_fit"]["selection"]
    assert [r["kind"] for r in table] == ["identity", "temperature", "vector"]
    chosen = min(table[1:], key=lambda r: r["heldout_nll"])
    assert chosen["kind"] == calibrator.kind
    _, info2 = load_checkpoint(info["sidecar_path"])
    again = checkpoint_calibrator(info2)
    z = torch.randn(2, len(NAMES), 3, 3)
    torch.testing.assert_close(again(z), calibrator(z))
    loader = torch.utils.data.DataLoader(rest, batch_size=2)
    m = evaluate_checkpoint(model, info2, loader, tmp_path / "e", cfg(examples=0), again)
    assert m["num_images"] == 3 and m["calibration"] == calibrator.describe()
    assert "examples.png" not in {p.name for p in (tmp_path / "e").iterdir()}


def test_calibration_uses_the_mc_predictive_not_dropout_off_logits(tmp_path, monkeypatch):
    """The fit sees T different dropout samples per pixel (the old fit used one dropout-off
    pass, a different model from the one evaluated)."""
    from seguncert.evaluate import calibration

    model, info = make_checkpoint(tmp_path / "run")
    seen = {}
    real = calibration.fit_calibrator

    def spy(kind, batches, **kw):
        seen["logits"] = batches[0]["logits"]
        return real(kind, batches, **kw)

    monkeypatch.setattr(calibration, "fit_calibrator", spy)
    calibrate_and_store(model, info, TinyScenes(model, n=4), Args("temperature"), cfg(mc_samples=5))
    z = seen["logits"]
    assert z.shape[0] == 5 and not torch.allclose(z[0], z[1])


def test_legacy_temperature_sidecar_is_read_as_a_calibrator():
    info = {"kind": "segmentation", "meta": {"class_names": NAMES}, "temperature": 2.0}
    cal = checkpoint_calibrator(info)
    z = torch.randn(1, len(NAMES), 2, 2)
    torch.testing.assert_close(cal(z), z / 2.0)
    with pytest.raises(CheckpointError, match="3 values"):
        checkpoint_calibrator({**info, "temperature": [1.0, 2.0, 3.0]})
    assert checkpoint_calibrator({**info, "kind": "depth"}) is None


def test_concrete_dropout_checkpoint_reports_its_rates(tmp_path):
    model, info = make_checkpoint(tmp_path / "run", concrete=True)
    loader = torch.utils.data.DataLoader(TinyScenes(model, n=2), batch_size=2)
    m = evaluate_checkpoint(model, info, loader, tmp_path / "e", cfg(mc_samples=2, examples=1))
    rates = m["concrete_dropout_rates"]
    assert len(rates) == 4 and all(p == pytest.approx(0.5, abs=1e-6) for p in rates.values())
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["concrete_dropout_rates"]


def test_joint_checkpoint_reports_depth(tmp_path):
    model, info = make_checkpoint(tmp_path / "run", task="joint", heteroscedastic=False)
    ds = TinyScenes(model, n=2, task="joint")
    loader = torch.utils.data.DataLoader(ds, batch_size=2)
    m = evaluate_checkpoint(model, info, loader, tmp_path / "e", cfg(mc_samples=2, examples=1))
    files = {p.name for p in (tmp_path / "e").iterdir()}
    assert SEG_FILES | {"sparsification.png", "examples_depth.png"} <= files
    d = m["depth"]
    for key in (
        "abs_rel",
        "sq_rel",
        "rmse",
        "rmse_log",
        "log10",
        "delta1",
        "delta2",
        "delta3",
        "ause_rmse",
        "ause_absrel",
        "nll",
        "coverage_50",
        "coverage_90",
        "coverage_95",
    ):
        assert math.isfinite(d[key]), key
    assert "logit_var" not in m["uncertainty"]
    # AbsRel directly from the sampler's fused depth (clamped to the checkpoint's range).
    out = MCSampler(model, 2, seed=0)(next(iter(loader))["image"])
    pred = out["depth"][:, :H, :W].clamp(0.5, 10).double()
    target = torch.from_numpy(np.stack(ds.depths)).double()
    # over the dataset's depth_valid pixels (all of them here), not the labelled ones
    expect = ((pred - target).abs() / target).mean()
    assert d["abs_rel"] == pytest.approx(float(expect), rel=1e-6)


def test_bad_inputs(tmp_path):
    model, info = make_checkpoint(tmp_path / "run")
    with pytest.raises(CheckpointError, match="task"):
        evaluate_checkpoint(model, {**info, "kind": "video"}, [], tmp_path, cfg())
    depth_model, depth_info = make_checkpoint(tmp_path / "depth", task="depth")
    with pytest.raises(ConfigError, match="depth checkpoint"):
        calibrate_and_store(depth_model, depth_info, [], Args(), cfg())
    with pytest.raises(ConfigError, match="--calibrate 'warmth'"):
        calibrate_and_store(model, info, TinyScenes(model, n=2), Args("warmth"), cfg())
    with pytest.raises(ConfigError, match="2\\+ frames"):
        split_in_order(TinyScenes(model, n=1), 0.5)
    empty = torch.utils.data.DataLoader(torch.utils.data.Subset(TinyScenes(model, n=1), []))
    with pytest.raises(DataError, match="no images"):
        evaluate_checkpoint(model, info, empty, tmp_path / "e", cfg())


def test_rank_stretch_resolves_both_ends_of_a_map():
    """AUROC from the fixed-size histograms matches the exact one for maps squeezed against
    either bound (tiny MI of a confident model; entropy just below log C of a uniform one)."""
    from seguncert.evaluate.segmentation import rank_ranges, rank_transform
    from seguncert.metrics.quality import UncertaintyQuality

    g = torch.Generator().manual_seed(0)
    wrong = torch.rand(1, 64, 64, generator=g) < 0.3
    score = torch.rand(1, 64, 64, generator=g) + wrong * 0.4  # errors score higher
    log_c = math.log(len(NAMES))
    maps = {"epistemic": 1e-6 * score, "entropy": log_c - 1e-5 * (2 - score)}
    ranges = rank_ranges(len(NAMES), maps)
    q = UncertaintyQuality(list(maps), n_bins=4096, ranges=ranges)
    q.update({k: rank_transform(v, log_c) for k, v in maps.items()}, ~wrong)
    exact = roc_auc_score(wrong.ravel().numpy(), score.ravel().numpy())
    for k, r in q.compute()["maps"].items():
        assert r["auroc"] == pytest.approx(exact, abs=2e-3), k


def test_uncertainty_by_class_and_region_are_weighted_means(seg_run):
    _, _, _, metrics, root = seg_run
    saved = json.loads((root / "eval" / "metrics.json").read_text())
    by_class, by_region = saved["uncertainty_by_class"], saved["uncertainty_by_region"]
    assert list(by_class) == NAMES
    shares = saved["per_class_iou"]  # same class order; support comes from the csv below
    assert set(by_region) == {"boundary", "interior"}
    assert by_region["boundary"]["share"] + by_region["interior"]["share"] == pytest.approx(1.0)
    for key in ("aleatoric", "epistemic"):
        # the pixel-weighted mean of the two regions is the overall mean
        whole = sum(r["share"] * r[key] for r in by_region.values())
        assert whole == pytest.approx(saved["uncertainty"][key]["mean"], rel=1e-6)
    rows = (root / "eval" / "calibration_per_class.csv").read_text().splitlines()
    header = rows[0].split(",")
    support = [int(r.split(",")[header.index("support")]) for r in rows[1:]]
    total = sum(support)
    for key in ("aleatoric", "epistemic"):
        whole = sum(s * by_class[n][key] for s, n in zip(support, shares) if s)
        assert whole / total == pytest.approx(saved["uncertainty"][key]["mean"], rel=1e-6)


def test_label_boundaries_marks_both_sides():
    from seguncert.evaluate.segmentation import label_boundaries

    label = torch.zeros(1, 5, 6, dtype=torch.long)
    label[:, :, 3:] = 2
    edge = label_boundaries(label)[0]
    assert edge[:, 2:4].all() and not edge[:, :2].any() and not edge[:, 4:].any()
