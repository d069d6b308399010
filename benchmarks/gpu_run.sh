#!/bin/bash
# Runs on the device machine from the repo root: installs the kit benchmarks/gpu_kit.sh
# built into .dev/ (carry it), then benchmarks/gpu_slots.py with this script's
# arguments, within BUDGET seconds (default 540). What comes back in $OUT: log.txt,
# summary.json and gpu.tgz (profiles, plans, reports; not the models).
#   BUDGET=540 bash benchmarks/gpu_run.sh --profiles-from profiles/h200 --no-smoke
T0=$(date +%s)
REPO=$PWD
exec > >(tee $OUT/log.txt) 2>&1
left() { echo $(( ${BUDGET:-540} - ($(date +%s) - T0) )); }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
nproc; python3 --version
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .dev/whl/*.whl || exit 3
tar xzf .dev/llama_cpp_cuda.tgz -C /tmp/site || exit 4
export PYTHONPATH=/tmp/site:$REPO
LIBS=$(find /usr/local/cuda/ /usr/local/cuda/lib64 /opt -name 'libcublas.so.13' -printf '%h:' 2>/dev/null)
export LD_LIBRARY_PATH=${LIBS}/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
python3 -c "import llama_cpp, ortools, gguf, jsonschema; print('gpu offload', llama_cpp.llama_supports_gpu_offload())" || exit 6
PYTHONUNBUFFERED=1 timeout $(( $(left) - 15 )) python3 benchmarks/gpu_slots.py --out /tmp/gpu --tokenizer-from .dev/tokenizer-donor.gguf --deadline $(( $(left) - 25 )) "$@"
echo "benchmark rc=$?"
cp /tmp/gpu/summary.json $OUT/ 2>/dev/null
tar czf $OUT/gpu.tgz -C /tmp/gpu --exclude models . 2>/dev/null
ls -la $OUT; echo "total $(( $(date +%s) - T0 )) s"
