"""Deep ensembles beside MC dropout (Lakshminarayanan et al. 2017): M members x T dropout samples.

``EnsembleSampler(members, samples=T)(x)`` runs every member's :class:`MCSampler` (its prefix
once, its T dropout samples bounded by the memory budget, as for one model) and fuses all M x T
samples into one set of streaming sums, so the output has exactly the keys of
:class:`MCSampler` and every map is computed from all M x T samples:

- p̄ = (1/MT) Σ_m Σ_t p_{m,t}; total = H[p̄]; aleatoric = mean_{m,t} H[p_{m,t}];
  epistemic = total - aleatoric (mutual information across all samples);
- split of the epistemic part (segmentation): ``epistemic_members`` = H[p̄] - (1/M) Σ_m H[p̄_m]
  (disagreement between members) and ``epistemic_dropout`` = the rest (disagreement between
  the dropout samples of a member); depth: the variance of the member means and the mean
  within-member variance.

Members must share the task, class count and input normalisation (checked by
:func:`check_members`); each member's own calibrator (or the one given) acts on its samples.
Memory: one member's sums at a time plus the fused ones.
"""

from __future__ import annotations

import torch

from ..errors import CheckpointError
from .sampler import MCSampler, MCStats, finalize_stats


def check_members(infos: list[dict]) -> None:
    """One-line CheckpointError unless every member has the first one's task, classes, mean/std."""
    first = infos[0]
    for info in infos[1:]:
        if info.get("kind") != first.get("kind"):
            raise CheckpointError(
                f"ensemble members differ in task: {first.get('kind')!r} "
                f"({first.get('sidecar_path')}) vs {info.get('kind')!r} ({info.get('sidecar_path')})"
            )
        for key in ("class_names", "mean", "std"):
            if (info.get("meta") or {}).get(key) != (first.get("meta") or {}).get(key):
                raise CheckpointError(
                    f"ensemble members differ in meta.{key}: {first.get('sidecar_path')} vs "
                    f"{info.get('sidecar_path')}"
                )


def load_members(path, device="cpu") -> tuple[list, list[dict]]:
    """(models, sidecars) of one checkpoint, or of every member of an ensemble folder."""
    from ..io.checkpoint import ensemble_members, load_checkpoint

    loaded = [load_checkpoint(p, map_location=device) for p in ensemble_members(path)]
    infos = [i for _, i in loaded]
    check_members(infos)
    return [m for m, _ in loaded], infos


class EnsembleSampler:
    """Fused maps of M members x T MC-dropout samples; the same call and output as MCSampler,
    plus ``epistemic_members`` / ``epistemic_dropout`` (segmentation) or
    ``depth_members_var`` / ``depth_dropout_var`` (depth)."""

    def __init__(self, models, samples: int = 1, calibrators=None, **sampler_kwargs) -> None:
        models = list(models)
        if not models:
            raise CheckpointError("an ensemble needs at least one member")
        calibrators = list(calibrators) if calibrators is not None else [None] * len(models)
        # Each member its own mask seeds: members are independent posterior draws.
        seed = int(sampler_kwargs.pop("seed", 0))
        self.samplers = [
            MCSampler(m, samples, seed=seed + 1009 * i, calibrator=c, **sampler_kwargs)
            for i, (m, c) in enumerate(zip(models, calibrators, strict=True))
        ]
        self.samples = samples * len(models)

    def __call__(self, x: torch.Tensor, first_sample: int = 0) -> dict[str, torch.Tensor]:
        fused = MCStats()
        member_entropy, member_depth, members = None, None, 0
        for sampler in self.samplers:
            stats, used = sampler.accumulate(x, first_sample)
            out = finalize_stats(stats)
            if stats.seg is not None:
                h = out["entropy"]
                member_entropy = h if member_entropy is None else member_entropy + h
            if stats.reg is not None:
                d = out["depth"].double()
                if member_depth is None:
                    member_depth = (d, d * d)
                else:
                    member_depth = (member_depth[0] + d, member_depth[1] + d * d)
            for name in ("seg", "reg"):
                acc, part = getattr(fused, name), getattr(stats, name)
                if part is not None:
                    if acc is None:
                        setattr(fused, name, part)
                    else:
                        acc.merge_(part)
            members += 1
        out = finalize_stats(fused)
        if member_entropy is not None:
            between = (out["entropy"] - member_entropy / members).clamp_min(0.0)
            out["epistemic_members"] = torch.minimum(between, out["epistemic"])
            out["epistemic_dropout"] = (out["epistemic"] - out["epistemic_members"]).clamp_min(0)
        if member_depth is not None:
            s, s2 = member_depth
            var = (s2 / members - (s / members) ** 2).clamp_min(0.0).float()
            prefix = "depth_" if member_entropy is not None else ""
            total = out[f"{prefix}epistemic_var"]
            out["depth_members_var"] = torch.minimum(var, total)
            out["depth_dropout_var"] = (total - out["depth_members_var"]).clamp_min(0.0)
        return out
