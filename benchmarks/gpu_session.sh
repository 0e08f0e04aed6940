#!/usr/bin/env bash
# Everything that waits for a GPU, in ONE device call of at most 10 minutes (a session that is lent a
# GPU gets about 15 minutes of device time in all, the machine's start included).
#
# Here, from the repo root (copies the full Fashion-MNIST into .gpu/, git-ignored):
#     bash benchmarks/gpu_session.sh --prepare
# then the device tool:  run(command="bash benchmarks/gpu_session.sh", carry=[".gpu"], timeout_s=570)
# and here:  tar xzf <files_at>/gpu_results.tgz   (benchmarks/results/*cuda*, .gpu/ablation, the run's files)
#
# Steps, each under its own time limit so that one failing still leaves the others' results:
#  1. (background) the short ablation of Tables 6-7 (12 block variants x 3 seeds, 6 epochs on the
#     built-in subset), rerun with checkpoints picked on a validation split, by 4 workers sharing
#     the runs through lock files; it writes .gpu/ablation/ (table, per-run logs and results);
#  2. (at the same time) the >= 95.5% Fashion-MNIST run: full-width A0 at its own depths, the small
#     recipe for 40 epochs at batch 256, bf16 autocast, best epoch picked on the validation split;
#     if its time runs out it stops with a resumable state and its metrics so far still come back;
#  3. benchmarks/bench_figures.py --device cuda --batch-size 128, with the bf16/fp16 top-1 check of
#     the model step 2 trained (on the real test set).
# Check the script itself on this CPU first (tiny settings; a few minutes):
#     GPU_SESSION_DRY=1 bash benchmarks/gpu_session.sh
set -uo pipefail
cd "$(dirname "$0")/.."
STAGE=.gpu
if [[ "${1:-}" == "--prepare" ]]; then
    mkdir -p "$STAGE/fashion-mnist"
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
    cp /usr/share/datasets/fashion-mnist/*.gz "$STAGE/fashion-mnist/"
    du -sh "$STAGE"
    exit 0
fi
OUT=${OUT:-/tmp/gpu_session_out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TQDM_DISABLE=1
PY=${PYTHON:-python3}
ABL=(--model repvgg_a0 --width 0.25 --data fashion-mnist-builtin --variants all --seeds 3 --recipe small
     --set 'depths=[2,4,14,1]' --set small_input=false --set threads=2 --set amp=false)
if [[ -n "${GPU_SESSION_DRY:-}" ]]; then
    DEVICE=cpu TAG=gpu_session_dry ABL_LIMIT=240 TRAIN_LIMIT=240 BENCH_LIMIT=300 WORKERS=1
    ABL+=(--variants repvgg,plain --seeds 1 --epochs 1 --set train_subset=512)
    TRAIN=(--epochs 1 -- --image-size 16 --batch-size 256 --width 0.25)
    BENCH=(--batch-size 2 --image-size 32 --repeats 1 --warmup 1 --iters 1 --out "$OUT/bench_dry")
else
    DEVICE=cuda TAG=long_cuda ABL_LIMIT=330 TRAIN_LIMIT=330 BENCH_LIMIT=170 WORKERS=4
    TRAIN=(--epochs 40 -- --width 1.0 --depths model --batch-size 256 --amp bf16)
    BENCH=(--batch-size 128)
fi
{ nvidia-smi -L || true; $PY -c "import torch; print(torch.__version__, torch.cuda.is_available())"; } 2>&1 \
    | tee "$OUT/session.log"
for w in $(seq "$WORKERS"); do
    timeout -s TERM -k 20 "$ABL_LIMIT" $PY -m repvgg ablate "${ABL[@]}" --set device="$DEVICE" \
        --output "$STAGE/ablation" > "$OUT/ablation_worker$w.log" 2>&1 &
    sleep 2   # the workers claim runs in turn
done
timeout -s TERM -k 30 "$TRAIN_LIMIT" $PY benchmarks/train_fashion_mnist.py --device "$DEVICE" --tag "$TAG" \
    --data-dir "$STAGE/fashion-mnist" --target 95.5 --runs "$STAGE/runs" "${TRAIN[@]}" 2>&1 \
    | tee -a "$OUT/session.log"
echo "train exit ${PIPESTATUS[0]}" | tee -a "$OUT/session.log"
TRAINED="$STAGE/runs/bench-fmnist-$TAG/deploy.safetensors"
[[ -f "$TRAINED" ]] && CKPT=(--checkpoint "$TRAINED" --data-dir "$STAGE/fashion-mnist") || CKPT=()
timeout "$BENCH_LIMIT" $PY benchmarks/bench_figures.py --device "$DEVICE" "${BENCH[@]}" "${CKPT[@]}" 2>&1 \
    | tee -a "$OUT/session.log"
echo "bench_figures exit ${PIPESTATUS[0]}" | tee -a "$OUT/session.log"
wait
echo "ablation workers done" | tee -a "$OUT/session.log"
tar czf "$OUT/gpu_results.tgz" benchmarks/results/*cuda* benchmarks/results/*"$TAG"* "$STAGE/ablation" \
    "$STAGE/runs/bench-fmnist-$TAG"/{metrics.jsonl,train.log,config.yaml,summary.json,curves.png} 2>/dev/null
ls -la "$OUT"
