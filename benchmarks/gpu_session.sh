#!/usr/bin/env bash
# What issues 4 and 5 need from a GPU, in ONE device call of at most 10 minutes (a session that is
# lent a GPU gets about 15 minutes of device time in all, the machine's start included).
#
# Here, from the repo root (copies the data and a trained checkpoint into .gpu/, git-ignored):
#     bash benchmarks/gpu_session.sh --prepare
# then the device tool:  run(command="bash benchmarks/gpu_session.sh", carry=[".gpu"], timeout_s=600)
# and here:  tar xzf <files_at>/gpu_results.tgz   (benchmarks/results/*cuda*, the training's files)
#
# Steps, each under its own time limit so that one failing still leaves the others' results:
#  1. benchmarks/bench_figures.py --device cuda --batch-size 128 (issue 5's GPU figures, with the
#     fp16/bf16 top-1 check of the trained checkpoint on the real test set);
#  2. benchmarks/train_fashion_mnist.py --device cuda: the >= 95.5% run of issue 4 (full-width A0,
#     its own depths, the small recipe for 40 epochs at batch 256, bf16 autocast). If its time runs
#     out the run stops with a resumable state and its metrics so far still come back.
# Check the script itself on this CPU first (1 epoch at 16 px, tiny bench; a few minutes):
#     GPU_SESSION_DRY=1 bash benchmarks/gpu_session.sh
set -uo pipefail
cd "$(dirname "$0")/.."
STAGE=.gpu
if [[ "${1:-}" == "--prepare" ]]; then
    mkdir -p "$STAGE/fashion-mnist"
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
    cp /usr/share/datasets/fashion-mnist/*.gz "$STAGE/fashion-mnist/"
    cp "${CHECKPOINT:-runs/bench-fmnist-repvgg_small_v2_xeon_s1/deploy.safetensors}" "$STAGE/trained.safetensors"
    du -sh "$STAGE"
    exit 0
fi
OUT=${OUT:-/tmp/gpu_session_out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
if [[ -n "${GPU_SESSION_DRY:-}" ]]; then
    DEVICE=cpu TAG=gpu_session_dry BENCH_LIMIT=600 TRAIN_LIMIT=300
    BENCH=(--batch-size 2 --image-size 32 --repeats 1 --warmup 1 --iters 1 --out "$OUT/bench_dry")
    TRAIN=(--epochs 1 -- --image-size 16 --batch-size 256 --width 0.25)
else
    DEVICE=cuda TAG=long_cuda BENCH_LIMIT=200 TRAIN_LIMIT=330
    BENCH=(--batch-size 128)
    TRAIN=(--epochs 40 -- --width 1.0 --depths model --batch-size 256 --amp bf16)
fi
{ nvidia-smi -L || true; $PY -c "import torch; print(torch.__version__, torch.cuda.is_available())"; } 2>&1 \
    | tee "$OUT/session.log"
timeout "$BENCH_LIMIT" $PY benchmarks/bench_figures.py --device "$DEVICE" "${BENCH[@]}" \
    --checkpoint "$STAGE/trained.safetensors" --data-dir "$STAGE/fashion-mnist" 2>&1 | tee -a "$OUT/session.log"
echo "bench_figures exit ${PIPESTATUS[0]}" | tee -a "$OUT/session.log"
timeout -s TERM -k 30 "$TRAIN_LIMIT" $PY benchmarks/train_fashion_mnist.py --device "$DEVICE" --tag "$TAG" \
    --data-dir "$STAGE/fashion-mnist" --target 95.5 --resume --runs "$STAGE/runs" "${TRAIN[@]}" 2>&1 \
    | tee -a "$OUT/session.log"
echo "train exit ${PIPESTATUS[0]}" | tee -a "$OUT/session.log"
tar czf "$OUT/gpu_results.tgz" benchmarks/results/*cuda* benchmarks/results/*"$TAG"* \
    "$STAGE/runs/bench-fmnist-$TAG"/{metrics.jsonl,train.log,config.yaml,summary.json,curves.png} 2>/dev/null
ls -la "$OUT"
