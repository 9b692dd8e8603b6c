"""The training/evaluation loops on tiny stand-in data (fast, CPU)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from seguncert.config import Config, ModelConfig
from seguncert.data.common import DatasetMeta
from seguncert.errors import ConfigError, SeguncertError
from seguncert.losses.criterion import build_criterion
from seguncert.models.build import build_model
from seguncert.runtime.amp import make_scaler, resolve_amp_dtype
from seguncert.train.budget import TimeBudget
from seguncert.train.loop import StepContext, train_one_epoch
from seguncert.train.optim import build_optimizer, build_scheduler
from seguncert.train.validate import validate

CPU = torch.device("cpu")


class DictData(Dataset):
    """Random images; channel 0 holds the label and channel 1 the depth, so an oracle model can
    read them back. Label 255 / valid False in the bottom-right padding beyond orig_size."""

    def __init__(self, n=4, size=(32, 32), orig=(28, 30), classes=3, seed=0):
        g = torch.Generator().manual_seed(seed)
        h, w = size
        self.label = torch.randint(0, classes, (n, h, w), generator=g)
        self.depth = torch.rand(n, h, w, generator=g) * 5 + 1
        self.image = torch.randn(n, 3, h, w, generator=g)
        self.image[:, 0] = self.label.float()
        self.image[:, 1] = self.depth
        self.label[:, orig[0] :, :] = 255
        self.label[:, :, orig[1] :] = 255
        self.orig = torch.tensor(orig)

    def __len__(self):
        return len(self.label)

    def __getitem__(self, i):
        valid = self.label[i] != 255
        return {
            "image": self.image[i],
            "label": self.label[i],
            "depth": self.depth[i],
            "valid": valid,
            "depth_valid": valid,
            "orig_size": self.orig,
            "name": f"f{i}",
        }


class Oracle(nn.Module):
    """Perfect inside orig_size, wrong in the padding (which evaluation must crop away)."""

    def forward(self, x):
        label = x[:, 0].round().long().clamp(0, 2)
        logits = nn.functional.one_hot(label, 3).permute(0, 3, 1, 2).float() * 10
        logits[:, :, 28:, :] = torch.tensor([0.0, 0.0, 10.0]).view(1, 3, 1, 1)
        return {"logits": logits, "depth_loc": x[:, 1:2]}


def setup(amp="off", nan_steps=0, amp_dtype=None, scaler_on=False):
    torch.manual_seed(0)
    cfg = Config(model=ModelConfig(arch="segnet_basic", width=8, num_classes=3, dropout_p=0.2))
    cfg.loss.class_weights = "none"
    cfg.loss.aleatoric_samples = 2
    model = build_model(cfg.model)
    meta = DatasetMeta(class_names=["a", "b", "c"])
    criterion = build_criterion(cfg, meta)
    opt = build_optimizer(cfg.optim, [*model.parameters(), *criterion.parameters()])
    loader = DataLoader(DictData(), batch_size=2)
    sched = build_scheduler(cfg.optim, opt, len(loader))
    scaler = torch.amp.GradScaler("cpu", enabled=scaler_on)
    return model, criterion, opt, sched, loader, scaler


def ctx(model, crit, opt, sched, scaler, amp_dtype=None, device=CPU, **kw) -> StepContext:
    return StepContext(
        train_model=model,
        criterion=crit,
        optimizer=opt,
        scheduler=sched,
        scaler=scaler,
        device=device,
        amp_dtype=amp_dtype,
        progress=False,
        **kw,
    )


class NaNFirst(nn.Module):
    """Wraps a criterion: the first ``n`` calls return a NaN loss."""

    def __init__(self, inner, n):
        super().__init__()
        self.inner, self.n, self.calls = inner, n, 0

    def forward(self, outputs, batch):
        loss, parts = self.inner(outputs, batch)
        self.calls += 1
        if self.calls <= self.n:
            loss = loss * float("nan")
            parts = dict(parts, loss=float("nan"))
        return loss, parts


def test_bf16_autocast_one_epoch_on_cpu():
    model, crit, opt, sched, loader, scaler = setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run = ctx(model, crit, opt, sched, scaler, torch.bfloat16, grad_clip=1.0)
    stats = train_one_epoch(run, loader, 0)
    assert stats["iters"] == 2 and torch.isfinite(torch.tensor(stats["loss"]))
    assert stats["images_per_s"] > 0 and stats["skipped_steps"] == 0
    assert stats["loss"] == pytest.approx(stats["seg"])  # single task: the total is the part
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_nonfinite_loss_raises_clear_message_without_fp16():
    model, crit, opt, sched, loader, scaler = setup()
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    with pytest.raises(SeguncertError) as e:
        train_one_epoch(ctx(model, NaNFirst(crit, 1), opt, sched, scaler), loader, 2)
    msg = str(e.value)
    assert msg.startswith("non-finite loss at epoch 3 iter 0 (loss parts ")
    assert "loss=nan" in msg and msg.endswith("lower optim.lr or use train.amp=bf16")
    assert all(torch.equal(before[k], v) for k, v in model.named_parameters())  # no step


def test_scaler_absorbs_a_few_nonfinite_losses_but_not_five():
    model, crit, opt, sched, loader, scaler = setup(scaler_on=True)
    loader = DataLoader(DictData(n=8), batch_size=2)
    run = ctx(model, NaNFirst(crit, 3), opt, sched, scaler, grad_clip=1.0)
    stats = train_one_epoch(run, loader, 0)
    assert stats["skipped_steps"] == 3 and stats["iters"] == 4
    model, crit, opt, sched, _, scaler = setup(scaler_on=True)
    with pytest.raises(SeguncertError, match="non-finite loss at epoch 1 iter 4"):
        run = ctx(model, NaNFirst(crit, 5), opt, sched, scaler)
        train_one_epoch(run, DataLoader(DictData(n=12), 2), 0)


def test_time_budget_stops_mid_epoch():
    model, crit, opt, sched, loader, scaler = setup()
    budget = TimeBudget(1e-6, val_images=2, batch_size=2)
    stats = train_one_epoch(ctx(model, crit, opt, sched, scaler), loader, 0, budget)
    assert stats["stopped_early"] and stats["iters"] == 1
    stats = train_one_epoch(ctx(model, crit, opt, sched, scaler), loader, 0, TimeBudget(None, 2, 2))
    assert not stats["stopped_early"] and stats["iters"] == 2


@pytest.mark.parametrize("task", ["segmentation", "depth", "joint"])
def test_evaluate_crops_padding_and_reports_task_metrics(task):
    meta = DatasetMeta(task=task, class_names=["a", "b", "c"], min_depth=0.5, max_depth=10.0)
    m = validate(Oracle(), DataLoader(DictData(n=3), batch_size=2), CPU, meta)
    if task != "depth":
        assert m["miou"] == pytest.approx(1.0) and m["pixel_accuracy"] == pytest.approx(1.0)
        assert m["count"] == 3 * 28 * 30  # every valid pixel, padding excluded
    else:
        assert "miou" not in m
    if task != "segmentation":
        assert m["abs_rel"] == pytest.approx(0.0, abs=1e-6) and m["delta1"] == pytest.approx(1.0)


def test_amp_resolution():
    assert resolve_amp_dtype("auto", CPU) is None
    assert resolve_amp_dtype("off", CPU) is None
    assert resolve_amp_dtype("bf16", CPU) is torch.bfloat16
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        resolve_amp_dtype("fp16", CPU)
    assert not make_scaler(CPU, torch.bfloat16).is_enabled()


def test_bf16_native_follows_the_cpu(monkeypatch):
    for avx512_bf16, amx, expect in [(True, False, torch.bfloat16), (False, True, torch.bfloat16),
                                     (False, False, None)]:  # fmt: skip
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert resolve_amp_dtype("bf16_native", CPU) is expect
    with pytest.raises(ConfigError, match="bf16_native"):
        resolve_amp_dtype("bf16native", CPU)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_gradscaler_channels_last_on_cuda():
    dev = torch.device("cuda")
    model, crit, opt, sched, loader, _ = setup()
    model = model.to(dev).to(memory_format=torch.channels_last)
    crit = crit.to(dev)
    amp = resolve_amp_dtype("auto", dev)
    assert amp is torch.float16
    scaler = make_scaler(dev, amp)
    assert scaler.is_enabled()
    run = ctx(model, crit, opt, sched, scaler, amp, dev, grad_clip=1.0, channels_last=True)
    stats = train_one_epoch(run, loader, 0)
    assert stats["iters"] == 2 and stats["loss"] == stats["loss"]
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
