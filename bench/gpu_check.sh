#!/usr/bin/env bash
# One-go GPU measurement for the loader (issue 10): GPU tests, then the decoder comparison, then bench all.
#
#   OUT=/path/to/results bash bench/gpu_check.sh          # on the GPU machine, from the project root
#
# Prepare the machine first as ../shared/gpu/README.md says (apply the staged bundles, including
# EXTRA_WHEELS="pynvvideocodec==2.2.4"; export PYTHONPATH=/tmp/site; python3 -m pip install --no-deps -e .).
# Everything goes under $OUT: pytest_gpu.log, loader_cuda.json (every backend side by side, 320x240 and
# short side 128), bench_all_cuda.json + .png, doctor/, nvidia-smi.txt, and a summary line per step in
# steps.txt. Each step has its own timeout, so one hanging step cannot eat the others' time; STEPS
# chooses which run (default: all, in this order of importance).
set -u
OUT=${OUT:-bench/results/gpu_check}
WORK=${WORK:-$OUT/work}
STEPS=${STEPS:-"tests loader128 loader320 doctor all"}
PY=${PYTHON:-python3}
mkdir -p "$OUT" "$WORK"
if [ -d /tmp/site ]; then export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}; fi

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout --signal=INT --kill-after=20 "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc seconds=$((SECONDS - t0)) cmd: $*" | tee -a "$OUT/steps.txt"
}

nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true
$PY -c "import fastvid, torch; print(fastvid.__file__, torch.__version__, torch.cuda.get_device_name(0))" >>"$OUT/nvidia-smi.txt" 2>&1
for s in $STEPS; do
    case $s in
        tests)     step pytest_gpu 240 $PY -m pytest -m gpu -q --timeout 120 -p no:cacheprovider ;;
        loader128) step loader128 240 $PY -m fastvid bench loader --device cuda --shard-short-side 128 --work-dir "$WORK/loader" \
                       --json "$OUT/loader_cuda_ss128.json" ;;
        loader320) step loader320 180 $PY -m fastvid bench loader --device cuda --work-dir "$WORK/loader" \
                       --json "$OUT/loader_cuda.json" ;;
        doctor)    step doctor 120 $PY -m fastvid doctor --device cuda --model r2plus1d_18 --batch-size 32 \
                       --shards "$(ls -d "$WORK"/loader/shards_h264_*_ss128 | head -1)" --tune --out "$OUT/doctor" ;;
        all)       step bench_all 360 $PY -m fastvid bench all --device cuda --work-dir "$WORK" --json "$OUT/bench_all_cuda.json" ;;
        *)         echo "unknown step $s" | tee -a "$OUT/steps.txt" ;;
    esac
done
case "$WORK" in "$OUT"/*) rm -rf "$WORK" ;; esac  # generated inputs are not results (keep $OUT small enough to come back)
cat "$OUT/steps.txt"
