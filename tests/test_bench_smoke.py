"""bench/video_fps.py end to end in its quick mode: it drives tools/infer.py as a user does
(several torch threads, reruns into the same output), so a change to the tool's output lines
or refusals breaks this test instead of the benchmark."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_video_fps_quick_runs_per_frame_and_temporal():
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONPATH=str(REPO))
    cmd = [sys.executable, str(REPO / "bench" / "video_fps.py"), "--quick", "--samples", "1",
           "--temporal", "2", "--frames", "3", "--size", "64x96", "--json"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:] + r.stdout[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(out["fps"]) == {"T1", "temporal_K2_T20"}
    assert all(v > 0 for v in out["fps"].values())
    assert all(0 < out["fps_total"][k] <= out["fps"][k] * 1.05 for k in out["fps"])
