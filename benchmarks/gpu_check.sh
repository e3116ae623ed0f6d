#!/usr/bin/env bash
# The prepared GPU check of issue 5 (item 8): the three benchmarks at small sizes on one CUDA GPU,
# JSON files (and the full log) written to $OUT. About 5 minutes on an H100; nothing is downloaded.
#
#     OUT=/tmp/gpu_check bash benchmarks/gpu_check.sh          # from the repository root
#
# Needs torch + torchvision with CUDA, tqdm; runs the repo from its root (python -m), no install
# needed. The prune-step figure needs nni and/or torch-pruning and is skipped for a backend that is
# not importable (it times the host CPU, not the GPU).
# Record the figures in the README with the GPU's name (gpu.csv) and the date (each JSON's machine.date).
set -uo pipefail
: "${OUT:?set OUT to the folder that receives the JSON files}"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv" || echo "no nvidia-smi"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'CUDA is not available'; print(torch.__version__, torch.cuda.get_device_name())" || exit 1
status=0
step() {  # run one benchmark; a failure is logged and the next one still runs
    echo "=== $*"
    local start=$SECONDS
    "$PY" "$@" || { echo "FAILED: $*"; status=1; }
    echo "=== $((SECONDS - start)) s"
}

# 1. Training throughput: bare loop vs toolkit CE / KD / cached KD, dense and pruned (bf16 autocast,
#    channels_last, cudnn.benchmark as the toolkit trains), + GPU-resident loader vs DataLoader at 32 and 224 px.
step -m benchmarks.train_throughput --device cuda --image-size 32 --batch-size 256 --batches 20 --rounds 3 \
     --pruned-steps 10 --cache-views 4 --loader-sizes 32 224 --workers 4 --json "$OUT/train_throughput_32.json"
step -m benchmarks.train_throughput --device cuda --image-size 224 --batch-size 64 --batches 10 --rounds 3 \
     --pruned-steps 10 --cache-views 2 --loader-sizes --json "$OUT/train_throughput_224.json"
# torch.compile: does it help? (compiles ResNet50 twice: about 2 minutes)
step -m benchmarks.train_throughput --device cuda --image-size 224 --batch-size 64 --batches 10 --rounds 2 \
     --pruned-steps 10 --cache-views 2 --loader-sizes --compile --json "$OUT/train_throughput_224_compile.json"

# 2. Latency / throughput of dense vs 5/10/15-step models, both memory formats, odd widths vs multiples of 8.
step -m benchmarks.latency --devices cuda --sizes 32 224 --steps 0 5 10 15 --batches 1 64 --round-to 1 8 \
     --repeats 20 --warmup 5 --json "$OUT/latency_cuda.json"

# 3. Seconds per 10% prune step (host CPU, 2 threads as on the issue's 2-core machine), with the backends present.
backends=$("$PY" - <<'EOF'
import importlib.util
print(" ".join(b for b, mod in (("nni", "nni"), ("torch-pruning", "torch_pruning")) if importlib.util.find_spec(mod)))
EOF
)
if [ -n "$backends" ]; then
    step -m benchmarks.prune_step --steps 3 --threads 2 --backends $backends --json "$OUT/prune_step.json"
else
    echo "=== prune_step skipped: neither nni nor torch-pruning is installed here"
fi
exit $status
