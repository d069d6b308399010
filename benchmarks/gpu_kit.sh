#!/bin/bash
# Builds, into .dev/ (ignored by git), what a device machine needs to run
# benchmarks/gpu_run.sh: it has no internet, a Python 3.12 with numpy, pandas,
# scikit-learn, scipy, click and rich, CUDA 13 libraries in a torch venv, and
# nothing else of ours.
#
#   .dev/llama_cpp_cuda.tgz    llama-cpp-python (this venv's version) built with CUDA
#                              for one GPU architecture (about 28 min on 2 cores)
#   .dev/whl/                  cp312 wheels of the packages the device image lacks
#   .dev/tokenizer-donor.gguf  a one-layer model carrying SmolLM2's tokenizer (a few
#                              MB), from which the benchmark writes its synthetic models
#
# Needs nvcc (CUDA 13 at /usr/local/cuda on the 2-vCPU VMs) and the package registries.
# carry in `run` is 64 MiB in all: the kit is about 25 MiB.
#
# Usage: benchmarks/gpu_kit.sh [CUDA_ARCHITECTURES]   (default 90-real: H100, H200)
set -euo pipefail
cd "$(dirname "$0")/.."
ARCH=${1:-90-real}
PY=.venv/bin/python
KIT=${KIT:-.dev}
CUDA=/usr/local/cuda
mkdir -p $KIT/whl
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
VER=$($PY -c "import llama_cpp; print(llama_cpp.__version__)")
echo "llama-cpp-python $VER for CUDA architecture $ARCH"

# 1. cuBLAS headers and libraries (this toolkit ships nvcc without them)
if [ ! -e $CUDA/include/cublas_v2.h ]; then
  $PY -m pip download -q --no-deps -d "$WORK" "nvidia-cublas==13.*"
  $PY -m zipfile -e "$WORK"/nvidia_cublas-*.whl "$WORK/cublas"
  cp -r "$WORK"/cublas/nvidia/cu13/include/. $CUDA/include/
  cp -a "$WORK"/cublas/nvidia/cu13/lib/. $CUDA/lib64/
  for f in $CUDA/lib64/libcublas*.so.13; do ln -sf "$(basename "$f")" "${f%.13}"; done
fi

# 2. the CUDA build (our engines never ask for flash attention; no VMM pool)
if [ ! -e $KIT/llama_cpp_cuda.tgz ]; then
  $PY -m pip download -q --no-deps --no-binary :all: -d "$WORK" "llama-cpp-python==$VER"
  export CMAKE_ARGS="-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=$ARCH -DGGML_CUDA_FA=OFF \
-DGGML_CUDA_NO_VMM=ON -DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DCMAKE_CUDA_COMPILER=$CUDA/bin/nvcc \
-DCUDAToolkit_ROOT=$CUDA"
  export CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)
  date -u
  $PY -m pip wheel -q --no-deps -w "$WORK/wheel" "$WORK"/llama_cpp_python-*.tar.gz
  date -u
  # the wheel holds each shared library under every soname (108 MB): keep one copy
  # and make the others links, then pack the package folder alone
  $PY -m zipfile -e "$WORK"/wheel/llama_cpp_python-*.whl "$WORK/pkg"
  $PY - "$WORK/pkg/llama_cpp" <<'EOF'
import hashlib, os, sys
from pathlib import Path
seen: dict[str, Path] = {}
for f in sorted(Path(sys.argv[1]).rglob("*.so*"), key=lambda p: len(p.name), reverse=True):
    if f.is_symlink() or not f.is_file():
        continue
    h = hashlib.sha256(f.read_bytes()).hexdigest()
    if h in seen and seen[h].parent == f.parent:
        f.unlink()
        os.symlink(seen[h].name, f)
    else:
        seen[h] = f
EOF
  tar czf $KIT/llama_cpp_cuda.tgz -C "$WORK/pkg" llama_cpp
fi

# 3. wheels for Python 3.12 that the device image lacks, at this venv's versions
PINS=$($PY -c "from importlib.metadata import version as v; print(' '.join(f'{p}=={v(p)}' for p in
('ortools', 'protobuf', 'immutabledict', 'gguf', 'diskcache', 'jsonschema',
 'jsonschema-specifications', 'referencing', 'rpds-py')))")
# shellcheck disable=SC2086
$PY -m pip download -q --no-deps --only-binary :all: --python-version 3.12 \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d $KIT/whl $PINS

# 4. the tokenizer donor
$PY - $KIT/tokenizer-donor.gguf <<'EOF'
import sys
from profiler.synth import SynthShape, write_synthetic
write_synthetic(sys.argv[1], SynthShape(layers=1, hidden=32, heads=1, kv_heads=1, ffn=32),
                name="tokenizer-donor")
EOF
du -sh $KIT/llama_cpp_cuda.tgz $KIT/whl $KIT/tokenizer-donor.gguf
echo "kit ready; on the device (the run tool), for example:"
echo "  command: BUDGET=540 bash benchmarks/gpu_run.sh --profiles-from profiles/h200 --no-smoke"
echo "  carry: ['.dev'], timeout_s: 600"
