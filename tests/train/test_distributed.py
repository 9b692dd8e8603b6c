"""Two CPU processes with gloo: disjoint shards, identical weights, rank-0-only files."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from seguncert.runtime.distributed import ShardSampler, reduce_dict


class DictData(torch.utils.data.Dataset):
    """Per-index random frames with a label and a positive depth (joint task)."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        label = torch.randint(0, 3, (32, 32), generator=g)
        return {
            "image": torch.randn(3, 32, 32, generator=g),
            "label": label,
            "depth": torch.rand(32, 32, generator=g) + 1,
            "valid": label != 255,
            "depth_valid": torch.ones(32, 32, dtype=torch.bool),
            "index": torch.tensor(i),
        }


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    from torch.nn.parallel import DistributedDataParallel

    from seguncert.config import Config, ModelConfig
    from seguncert.data.common import DatasetMeta
    from seguncert.io.tensorfile import save_tensors
    from seguncert.losses.criterion import build_criterion
    from seguncert.models.build import build_model
    from seguncert.runtime.distributed import broadcast_buffers, cleanup, init_distributed
    from seguncert.train import fit as run_mod
    from seguncert.train.loader import build_loader, set_loader_epoch
    from seguncert.train.loop import StepContext, train_one_epoch
    from seguncert.train.optim import build_optimizer, build_scheduler

    out = Path(out)
    init_distributed("cpu")
    # 1) low level: DDP model + learned multi-task weights outside DDP, one epoch
    cfg = Config(model=ModelConfig(arch="segnet_basic", task="joint", width=8, num_classes=3))
    cfg.loss.class_weights, cfg.loss.aleatoric_samples = "none", 2
    torch.manual_seed(rank)  # different init per rank: DDP must broadcast rank 0's weights
    model = build_model(cfg.model)
    criterion = build_criterion(cfg, DatasetMeta(task="joint", class_names=list("abc")))
    ddp = DistributedDataParallel(model, find_unused_parameters=False)
    opt = build_optimizer(cfg.optim, [*model.parameters(), *criterion.parameters()])
    loader = build_loader(DictData(), 2, train=True, seed=0, rank=rank, world_size=world)
    set_loader_epoch(loader, 0, 0, rank)
    seen = [int(i) for b in loader for i in b["index"]]
    sched = build_scheduler(cfg.optim, opt, len(loader))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    run = StepContext(
        train_model=ddp,
        criterion=criterion,
        optimizer=opt,
        scheduler=sched,
        scaler=scaler,
        device=torch.device("cpu"),
        grad_clip=1.0,
        progress=False,
    )
    train_one_epoch(run, loader, 0)
    params = {f"param.{k}": v for k, v in model.named_parameters()}
    save_tensors(params, out / f"p{rank}.safetensors")  # before any buffer sync
    broadcast_buffers(model)
    state = {**model.state_dict(), **{f"crit.{k}": v for k, v in criterion.state_dict().items()}}
    save_tensors(state, out / f"w{rank}.safetensors")

    # 2) fit(): only rank 0 writes checkpoints
    calls = []
    real_save = run_mod.save_checkpoint
    run_mod.save_checkpoint = lambda *a, **k: (calls.append(a[1]), real_save(*a, **k))[1]
    from tests.train.test_fit import tiny_cfg

    summary = run_mod.fit(tiny_cfg("train.epochs=1"), out / "run")
    (out / f"rank{rank}.json").write_text(json.dumps({
        "seen": seen, "saves": calls, "count": summary["last_metrics"]["count"],
        "miou": summary["last_metrics"]["miou"], "mean": reduce_dict({"r": float(rank)})["r"],
    }))  # fmt: skip
    cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_training(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert set(r0["seen"]).isdisjoint(r1["seen"])
    assert sorted(r0["seen"] + r1["seen"]) == list(range(8))
    w0, w1 = (
        load_file(str(tmp_path / "w0.safetensors")),
        load_file(str(tmp_path / "w1.safetensors")),
    )
    assert w0.keys() == w1.keys() and any(k.startswith("crit.") for k in w0)
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    p0, p1 = (load_file(str(tmp_path / f"p{r}.safetensors")) for r in (0, 1))
    assert all(torch.equal(p0[k], p1[k]) for k in p0)  # DDP-averaged gradients
    assert r0["saves"] == ["best", "last"] and r1["saves"] == []
    # validation metrics are all-reduced: both ranks report the whole val set (4 x 32 x 32)
    assert r0["count"] == r1["count"] and r0["miou"] == r1["miou"]
    from seguncert.data.build import build_datasets
    from tests.train.test_fit import tiny_cfg

    _, val, _ = build_datasets(tiny_cfg())
    assert r0["count"] == sum(int(val[i]["valid"].sum()) for i in range(len(val)))
    assert r0["mean"] == pytest.approx(0.5)
    assert (tmp_path / "run" / "last.json").is_file()


def test_shard_sampler_covers_everything_once():
    parts = [list(ShardSampler(range(7), r, 3)) for r in range(3)]
    assert sorted(sum(parts, [])) == list(range(7)) and [len(p) for p in parts] == [3, 2, 2]
