#!/usr/bin/env bash
# Everything issue 12 measures on a GPU, in one go, on a machine with JAX and CUDA but no
# TensorFlow and no network. From the project's root, after `../shared/tools/device-pack` has
# written .device-pack/ here:
#
#   bash tools/device_check.sh                       # results under $OUT (default: device_check/)
#   DEVICE_CHECK_TINY=1 bash tools/device_check.sh   # the same stages at toy sizes (a CPU test)
#
# It installs nothing beyond `. .device-pack/setup.sh` (when that file exists; otherwise the
# current environment must have the project's requirements and KERAS_BACKEND=jax). CamVid is read
# from DATA_DIR (default .device-pack/camvid; e.g. data/camvid from `python -m itnet_keras.download camvid`). Stages, each
# with its own time limit and log, going on when one fails (its exit code is in summary.txt):
#   1. bench: training images/s and peak device memory, loop and unroll, camvid_shared 352x480, batch 8
#   2. flags: the bench's step under XLA flags: CUDA graphs over the whole step (loop and unroll); under
#      them bfloat16, batch 32 and the metrics' plain confusion counts; batch 32 without graphs
#   3. fit: two short camvid_shared runs of `fit` at full resolution (480x352 crops), batch 8,
#      end-to-end images/s, with a blocking batch hook (how fit ran before) and as fit is
#      (tools/fit_dispatch_bench.py)
#   4. profile: tools/profile_step.py (forward, backward, train step, metrics) and a jax.profiler trace
#   5. memory: cityscapes_shared 1024x512 batch-8 training steps with and without --remat (device peak)
# The stages' limits add up to 980 s (plus the setup), more than one device call (600 s): choose with STAGES. A device call
# returns at most 8 files, so $OUT holds three: summary.txt (versions, each stage's exit code and time,
# the tables), results.tar (bench.md, flags_*.md, fit.md, profile.json, memory*.md) and logs.tar (every stage's log, the
# profiler trace), both rewritten after every stage so that a call cut off still returns the stages done.
# With no GPU visible to JAX it stops at once (exit 3) unless DEVICE_CHECK_TINY is set. STAGES="bench profile"
# (say) runs only those; CHECK_S (seconds from the script's start) cuts the stages' limits to fit.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-device_check}
mkdir -p "$OUT"
work=${WORK:-/tmp/device_check}
rm -rf "$work"
mkdir -p "$work/results" "$work/logs"
[ -f .device-pack/setup.sh ] && [ -z "${DEVICE_PACK_READY:-}" ] && . .device-pack/setup.sh && export DEVICE_PACK_READY=1
export KERAS_BACKEND=${KERAS_BACKEND:-jax} PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
if [ -n "${DEVICE_CHECK_TINY:-}" ]; then
  preset=tiny; size=64x64; big=tiny; big_size=64x128; steps=2; data=(--data builtin --limit 16); epochs=2
  scale=${DEVICE_CHECK_TIME_SCALE:-6}   # a loaded CPU compiles slowly
else
  preset=camvid_shared; size=352x480; big=cityscapes_shared; big_size=512x1024; steps=10; epochs=3
  data=(--data camvid --data-dir "${DATA_DIR:-.device-pack/camvid}")
fi
summary=$OUT/summary.txt
: > "$summary"
STAGES=" ${STAGES:-bench flags fit profile memory} "   # which stages run (tools/device_session.sh chooses)
CHECK_S=${CHECK_S:-100000}   # seconds for all stages: a stage that no longer gets 30 s is skipped
stage() {  # stage NAME SECONDS COMMAND...: run with a time limit, log to $work/logs/NAME.log
  local name=$1 seconds=$2; shift 2
  [[ $STAGES == *" ${name%%_*} "* ]] || return 0
  local left=$((CHECK_S - SECONDS))
  [ "$left" -lt "$seconds" ] && seconds=$left
  if [ "$seconds" -lt 30 ]; then echo "$name: skipped, $left s left of CHECK_S" | tee -a "$summary"; return 0; fi
  local start=$SECONDS
  timeout -k 15 $((seconds * ${scale:-1})) "$@" > "$work/logs/$name.log" 2>&1
  local rc=$?
  echo "$name: exit $rc after $((SECONDS - start)) s" | tee -a "$summary"
  tar -C "$work/results" -cf "$OUT/results.tar" .
  tar -C "$work" -cf "$OUT/logs.tar" logs   # also after every stage: a call cut off keeps the logs so far
}
{ echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null)"; nvidia-smi -L 2>/dev/null
  $py -c "import jax, keras; print('jax', jax.__version__, jax.devices(), 'keras', keras.__version__)"; } >> "$summary" 2>&1
if [ -z "${DEVICE_CHECK_TINY:-}" ] && ! $py -c "import jax; assert jax.default_backend() == 'gpu'" 2>/dev/null; then
  echo "error: JAX sees no GPU: nothing measured" | tee -a "$summary"
  exit 3
fi
res=$work/results

stage bench 150 env ITNET_CONFUSION_FORM=auto $py -m itnet_keras.lab.bench --presets $preset --input-size $size --batch-sizes 8 \
  --steps $steps --output "$res/bench.md"
# The bench's step under XLA settings that launch its ~6,600 GPU ops per step faster (the first
# measurement, docs/benchmarks.md), most telling first (a stage CHECK_S cannot hold is skipped): CUDA
# graphs for the whole step, the while loops included (tools/cuda_graphs.flags; the second session: 108.6
# images/s against the bench's 93.1, and what training uses since), with the loop and Keras' unroll side by
# side (issue 12's "loop no slower than unrolled", under the flags that train); under graphs, the model in
# bfloat16 (Keras' mixed_bfloat16 policy: the GPU's own work, 46 ms of a step, is the other half of the gap
# to 400 images/s), batch 32 (fewer launches per image), the mIoU metrics' confusion counts in their plain
# form (a scatter into C x C cells, which the default replaced on a GPU: itnet_keras/metrics.py); batch 32
# without graphs. (XLA's own unrolling of the while loops, alone and with graphs, was slower: 76.1 and 77.2
# images/s.) Each variant's flags go to flags_NAME_BATCH.flags (tools/device_session.sh's TRAIN_XLA=auto
# trains with the graphs variant's when it wins). A flag this XLA does not know makes its stage fail, no more.
GRAPHS=${GRAPHS-$(cat tools/cuda_graphs.flags)}
for variant in "graphs 8 auto loop,unroll float32 $GRAPHS" "bf16 8 auto loop mixed_bfloat16 $GRAPHS" \
    "graphs 32 auto loop float32 $GRAPHS" "plaincounts 8 segment_sum loop float32 $GRAPHS" "default 32 auto loop float32"; do
  read -r name batch form variants precision flags <<< "$variant"
  echo "${flags:-}" > "$res/flags_${name}_$batch.flags"
  xla="${flags:-}${XLA_FLAGS:+ $XLA_FLAGS}"   # XLA reads a value not starting with "--" as a file name
  limit=70; [[ $variants == *unroll* ]] && limit=150   # loop and unroll: the bench stage took 107 s for both
  stage "flags_${name}_$batch" $limit env ${xla:+"XLA_FLAGS=$xla"} ITNET_CONFUSION_FORM=$form $py -m itnet_keras.lab.bench \
    --presets $preset --input-size $size --batch-sizes $batch --steps $steps --variants ${variants//,/ } \
    --precision "$precision" --output "$res/flags_${name}_$batch.md"
done
stage fit 170 $py tools/fit_dispatch_bench.py --rounds 1 --output "$res/fit.md" --preset $preset "${data[@]}" \
  --epochs $epochs --batch-size 8
stage profile 90 $py tools/profile_step.py --preset $preset --input-size $size --batch-size 8 \
  --steps $steps --trace "$work/logs/trace" --top 25 --json "$res/profile.json"
for remat in "" --remat; do
  stage "memory${remat:+_remat}" 70 $py -m itnet_keras.lab.bench --presets $big --input-size $big_size \
    --batch-sizes 8 --steps 2 --variants loop $remat --output "$res/memory${remat:+_remat}.md"
done
cat "$res"/*.md >> "$summary" 2>/dev/null
tar -C "$work" -cf "$OUT/logs.tar" logs
cat "$summary"
