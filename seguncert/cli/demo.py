"""The `make demo` run: train the synthetic demo model, render a driving video with fog and an
out-of-distribution animal, and write its uncertainty overlay video and contact sheet.

Steps (outputs under demo_out/, which git ignores):
  1. train configs/synthetic_demo.yaml into demo_out/model (about 3 minutes on 2 CPU cores);
     skipped when demo_out/model holds a finished run of the same resolved config;
  2. render demo_out/drive.mp4: 60 frames, 120x160, 10 fps, fixed seed; fog of rising severity
     (1 to 5) on frames 20-39, an animal standing on the road from frame 40 on;
  3. run tools/infer.py on it with MC dropout (T=8): demo_out/overlay.mp4, overlay.csv and
     overlay_sheet.png, with panels input | segmentation | aleatoric | epistemic | novelty
     (the feature density fitted right after training);
  4. print the paths, then what the maps show: the model's val mIoU ("best miou X"), the
     animal's per-pixel AUROC / FPR95 under the epistemic map (and which map finds it best)
     and under the novelty map (the feature density, fitted on the training frames right
     after training), and the fog/clear ratio of the mean epistemic value
     (seguncert.cli.demo_scores).
     --readme-image PATH also writes a downscaled copy of the contact sheet (PNG of at most
     300 KB) for the README.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from ..config import load_config
from ..errors import DataError
from ..io.atomic import atomic_write_bytes
from ..io.video_writer import AtomicVideoWriter

# The checkout's configs/ (the demo is run from a source checkout: `make demo`).
CONFIGS = Path(__file__).resolve().parents[2] / "configs"

N_FRAMES, SIZE, FPS, SEED = 60, (120, 160), 10.0, 3
FOG_FRAMES, OOD_FROM = range(20, 40), 40
MAX_README_BYTES = 300 * 1024


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="seguncert-demo", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out/)")
    p.add_argument("--config", default=str(CONFIGS / "synthetic_demo.yaml"))
    p.add_argument("--mc-samples", type=int, default=8, help="MC dropout samples (default 8)")
    p.add_argument("--readme-image", help="also write the contact sheet here, PNG <= 300 KB")
    p.add_argument("--retrain", action="store_true", help="train even if a finished run exists")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    return p.parse_args(argv)


def train(cfg, run_dir: Path, retrain: bool) -> None:
    """Train once per resolved config: a marker written after fit() returns records its hash."""
    digest = hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()
    marker = run_dir / "demo_done.json"
    if not retrain and marker.is_file() and (run_dir / "best.json").is_file():
        if json.loads(marker.read_text()).get("config_sha256") == digest:
            print(f"[1/4] reusing the trained model in {run_dir} (same config)")
            fit_density(run_dir)
            return
    marker.unlink(missing_ok=True)  # a retrain that dies half-way must not look finished
    print(f"[1/4] training the demo model into {run_dir} (about 3 minutes on 2 cores)")
    from ..train.fit import fit

    summary = fit(cfg, run_dir, overwrite=True)
    done = {"config_sha256": digest, "best_metric": summary.get("best_metric")}
    fit_density(run_dir)
    atomic_write_bytes(marker, json.dumps(done).encode())


def fit_density(run_dir: Path) -> None:
    """Fit the feature-density novelty map on the demo's training frames, unless the checkpoint
    already holds one fitted on its current weights at the default feature level."""
    from ..evaluate.density_fit import DEFAULT_STAGES, fit_checkpoint_density
    from ..io.checkpoint import load_checkpoint
    from ..uncertainty.feature_density import resolve_stages

    model, info = load_checkpoint(run_dir)
    entry = info.get("feature_density") or {}
    stored = entry.get("file") and (run_dir / entry["file"]).is_file()
    same = entry.get("stages") == resolve_stages(model, DEFAULT_STAGES)
    if stored and same and entry.get("weights_sha256") == info["weights_sha256"]:
        return
    entry = fit_checkpoint_density(model, info, progress=False)
    print(f"      feature density fitted on {entry['pixels']} pixels of {entry['frames']} frames")


def fog_severity(f: int) -> dict:
    if f not in FOG_FRAMES:
        return {}
    return {"fog": 1 + (f - FOG_FRAMES.start) * 5 // len(FOG_FRAMES)}


def render_video(path: Path) -> list[dict]:
    """Write the demo drive to ``path``; returns the rendered samples (image, ood mask...)."""
    from ..data.synthetic import render_sequence

    print(
        f"[2/4] rendering {N_FRAMES} frames ({SIZE[0]}x{SIZE[1]}, fog on frames "
        f"{FOG_FRAMES.start}-{FOG_FRAMES.stop - 1}, animal from frame {OOD_FROM}) -> {path}"
    )
    frames = list(
        render_sequence(
            N_FRAMES,
            size=SIZE,
            seed=SEED,
            fps=FPS,
            shifts=fog_severity,
            ood_frames=range(OOD_FROM, N_FRAMES),
        )
    )
    with AtomicVideoWriter(path, FPS, SIZE) as vw:
        for sample in frames:
            vw.write(sample["image"])
    return frames


def readme_image(sheet: Path, dest: Path) -> None:
    """Write the contact sheet as a 256-colour PNG (about 3x smaller than full colour),
    downscaled further only while it is over 300 KB."""
    import io

    from PIL import Image  # pillow comes with matplotlib

    try:
        img = Image.open(sheet).convert("RGB")
    except OSError as e:
        raise DataError(f"cannot read contact sheet {sheet}: {e}") from None
    scale = 1.0
    while True:
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        small = img if scale == 1.0 else img.resize(size, Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        small.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            buf, "PNG", optimize=True
        )
        if buf.tell() <= MAX_README_BYTES:
            break
        scale *= 0.85
    atomic_write_bytes(dest, buf.getvalue())
    print(f"README image: {dest} ({size[0]}x{size[1]}, {buf.tell() // 1024} KB)")


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    out = Path(args.out)
    run_dir, video = out / "model", out / "drive.mp4"
    train(cfg, run_dir, args.retrain)
    frames = render_video(video)
    overlay = out / "overlay.mp4"
    print(f"[3/4] MC dropout inference (T={args.mc_samples})")
    from .infer import main as infer_main

    infer_args = ["--checkpoint", str(run_dir), "--input", str(video), "--out", str(overlay)]
    infer_main([*infer_args, "--mc-samples", str(args.mc_samples), "--overwrite"])
    sheet = overlay.with_name("overlay_sheet.png")
    print(f"[4/4] overlay video: {overlay}")
    print(f"      contact sheet: {sheet}")
    print(f"      per-frame statistics: {overlay.with_suffix('.csv')}")
    if args.readme_image:
        readme_image(sheet, Path(args.readme_image))
    from ..data.synthetic import FrameParams
    from .demo_scores import demo_scores, summary_lines

    ood = range(OOD_FROM, N_FRAMES)
    scores = demo_scores(run_dir, frames, FOG_FRAMES, ood, args.mc_samples)
    for line in summary_lines(scores, FrameParams.from_seed(SEED).ood_species):
        print(line)
    return 0
