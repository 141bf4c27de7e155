#!/usr/bin/env bash
# Prepare, on this machine, what benchmarks/gpu_check.sh needs on a GPU machine without network:
#   .whl/  wheels (CPython 3.12, manylinux x86-64) of the packages the GPU image lacks
#   .gpu/  ms.zarr (the two open_ms MNI patients, ingested), cases.json, key (a fresh pseudonym key)
# Both folders are ignored by git (.gitignore / .git/info/exclude) and travel as carried paths.
#   bash benchmarks/gpu_prepare.sh            # then, on the GPU machine: bash benchmarks/gpu_check.sh
set -euo pipefail
PY=${PY:-.venv/bin/python}
DATA=${LESIONFLOW_SHARED_DATA:-../shared/data}
grep -qx "/.gpu/" .git/info/exclude 2>/dev/null || echo "/.gpu/" >> .git/info/exclude
mkdir -p .whl .gpu
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
for pkg in pydantic pydantic_core annotated-types typing-inspection monai zarr numcodecs donfig google-crc32c \
           connected-components-3d cryptography cffi pycparser pytz; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "$pkg==$(version "$pkg")"
done
rm -rf .gpu/ms.zarr
openssl rand -hex 32 > .gpu/key
LESIONFLOW_PSEUDONYM_KEY=$(cat .gpu/key) PYTHONPATH=$PWD "$PY" - "$DATA/open_ms/cross_sectional/MNI" <<'PYEOF'
import json, sys
from flows.train_ms import case_of_patient
from pipeline.core.config import PipelineConfig, pseudonym_key
from pipeline.ingest import run_ingest

run_ingest(sys.argv[1], ".gpu/ms.zarr", PipelineConfig(), pseudonym_key())
cases = {p: case_of_patient(".gpu/ms.zarr", p) for p in ("patient07", "patient19")}
json.dump(cases, open(".gpu/cases.json", "w"))
print(cases)
PYEOF
du -sh .whl .gpu
