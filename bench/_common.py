"""Shared helpers for the benchmarks: common flags, timing, tables, the JSON summary line.

Every benchmark reports *ratios* against a baseline timed in the same run, and times the
contenders round-robin (one call of each per round, warm-up rounds first, median over rounds),
so a background job that slows the machine for a while slows every contender alike.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Run from a checkout without installing: make the package beside bench/ importable.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from seguncert.errors import ConfigError, DataError  # noqa: E402

DEFAULT_CAMVID = REPO.parent / "shared" / "datasets" / "camvid"


def doc_parser(doc: str) -> argparse.ArgumentParser:
    """An ArgumentParser whose description is the docstring's first paragraph and whose epilog
    is the rest (kept as written)."""
    head, _, rest = doc.partition("\n\n")
    return argparse.ArgumentParser(
        description=head, epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def add_common_args(p: argparse.ArgumentParser, repeats: int = 5) -> None:
    """--quick, --json, --device, --threads, --repeats, --warmup, --seed."""
    g = p.add_argument_group("common benchmark options")
    g.add_argument(
        "--quick", action="store_true", help="small sizes: about a minute on 2 CPU cores"
    )
    g.add_argument("--json", action="store_true", help="print a one-line JSON summary last")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    g.add_argument("--repeats", type=int, default=None, help=f"timed rounds (default {repeats})")
    g.add_argument("--warmup", type=int, default=1, help="untimed warm-up rounds (default 1)")
    g.add_argument("--seed", type=int, default=0, help="seed of weights, inputs and masks")
    g.add_argument("--stat", choices=("median", "min"), default="median",
                   help="statistic over rounds (min is steadier on a loaded machine)")  # fmt: skip
    p.set_defaults(default_repeats=repeats)


def setup(args) -> torch.device:
    """Apply --threads / --seed, resolve --device, fill --repeats; returns the device."""
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.repeats is None:
        args.repeats = max(2, args.default_repeats // 2) if args.quick else args.default_repeats
    if args.repeats < 1 or args.warmup < 0:
        raise ConfigError("--repeats must be >= 1 and --warmup >= 0")
    torch.manual_seed(args.seed)
    return resolve_device(args.device)


def resolve_device(name: str) -> torch.device:
    from seguncert.runtime.device import resolve_device as resolve

    return resolve(name, what="--device")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_round_robin(
    fns: dict[str, Callable[[], object]], device: torch.device, repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds of each call: one call of each fn per round, ``warmup`` rounds untimed."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(warmup + repeats):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
    return times


def time_against(
    baseline: Callable[[], object],
    fns: dict[str, Callable[[], object]],
    device: torch.device,
    repeats: int,
    warmup: int = 1,
    stat: str = "median",
) -> tuple[float, dict[str, dict[str, float]]]:
    """Each fn timed right after its own baseline call, round-robin: returns (baseline seconds,
    {name: {"seconds", "ratio"}}). ``stat="median"``: medians, and the ratio is the median over
    rounds of t / adjacent baseline (pairing cancels load that changes between rounds).
    ``stat="min"``: fastest calls and their ratio (noise only ever adds time, so on a loaded
    machine the minimum is the steadier estimate of the cost)."""
    paired = {}
    for name, fn in fns.items():
        paired[f"base/{name}"] = baseline
        paired[name] = fn
    times = time_round_robin(paired, device, repeats, warmup)
    base_all = [t for k, v in times.items() if k.startswith("base/") for t in v]
    out = {}
    for name in fns:
        if stat == "min":
            out[name] = {"seconds": min(times[name]), "ratio": min(times[name]) / min(base_all)}
            continue
        ratios = [t / b for t, b in zip(times[name], times[f"base/{name}"])]
        out[name] = {"seconds": statistics.median(times[name]), "ratio": statistics.median(ratios)}
    return (min(base_all) if stat == "min" else statistics.median(base_all)), out


def describe_machine(device: torch.device) -> dict:
    """What ran the benchmark: CPU model and cores, torch threads, GPU name when used."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    out = {
        "device": str(device),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    try:
        out["load_avg_1min"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    return out


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def parse_hw(text: str, what: str = "--size") -> tuple[int, int]:
    try:
        h, w = (int(v) for v in str(text).lower().split("x"))
        if h < 1 or w < 1:
            raise ValueError
    except ValueError:
        raise ConfigError(f"{what} must look like HxW (e.g. 360x480), got {text!r}") from None
    return h, w


def parse_ints(text: str, what: str) -> list[int]:
    try:
        vals = [int(v) for v in str(text).split(",") if v.strip()]
        if not vals or min(vals) < 1:
            raise ValueError
    except ValueError:
        raise ConfigError(
            f"{what} must be a comma-separated list of ints >= 1, got {text!r}"
        ) from None
    return vals


def camvid_root_or_none(root: str | None) -> tuple[Path | None, str]:
    """(root, '') when CamVid val is there, else (None, reason)."""
    path = Path(root) if root else DEFAULT_CAMVID
    if (path / "val").is_dir() and (path / "valannot").is_dir():
        return path, ""
    return None, f"CamVid not found at {path} (need val/ and valannot/; pass --data-root)"


def require_camvid(root: str | None) -> Path:
    path, reason = camvid_root_or_none(root)
    if path is None:
        raise DataError(reason)
    return path


def fmt(v, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def print_table(headers: list[str], rows: list[list], title: str | None = None) -> None:
    """A plain fixed-width text table on stdout."""
    cells = [[str(h) for h in headers]] + [[fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    if title:
        print(f"\n{title}")
    for i, row in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def rounded(obj, digits: int = 4):
    """Floats rounded (NaN -> None, so the summary is strict JSON) throughout nested dicts/lists."""
    if isinstance(obj, float):
        # significant digits, so tiny values (e.g. a max |diff| of 1e-7) survive
        return None if not math.isfinite(obj) else float(f"{obj:.{digits}g}")
    if isinstance(obj, dict):
        return {str(k): rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [rounded(v, digits) for v in obj]
    return obj


def emit_summary(summary: dict, as_json: bool) -> None:
    """The one-line JSON summary, printed last on stdout (when --json)."""
    if as_json:
        sys.stdout.flush()
        print(json.dumps(rounded(summary), separators=(",", ":")), flush=True)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


# ---------------------------------------------------------------- CamVid helpers


def camvid_val_batches(root: Path, n: int, size: tuple[int, int] | None, mean, std):
    """Yield (image (1, 3, H, W) normalised, label (1, H, W) long, raw RGB uint8) for the first
    ``n`` val frames sorted by name (the 0016E5 sequence in order), resized to ``size``."""
    from seguncert.data.camvid import CamVidDataset
    from seguncert.data.transforms import normalize_image

    ds = CamVidDataset(root, "val", size=size, cache=False)
    order = sorted(range(len(ds)), key=lambda i: ds.pairs[i][0].name)
    for i in order[: min(n, len(ds))]:
        s = ds.raw(i)
        x = normalize_image(s["image"], mean, std).unsqueeze(0)
        yield x, torch.from_numpy(s["label"]).long().unsqueeze(0), s["image"]


def mi_auroc(sampler, frames, device: torch.device, num_classes: int, maps=("epistemic",)) -> dict:
    """AUROC of each uncertainty map for detecting misclassified labelled pixels, streamed with
    seguncert's UncertaintyQuality over ``frames`` (an iterable of (x, label, rgb))."""
    from seguncert.metrics.quality import UncertaintyQuality

    log_c = math.log(num_classes)
    q = UncertaintyQuality(list(maps), ranges={m: (0.0, log_c) for m in maps})
    n = 0
    for x, label, _ in frames:
        out = sampler(x.to(device))
        label = label.to(out["pred"].device)
        q.update({m: out[m] for m in maps}, out["pred"] == label, label != 255)
        n += 1
    res = q.compute()
    return {"frames": n, "error_rate": res["error_rate"],
            **{m: res["maps"][m]["auroc"] for m in maps}}  # fmt: skip
