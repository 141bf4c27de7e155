#!/usr/bin/env bash
# The GPU checks of one lent-GPU session, in one run (under 10 minutes on one H200).
#
# Run from the repository root on a machine with a CUDA GPU and PyTorch. Writes under $OUT
# (default ./work/gpu-check):
#   env.txt          nvidia-smi, python/torch/package versions, the import check
#   cuda_check.json  benchmarks/cuda_check.py: train, crash + resume, score, evaluate on CUDA (issue #12)
#   gpu_ms.json      benchmarks/gpu_ms.py: banks, the feed check (issue #11: GPU busy share) and
#                    configurations trained on MS patient07, evaluated on patient19 (issue #12)
#   bench_train.json benchmarks/bench_train.py: it/s, peak memory, busy %, profile per network
#   pytest.txt       tests/training on the GPU (CUDA is picked where tests leave the device open)
#   logs.txt         every step's stderr
#
# STEPS picks and orders the steps (default: all four); GPU_MS_ARGS replaces gpu_ms.py's sizes, e.g.
#   STEPS="pytest bench_train gpu_ms" GPU_MS_ARGS="--samples 16 --configs '' --feed loader:2,fixed:2" bash benchmarks/gpu_check.sh
#
# Inputs that do not live in git (carried to the GPU machine, see benchmarks/README.md, "GPU"):
#   .whl/       wheels of the packages the GPU image lacks (pydantic, zarr, numcodecs, monai, ...)
#   .gpu/       ms.zarr (the two open_ms MNI patients, ingested), cases.json, key (its pseudonym key)
set -u
OUT=${OUT:-work/gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD" LESIONFLOW_TORCH_THREADS=8 MPLBACKEND=Agg
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>&1 | tail -3
  export PYTHONPATH="$PWD:/tmp/site"
fi
[ -f .gpu/key ] && export LESIONFLOW_PSEUDONYM_KEY="$(cat .gpu/key)"
LOG="$OUT/logs.txt"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,utilization.gpu --format=csv
  python3 - <<'EOF'
import importlib, platform
print("python", platform.python_version())
for m in ("torch", "numpy", "pandas", "scipy", "monai", "zarr", "numcodecs", "pydantic", "cc3d", "cryptography", "rich", "typer", "matplotlib"):
    try:
        mod = importlib.import_module(m)
        print(m, getattr(mod, "__version__", "?"))
    except Exception as exc:
        print(m, "IMPORT FAILED", repr(exc))
import torch
print("cuda", torch.cuda.is_available(), torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
for m in ("training.loop", "training.infer", "pipeline.lesions.evaluation", "pipeline.prepare.bank", "tests.store_factory"):
    try:
        importlib.import_module(m)
    except Exception as exc:
        print(m, "IMPORT FAILED", repr(exc))
EOF
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

step() {  # step NAME SECONDS command...: stdout -> $OUT/NAME.json, stderr appended to logs.txt
  local name=$1 secs=$2; shift 2
  local t0=$SECONDS
  echo "=== $name (limit ${secs}s)" >> "$LOG"
  timeout "$secs" "$@" > "$OUT/$name.json" 2>> "$LOG"
  echo "$name: exit $? after $((SECONDS - t0)) s"
}

for s in ${STEPS:-cuda_check gpu_ms bench_train pytest}; do
  case $s in
    cuda_check)
      step cuda_check "${CUDA_CHECK_S:-140}" python3 benchmarks/cuda_check.py --cases 4 --shape 96 --iterations 160 --no-bench ;;
    gpu_ms)
      # gpu_ms rewrites its own JSON after every step (--out), so a stop at the limit keeps what it measured
      [ -d .gpu/ms.zarr ] || { echo "gpu_ms: no .gpu/ms.zarr"; continue; }
      echo "=== gpu_ms" >> "$LOG"
      eval "timeout ${GPU_MS_S:-300} python3 benchmarks/gpu_ms.py --store .gpu/ms.zarr --cases .gpu/cases.json --out $OUT/gpu_ms.json \
        ${GPU_MS_ARGS:---samples 96 --feed-seconds 25 --seconds 60}" >/dev/null 2>> "$LOG"
      echo "gpu_ms: exit $?" ;;
    bench_train)
      step bench_train "${BENCH_TRAIN_S:-110}" python3 benchmarks/bench_train.py --networks unet,dynunet,vnet,segresnet --dims 3 \
        --iterations 20 --profile --timeout 40 ;;
    pytest)
      # --confcutdir: not tests/conftest.py, which imports Prefect (not on the GPU image); tests/training needs none
      timeout "${PYTEST_S:-120}" python3 -m pytest -q -p no:cacheprovider --confcutdir=tests/training tests/training > "$OUT/pytest.txt" 2>&1
      echo "pytest: exit $? ($(tail -1 "$OUT/pytest.txt"))" ;;
  esac
done
tail -c 3000 "$LOG"
