"""`make demo` end to end, shrunk: a fresh output folder (as on a new clone), the overlay
outputs, and the three summary lines the README quotes."""

from __future__ import annotations

import json
import re

import pytest

from seguncert.cli import demo

TINY = [
    "data.synthetic_train=8",
    "data.synthetic_val=4",
    "train.epochs=1",
    "train.batch_size=4",
    "train.threads=1",
]


@pytest.mark.slow
def test_demo_on_a_fresh_folder_prints_miou_animal_auroc_and_fog_ratio(tmp_path, capsys):
    out = tmp_path / "demo_out"  # does not exist yet
    assert demo.main(["--out", str(out), "--mc-samples", "2", *TINY]) == 0
    text = capsys.readouterr().out
    for name in ("overlay.mp4", "overlay.csv", "overlay_sheet.png", "drive.mp4"):
        assert (out / name).stat().st_size > 0, name
    assert re.search(r"^best miou 0\.\d{4}$", text, re.M), text
    m = re.search(r"^cow on the road: epistemic AUROC (0\.\d+|1\.0+), FPR95", text, re.M)
    assert m or re.search(r"^\w+ on the road: epistemic AUROC", text, re.M), text
    # the novelty map is the feature density fitted right after training, named with its AUROC
    nov = re.search(r"^(\w+) on the road, novelty map feature_density: AUROC (\d\.\d+), FPR95",
                    text, re.M)  # fmt: skip
    assert nov and 0 <= float(nov.group(2)) <= 1, text
    assert re.search(r"^\w+ AUROC per map: epistemic \d\.\d+, .*max_logit .*energy ", text, re.M)
    sidecar = json.loads((out / "model" / "best.json").read_text())
    assert (out / "model" / sidecar["feature_density"]["file"]).is_file()
    ratio = re.search(r"^fog/clear epistemic ratio (\d+\.\d+)", text, re.M)
    assert ratio and float(ratio.group(1)) > 0, text
    # a second run reuses the trained model instead of training again
    assert demo.main(["--out", str(out), "--mc-samples", "2", *TINY]) == 0
    again = capsys.readouterr().out
    assert "reusing the trained model" in again and "feature density fitted" not in again
