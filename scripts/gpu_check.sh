#!/usr/bin/env bash
# GPU checks in one go, for a machine with an NVIDIA GPU (CI's lent GPU box, a Jetson):
#   1. every test marked `gpu` (CUDA kernels vs numpy; TensorRT engines when tensorrt imports),
#   2. the GPU kernel benchmark (needs CuPy; torchvision for the NMS ratio),
#   3. the fused path end to end vs the bare engine (CuPy + PyTorch with CUDA).
# Prints what it runs and exits non-zero if any step fails. Run from anywhere.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
status=0

echo "== environment"
nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv,noheader 2>/dev/null || echo "nvidia-smi: not available"
command -v nvcc >/dev/null && nvcc --version | tail -1 || echo "nvcc: not on PATH"
for mod in cupy pycuda torch torchvision tensorrt; do
    $PY -c "import $mod; print('$mod', getattr($mod, '__version__', '?'))" 2>/dev/null || echo "$mod: not installed"
done
if $PY -c "import tensorrt" 2>/dev/null; then
    echo "tensorrt imports: its engine tests run under -m gpu too"
fi

# Only the files that hold gpu tests: a GPU box often lacks the CPU suite's extras
# (paho-mqtt, jsonschema, mosquitto), and one failed import stops pytest's collection.
gpu_tests=$(grep -l "pytest.mark.gpu" tests/test_*.py | tr '\n' ' ')
echo "== pytest -m gpu $gpu_tests"
# -rs lists every skip with its reason. On a machine that has a GPU, skipped kernel
# tests mean the check did not check anything: that is a failure, not a pass.
log=$(mktemp)
$PY -m pytest -m gpu $gpu_tests -q -rs -p no:cacheprovider 2>&1 | tee "$log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
if nvidia-smi -L >/dev/null 2>&1 && grep -q "^SKIPPED.*test_kernels_gpu" "$log"; then
    echo "FAIL: a GPU is present but the kernel GPU tests were skipped (see reasons above)"
    status=1
fi
rm -f "$log"

echo "== benchmarks/bench_kernels_gpu.py"
if $PY -c "import cupy" 2>/dev/null; then
    $PY benchmarks/bench_kernels_gpu.py --iters "${ITERS:-200}" || status=1
else
    echo "skipped: cupy is not installed"
fi

echo "== benchmarks/bench_detector_gpu.py (fused path end to end vs the bare engine)"
if $PY -c "import cupy, torch; assert torch.cuda.is_available()" 2>/dev/null; then
    ckpt=""
    [ -f runs/demo-fast.pt ] && ckpt="--ckpt runs/demo-fast.pt"  # trained weights, when carried
    $PY benchmarks/bench_detector_gpu.py $ckpt --frames "${ITERS:-200}" || status=1
else
    echo "skipped: needs cupy and PyTorch with CUDA"
fi

echo "== gpu_check: $([ $status -eq 0 ] && echo PASS || echo FAIL)"
exit $status
