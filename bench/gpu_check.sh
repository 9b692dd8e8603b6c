#!/usr/bin/env bash
# One script for every check that needs a CUDA GPU; sized to finish within 8 minutes including
# the install. Run from the repository root on a machine with a GPU:
#
#     bash bench/gpu_check.sh [OUT_DIR]        # default OUT_DIR: gpu_check_out (or $OUT)
#
# It runs (1) the CUDA-marked tests (AMP fp16 + GradScaler, bf16, channels_last, MC sampling on
# the GPU, DDP with nccl on one GPU), (2) the training-throughput benchmark (fp32 vs AMP fp16 vs
# bf16, channels_last), (3) the MC-inference and video benchmarks on the GPU, and writes
# OUT_DIR/gpu_check.json (every benchmark's one-line JSON summary plus the test result) and
# OUT_DIR/gpu_check.md (a markdown summary to paste into docs/benchmarks.md).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-gpu_check_out}}"
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1

PY=python3
if [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
elif ! $PY -c "import torch, segmentation_models_pytorch, albumentations" 2>/dev/null; then
  $PY -m pip install -q -e '.[dev]' || exit 1
fi
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible'" || exit 1
$PY -c "import torch; print('GPU:', torch.cuda.get_device_name(0), 'torch', torch.__version__)" \
  | tee "$OUT_DIR/device.txt"

status=0
run() {  # run NAME TIMEOUT CMD...: keep the last line (the JSON summary) of each benchmark
  local name=$1 limit=$2; shift 2
  echo "== $name"
  timeout "$limit" "$@" 2>&1 | tee "$OUT_DIR/$name.log"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -ne 0 ] && { echo "!! $name exited $rc"; status=1; }
  tail -n 1 "$OUT_DIR/$name.log" | grep '^{' > "$OUT_DIR/$name.json" || echo '{}' > "$OUT_DIR/$name.json"
}

run cuda_tests 150 $PY -m pytest -q -m cuda tests -p no:cacheprovider
run train_throughput 120 $PY bench/train_throughput.py --device cuda --json
run mc_inference 120 $PY bench/mc_inference.py --device cuda --json
run video_fps 90 $PY bench/video_fps.py --device cuda --quick --json

$PY - "$OUT_DIR" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
names = ["train_throughput", "mc_inference", "video_fps"]
res = {"device": (out / "device.txt").read_text().strip()}
log = (out / "cuda_tests.log").read_text().strip().splitlines()
res["cuda_tests"] = log[-1] if log else "no output"
for n in names:
    try:
        res[n] = json.loads((out / f"{n}.json").read_text() or "{}")
    except json.JSONDecodeError:
        res[n] = {}
(out / "gpu_check.json").write_text(json.dumps(res, indent=2))
lines = [f"# GPU check\n", f"- device: {res['device']}", f"- CUDA tests: {res['cuda_tests']}", ""]
for n in names:
    lines.append(f"## {n}\n")
    lines.append("```json\n" + json.dumps(res[n], indent=1) + "\n```\n")
(out / "gpu_check.md").write_text("\n".join(lines))
print("\n".join(lines))
EOF
echo "gpu_check: wrote $OUT_DIR/gpu_check.json and $OUT_DIR/gpu_check.md"
exit $status
