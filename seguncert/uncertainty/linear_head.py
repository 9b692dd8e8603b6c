"""The segmentation head of a sampled model as one small matmul per MC sample.

Every seguncert network ends in a :class:`~seguncert.models.heads.HeadStage`: an optional
dropout on the full-resolution features (B, F, H, W), then 1x1 convolutions (logits and, for
heteroscedastic heads, a log variance). Run as a module on the replicated suffix batch, each
sample costs (through :class:`~seguncert.uncertainty.masks.SeededDropout`'s hook) a bool mask
turned into a float one and the masked product into fresh memory, two convolutions, and then
log-softmax and exp over the C classes; with classifier dropout, where the head is the whole
suffix, that was ~3x a deterministic pass at T = 20 (360x480, CPU), for what is arithmetically a
(C+1) x F matrix per pixel.

:class:`LinearHead` computes the same numbers per sample ``t``: the dropout layer's own random
bytes (generator and seed of SeededDropout for (t, layer, call), so the masks are bit for bit
those of ``naive_mc`` and of the module path) turned into a 0/1 float mask and multiplied into
the features in place; one (C+1) x (F+1) matmul with the 1/(1-p) dropout scale, the temperature,
log2(e) and the bias folded into its weights; then the accumulator's in-place softmax sums
(:func:`~seguncert.uncertainty.maps.softmax_sums_`). On the CPU it works on tiles of pixels with
the samples innermost, so that every intermediate stays in the cache; every buffer is reused.

It applies only where it reproduces the head exactly: no logit noise, no calibrator other than
a temperature, nothing kept per sample, no autocast, no depth head, and features already at the
input size (the head resizes nothing); elsewhere the sampler runs the head as a module.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn

from ..models.base import MCDropout
from ..models.heads import LOG_VAR_LIMIT, HeadStage
from .maps import _LOG2E, SegmentationAccumulator, softmax_sums_
from .masks import SeededDropout, mask_seed
from .predictive import MCStats, _divide

# Pixels per tile (the samples run innermost over a tile: ~5 MB of buffers at F = 16, C = 11,
# cache-resident; 16k-64k pixels measured within 10% of each other at 1 and 2 threads), and
# the bound on the random bytes drawn ahead for a group of samples.
_TILE_PIXELS = 32768
_DRAW_BYTES = 64 * 2**20


def _plain_1x1(conv: nn.Module | None) -> bool:
    return conv is None or (
        isinstance(conv, nn.Conv2d)
        and conv.kernel_size == (1, 1)
        and conv.stride == (1, 1)
        and conv.padding == (0, 0)
        and conv.dilation == (1, 1)
        and conv.groups == 1
    )


def _quantised_keep(p: float) -> int:
    """SeededDropout's keep threshold on a random byte (keep = byte < threshold)."""
    return max(1, min(256, round((1.0 - p) * 256)))


class LinearHead:
    """The last stage of a sampled model, when it is a plain segmentation :class:`HeadStage`.

    Build it with :meth:`match` (None where it does not apply); :meth:`run` folds the samples
    ``ids`` into ``stats`` given the head's input features and the active SeededDropout.
    """

    def __init__(self, head: HeadStage, temperature: float | torch.Tensor) -> None:
        self.head = head
        self.temperature = temperature
        self._buffers: dict[str, torch.Tensor] = {}

    @classmethod
    def match(cls, model: nn.Module, sampler) -> LinearHead | None:
        stages = getattr(model, "stages", None)
        if not sampler.use_split or stages is None or model.split_index >= len(stages):
            return None
        head = stages[-1]
        cal = sampler.calibrator
        temperature_only = cal is None or (
            isinstance(cal, functools.partial) and cal.func is _divide
        )
        drop = getattr(head, "drop", None)
        ok = (
            isinstance(head, HeadStage)
            and head.seg is not None
            and head.depth is None
            and (isinstance(drop, nn.Identity) or (isinstance(drop, MCDropout) and drop.p < 1))
            and _plain_1x1(head.seg.logits)
            and _plain_1x1(head.seg.log_var)
            and temperature_only
            and not (sampler.noise_samples and head.seg.log_var is not None)
            and not (sampler.return_samples or sampler.return_logits)
            and sampler.amp_dtype is None
        )
        return cls(head, sampler.temperature) if ok else None

    def applies_to(self, feats, input_size) -> bool:
        return (
            isinstance(feats, torch.Tensor)
            and feats.dim() == 4
            and feats.dtype == torch.float32
            and tuple(feats.shape[-2:]) == tuple(input_size)
        )

    def _keep_threshold(self) -> int:
        """SeededDropout's keep threshold on a random byte; 256 = no dropout."""
        drop = self.head.drop
        return _quantised_keep(drop.p) if isinstance(drop, MCDropout) and drop.p > 0 else 256

    def _weights(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(rows, F) weights and (rows, 1) bias of the mean head in log2 units for the logits
        (divided by τ, times log2 e), then the raw log variance's row times 2 / LOG_VAR_LIMIT
        (see :meth:`run`); and the class count."""
        seg = self.head.seg
        w = seg.logits.weight.detach().flatten(1).float()
        b = seg.logits.bias
        b = torch.zeros(w.shape[0], device=w.device) if b is None else b.detach().float()
        t = self.temperature
        t = t.to(w.device).view(-1, 1) if isinstance(t, torch.Tensor) else float(t)
        w, b = w * _LOG2E / t, b.view(-1, 1) * _LOG2E / t
        if seg.log_var is not None:
            lv_b = seg.log_var.bias
            lv_b = torch.zeros(1, device=w.device) if lv_b is None else lv_b.detach().float()
            lv_w = seg.log_var.weight.detach().flatten(1).float()
            w = torch.cat([w, lv_w * (2.0 / LOG_VAR_LIMIT)])
            b = torch.cat([b, lv_b.view(1, 1) * (2.0 / LOG_VAR_LIMIT)])
        return w, b, seg.logits.out_channels

    def _matmul_weights(self, device, scale: float) -> torch.Tensor:
        """The matmul weights (rows, F+1) = [scale * W, b], for inputs whose last row is 1."""
        w, b, _ = self._weights()
        return torch.cat([w * scale, b], 1).to(device)

    def _buffer(self, name: str, shape: tuple, dtype: torch.dtype, device) -> torch.Tensor:
        buf = self._buffers.get(name)
        if buf is None or buf.shape != shape or buf.dtype != dtype or buf.device != device:
            buf = self._buffers[name] = torch.empty(shape, dtype=dtype, device=device)
        return buf

    def _draws(self, masks: SeededDropout, ids: range, n: int, device) -> torch.Tensor | None:
        """The random bytes (len(ids), n) uint8 of samples ``ids``: SeededDropout._hook's draw
        for this layer and call (the same numbers), into a reused buffer. None without
        dropout (or with p so small that SeededDropout keeps every unit).

        The CPU generator is serial, so with several torch threads the samples are drawn in
        parallel, each thread with its own generator seeded per sample as the hook seeds its
        one: the bytes do not depend on who draws them."""
        if self._keep_threshold() == 256:
            return None
        layer = masks.layers.index(self.head.drop)
        call = masks._calls[layer]
        raw = self._buffer("raw", (len(ids), (n + 7) // 8), torch.int64, device)

        def draw(i: int, gen: torch.Generator) -> None:
            gen.manual_seed(mask_seed(masks.seed, ids[i], layer, call))
            torch.randint(-(2**63), 2**63 - 1, raw.shape[1:], dtype=torch.int64, device=device,
                          generator=gen, out=raw[i])  # fmt: skip

        workers = min(len(ids), torch.get_num_threads()) if device.type == "cpu" else 1
        if workers <= 1:
            gen = masks._generator(device)
            for i in range(len(ids)):
                draw(i, gen)
        else:
            gens = [torch.Generator(device=device) for _ in range(workers)]
            # Inference mode is per thread: a buffer made under the caller's must be written
            # under it, or torch refuses the in-place draw.
            mode = torch.is_inference_mode_enabled()

            def work(w: int) -> None:
                with torch.inference_mode(mode):
                    for i in range(w, len(ids), workers):
                        draw(i, gens[w])

            with ThreadPoolExecutor(workers) as pool:  # torch releases the GIL while drawing
                list(pool.map(work, range(workers)))
        return raw.view(torch.uint8)[:, :n]

    def run(
        self, feats: torch.Tensor, stats: MCStats, ids: range, masks: SeededDropout, shared: bool
    ) -> torch.Tensor:
        """Fold samples ``ids`` into ``stats``. feats: the head's input, (k*B, F, H, W)
        sample-major with k = len(ids), or with ``shared`` (B, F, H, W) for all the samples
        (classifier dropout: the head is the whole suffix). Returns the last logits tile.

        Tiles of pixels, samples innermost: a tile's features, masked features, logits,
        softmax and sums stay in the cache while its samples pass through, instead of every
        step streaming full-resolution maps from memory (~20% faster at 360x480)."""
        k = len(ids)
        b = feats.shape[0] if shared else feats.shape[0] // k
        _, f, h, w = feats.shape
        n = h * w
        flat = feats.reshape(-1, b, f, n)
        weight = self._matmul_weights(feats.device, 256.0 / self._keep_threshold())
        rows, classes = weight.shape[0], self.head.seg.logits.out_channels
        acc = stats.seg = stats.seg or SegmentationAccumulator()
        full = acc.zero_sums_((b, classes, h, w), feats.device,
                              (b, 1, h, w) if rows > classes else None)  # fmt: skip
        sums = {name: v.view(b, v.shape[1], n) for name, v in full.items()}
        group = max(1, min(k, _DRAW_BYTES // max(b * f * n, 1)))
        # on a GPU the launches of many small kernels would cost more than the cache saves
        tile = min(n, _TILE_PIXELS) if feats.device.type == "cpu" else n
        for start in range(0, k, group):
            chunk = ids[start : start + group]
            draws = self._draws(masks, chunk, b * f * n, feats.device)
            for a in range(0, n, tile):
                z = self._tile(flat, draws, (start, chunk), weight, sums, (a, tile), shared)
        acc.count = acc.count + k
        return z

    def _tile(self, flat, draws, samples, weight, sums, span, shared) -> torch.Tensor:
        """samples = (start, chunk): the samples ``chunk``, the start-th on of the call, on the
        pixels span = (a, tile): a .. a + tile."""
        _, b, f, n = flat.shape
        (start, chunk), (a, tile) = samples, span
        cols = min(n, a + tile) - a
        rows, classes = weight.shape[0], self.head.seg.logits.out_channels
        dev = flat.device
        xm = self._buffer("xm", (b, f + 1, tile), torch.float32, dev)[:, :, :cols]
        z = self._buffer("z", (b, rows, tile), torch.float32, dev)[:, :, :cols]
        e = self._buffer("e", (b, classes, tile), torch.float32, dev)[:, :, :cols]
        xm[:, f] = 1.0  # the bias row
        part = {name: v[:, :, a : a + cols] for name, v in sums.items()}
        threshold = self._keep_threshold()
        for i in range(len(chunk)):
            x = flat[0 if shared else start + i, :, :, a : a + cols]
            if draws is None:
                xm[:, :f].copy_(x)
            else:  # bytes -> float, compare in place: ~4x cheaper than a bool mask converted
                mask = draws[i].view(b, f, n)[:, :, a : a + cols]
                xm[:, :f].copy_(mask).lt_(threshold).mul_(x)
            torch.bmm(weight.expand(b, rows, f + 1), xm, out=z)
            if rows > classes:
                # exp(soft_clamp(r, L)) = exp(L tanh(r / L)) = 2^(log2e (2L sigmoid(2r/L) - L)),
                # with 2/L in the row's weights: the vectorised sigmoid and exp2, in place, are
                # ~8x cheaper than tanh and exp on the CPU (same value to ~1e-6).
                var = z[:, classes:].sigmoid_().mul_(2 * _LOG2E * LOG_VAR_LIMIT)
                part["logit_var"].add_(var.sub_(_LOG2E * LOG_VAR_LIMIT).exp2_())
            softmax_sums_(z[:, :classes], e, part, base2=True)
        return z
