"""What a training run saves to continue exactly: optimiser, schedule, scaler, the loss's learned
parameters, progress counters and every rank's random number generators.

The state is written with the ``last`` weights as one unit (:func:`seguncert.io.checkpoint.
save_checkpoint` with ``resume_state``), so a run killed at any moment resumes from a matching
pair. Since shuffling and augmentation depend only on (seed, epoch, rank)
(:mod:`seguncert.train.loader`), a run resumed after epoch k ends with the same weights as an
uninterrupted run: bit-exact on the CPU, with or without loader workers; on CUDA up to
non-deterministic kernels unless ``train.deterministic``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..errors import CheckpointError
from ..io.checkpoint import check_state_matches, read_sidecar
from ..io.resume import read_resume_state
from ..io.tensorfile import load_verified_weights
from .optim import schedule_horizon


def capture_rng_state() -> dict:
    """Every global RNG a training step may draw from, in a JSON/safetensors-storable form."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], np_state[1].tolist(), *[_py(v) for v in np_state[2:]]],
        "python": _listify(random.getstate()),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if state.get("cuda") and torch.cuda.is_available():
        # A run resumed on fewer GPUs restores the devices it has.
        for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)


def gather_rng_states(world: int) -> list[dict]:
    """Every rank's RNG state, on every rank (all_gather_object pickles only in memory)."""
    state = capture_rng_state()
    if world == 1:
        return [state]
    states: list = [None] * world
    dist.all_gather_object(states, state)
    return states


def training_state(run, epoch: int, global_step: int, best: dict) -> dict:
    """The resume state after ``epoch`` (call on every rank: it gathers the RNG states)."""
    return {
        "epoch": epoch,
        "global_step": global_step,
        "best": best,
        "world_size": run.world,
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "horizon": schedule_horizon(run.scheduler).total,
        "scaler": run.scaler.state_dict(),
        "criterion": run.criterion.state_dict(),
        "rng": gather_rng_states(run.world),
    }


def restore_training(out_dir: Path, run) -> dict:
    """Load the ``last`` weights and their resume state into ``run``; returns the state."""
    info = read_sidecar(out_dir / "last.json")
    if json.loads(json.dumps(run.model.spec)) != info["model_spec"]:
        raise CheckpointError(
            f"cannot resume {out_dir}: the config builds a different model than last.json"
        )
    state = read_resume_state(out_dir, info.get("resume_state"))
    weights = load_verified_weights(out_dir / info["weights_file"], info["weights_sha256"])
    check_state_matches(run.model, weights, out_dir / info["weights_file"])
    run.model.load_state_dict(weights)
    try:
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        schedule_horizon(run.scheduler).total = int(state["horizon"])
        if run.scaler.is_enabled() and state["scaler"]:
            run.scaler.load_state_dict(state["scaler"])
        run.criterion.load_state_dict(state["criterion"])
    except (KeyError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"cannot resume from {out_dir}: malformed state ({e})") from None
    return state


def _py(v):
    return v.item() if isinstance(v, np.generic) else v


def _listify(v):
    return [_listify(x) for x in v] if isinstance(v, (tuple, list)) else v
