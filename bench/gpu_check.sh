#!/usr/bin/env bash
# The GPU check, one command on a machine with one NVIDIA GPU (about 8 minutes):
#   bench/gpu_check.sh            # results in gpu-check/ (OUT=... moves them)
# 1. installs the service with the gpu extra (onnxruntime-gpu, deploy/gpu's pin) beside the dev tools;
# 2. records the GPU, and for TensorRT and CUDA in turn the provider every model's session really
#    got and its output's largest difference from the CPU's (bench.gpu_parity);
# 3. measures the service on CUDA, then on TensorRT (DENOISE_REQUIRE_PROVIDER: a model that did not
#    get it is not served), at 512 x 512 for 1, 4 and 16 clients against bare ONNX Runtime on the
#    same provider (bench.run, the table docs/BENCHMARKS.md uses);
# 4. on CUDA, exact tile sizes against tile buckets, a mix of image sizes at 4 clients
#    (bench.tile_buckets: on the CPU buckets cost 30%; on a GPU they should pay).
# Exits non-zero when a provider was not obtained; every step's output is kept either way.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-check}"
mkdir -p "$out"
source scripts/_venv.sh
ensure_venv "gpu,dev" || exit 1
python=.venv/bin/python
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.csv"
status=0
$python -m bench.gpu_parity --provider tensorrt --provider cuda --json "$out/parity.json" | tee "$out/parity.txt" || status=1
for provider in cuda tensorrt; do
    $python -m bench.run --skip-classical --skip-large --cases ct-512-png --small 1:40,4:80,16:96 \
        --set "providers=$provider,cpu" --set "require_provider=$provider" --baseline-provider "$provider" \
        --max-seconds 90 --json "$out/bench-$provider.json" 2>&1 | tee "$out/bench-$provider.txt" || status=1
done
$python -m bench.tile_buckets --providers cuda,cpu --rounds 3 --no-quality 2>&1 | tee "$out/tile-buckets-cuda.txt" || status=1
echo "results in $out/ (exit $status)"
exit $status
