#!/usr/bin/env bash
# Everything that waits for the lent machine, in ONE device call of at most 10 minutes (a session
# gets about 15 minutes of device time in all, the machine's start included).
#
# Here: bash benchmarks/gpu_session.sh --prepare   (copies Fashion-MNIST into .gpu/, git-ignored)
# then the device tool:  run(command="bash benchmarks/gpu_session.sh", carry=[".gpu/fashion-mnist"], timeout_s=590)
# then here:  tar xzf <files_at>/gpu_results.tgz   (benchmarks/results/seg_*, .gpu/seg_runs/*)
#
# Issue 24 (segmentation), two jobs at once:
#  1. GPU: the paper's speed protocol (Table 8): 713x713, batch 16, fp32, deploy forms, the
#     three pairs (A0 / ResNet-18, B1g2-fast / ResNet-50, B2 / ResNet-101) and A0-fast / A0 -> results/seg_speed_cuda_*.md;
#  2. the machine's 16 CPU cores: fmnist-scenes training at the same CPU time for each model,
#     2 threads per run, 6 runs side by side (pspnet_repvgg_a0, pspnet_resnet18,
#     pspnet_repvgg_a0_fast; seeds 0 and 1), each with a fixed budget of training-step minutes
#     (the poly schedule fitted to it), best epoch picked on the validation split, test mIoU of the
#     train-time and fused forms at the end -> .gpu/seg_runs/<model>_s<seed>/.
# Check the script on this CPU first (tiny settings, a few minutes):
#     GPU_SESSION_DRY=1 bash benchmarks/gpu_session.sh
set -uo pipefail
cd "$(dirname "$0")/.."
STAGE=.gpu
if [[ "${1:-}" == "--prepare" ]]; then
    mkdir -p "$STAGE/fashion-mnist"
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
    cp /usr/share/datasets/fashion-mnist/*.gz "$STAGE/fashion-mnist/"
    exit 0
fi
OUT=${OUT:-/tmp/gpu_session_out}
mkdir -p "$OUT" "$STAGE/seg_runs"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TQDM_DISABLE=1
export REPVGG_CACHE="$STAGE/cache"
PY=${PYTHON:-python3}
# the full Fashion-MNIST the scenes are built from: carried in .gpu/fashion-mnist (the device machine
# may lack the Debian package; `bash benchmarks/gpu_session.sh --prepare` copies it there)
FMNIST=/usr/share/datasets/fashion-mnist
[[ -d "$STAGE/fashion-mnist" ]] && FMNIST="$STAGE/fashion-mnist"
MODELS=(pspnet_repvgg_a0 pspnet_resnet18 pspnet_repvgg_a0_fast)
SEEDS=(0 1)
if [[ -n "${GPU_SESSION_DRY:-}" ]]; then
    BUDGET=0.3 RUN_LIMIT=240 TAG=dry SPEED=(--device cpu --size 64 --batch-size 1 --repeats 1 --out seg_speed_dry)
    SEEDS=(0) RECIPE="$STAGE/tiny.yaml"
    printf 'scenes: {size: 48, num_train: 96, num_test: 16}\nbatch_size: 8\n' > "$STAGE/tiny.yaml"
else
    BUDGET=6.5 RUN_LIMIT=560 TAG=16core SPEED=(--device cuda --size 713 --batch-size 16 --table8 --repeats 10)
    RECIPE=scenes
fi
{ nvidia-smi -L || true; $PY -c "import torch; print(torch.__version__, torch.cuda.is_available())"; nproc; } 2>&1 \
    | tee "$OUT/session.log"
# the scenes once, before the runs share the cache
$PY -c "import sys; from repvgg.seg.config import resolve_seg_config; from repvgg.seg.scenes import load_scenes
load_scenes(sys.argv[2], **resolve_seg_config(sys.argv[1])['scenes'])" "$RECIPE" "$FMNIST" 2>&1 | tee -a "$OUT/session.log"
timeout -s TERM -k 20 "$RUN_LIMIT" $PY benchmarks/seg_scenes.py --models "${MODELS[@]}" --seeds "${SEEDS[@]}" \
    --budget-min "$BUDGET" --threads 2 --parallel 6 --recipe "$RECIPE" --runs "$STAGE/seg_runs" --tag "$TAG" \
    --data-dir "$FMNIST" \
    > "$OUT/seg_scenes.log" 2>&1 &
timeout 300 $PY benchmarks/seg_speed.py "${SPEED[@]}" 2>&1 | tee -a "$OUT/session.log"
echo "seg_speed exit ${PIPESTATUS[0]}" | tee -a "$OUT/session.log"
wait
echo "runs done" | tee -a "$OUT/session.log"
cat "$OUT/seg_scenes.log"
tar czf "$OUT/gpu_results.tgz" benchmarks/results/seg_speed_* benchmarks/results/seg_scenes_* \
    "$STAGE"/seg_runs/*/{metrics.jsonl,metrics.csv,train.log,config.yaml,summary.json,curves.png,samples.png} 2>/dev/null
ls -la "$OUT"
