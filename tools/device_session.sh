#!/usr/bin/env bash
# One device call for both GPU issues: issue 12's measurements (tools/device_check.sh's stages in
# STAGES, default "flags": the step's images/s under CUDA graphs, loop against unroll, bfloat16, batch 32;
# "bench flags" adds the step without graphs, which TRAIN_XLA=auto compares with), then
# issue 14's full-resolution run (tools/device_train.sh: RUN, default device_runs/camvid_shared_strong) for
# the time left, with CUDA graphs over the whole step (TRAIN_XLA below). Its epoch lines
# are also fit's end-to-end images/s at camvid_shared 480x352 batch 8, validation included (issue 12).
# EPOCHS: a new total for the run, default the one it records (the learning rate steps x0.1 at 70% and 85%
# of it; a run cut off keeps its checkpoint and best.keras in main.tar, and a later session resumes it);
# EPOCHS=sized: a total sized from the bench's images/s that ends inside the time left (the first
# session).
# AUGMENT=strong: the run goes on with --augment strong, as a branch where it trains with another recipe
# (device_train.sh: fit --branch-from; RUN is only read).
#
#   bash tools/device_session.sh                                        # results under $OUT (default device_session/)
#   DEVICE_SESSION_TINY=1 JAX_PLATFORMS=cpu bash tools/device_session.sh  # toy sizes (a CPU test)
#
# TOTAL_S=560 is the whole script's time (one device call may run 600 s), of which the measurements leave
# the training at least 250 s. STAGES=none: no measurement, all the time for training. TRAIN_XLA: a file
# of XLA flags to train with (default tools/cuda_graphs.flags, CUDA graphs over the whole step: 108.6
# images/s against 93.1 without, the second session's bench, and 2.9 s epochs), none, or auto (the flags
# stage's graphs variant when it beat the bench by 5%). RUN: the run to resume (device_train.sh); a
# second call on a machine still warm resumes the first's (cp -r /tmp/device_train/run /tmp/run_prev,
# then RUN=/tmp/run_prev STAGES=none). $OUT gets check/ (3 files), train/ (summary.txt, main.tar,
# logs.tar; no comparisons; see the two scripts) and plan.txt (the flags and epochs chosen).
set -uo pipefail
start=$SECONDS
cd "$(dirname "$0")/.."
OUT=${OUT:-device_session}
TOTAL_S=${TOTAL_S:-560}
TRAIN_XLA=${TRAIN_XLA:-tools/cuda_graphs.flags}
if [ "$TRAIN_XLA" != auto ] && [ "$TRAIN_XLA" != none ] && [ ! -f "$TRAIN_XLA" ]; then
  echo "error: TRAIN_XLA=$TRAIN_XLA: expected auto, none or a file of XLA flags" >&2; exit 2
fi
[ -f .device-pack/setup.sh ] && . .device-pack/setup.sh && export DEVICE_PACK_READY=1
tiny=${DEVICE_SESSION_TINY:+1}
py=${PYTHON:-python3} run=${RUN:-device_runs/camvid_shared_strong}
. tools/run_facts.sh   # checkpoint_epoch, run_total
STAGES=${STAGES:-flags}
if [ "$STAGES" != none ]; then   # the measurements end with at least 250 s left for the training
  WORK=/tmp/device_check DEVICE_CHECK_TINY=$tiny STAGES=$STAGES CHECK_S=$((TOTAL_S - 250 - SECONDS + start)) \
    OUT=$OUT/check bash tools/device_check.sh
  [ $? = 3 ] && exit 3   # no GPU
fi
mkdir -p "$OUT"
train_with() {  # train_with FLAGS_FILE WHY
  XLA_FLAGS="$(cat "$1")${XLA_FLAGS:+ $XLA_FLAGS}"; export XLA_FLAGS
  echo "training with XLA_FLAGS=$XLA_FLAGS ($2)" | tee -a "$OUT/plan.txt"
}
[ -f "$TRAIN_XLA" ] && train_with "$TRAIN_XLA" "TRAIN_XLA=$TRAIN_XLA"
left=$((TOTAL_S - (SECONDS - start)))
if [ -z "$tiny" ]; then
  # the loop step's images/s from the bench (or the flags chosen) sizes EPOCHS=sized: an epoch is 367
  # images at that rate and 0.5 s of validation and saving (the first session: 4 s epochs at 86 images/s)
  images_s() { awk -F'|' '$2 ~ /camvid_shared/ {print $4 + 0; exit}' "/tmp/device_check/results/$1" 2>/dev/null; }
  rate='' graphs=''   # measured by this call's stages only (a warm machine keeps an earlier call's results)
  [ "$STAGES" != none ] && rate=$(images_s bench.md) graphs=$(images_s flags_graphs_8.md)
  if [ "$TRAIN_XLA" = auto ] && awk -v n="${graphs:-0}" -v o="${rate:-0}" 'BEGIN { exit !(o > 0 && n > 1.05 * o) }'; then
    train_with /tmp/device_check/results/flags_graphs_8.flags "graphs: $graphs images/s against the bench's $rate"
    rate=$graphs
  elif [ "$TRAIN_XLA" = auto ]; then
    echo "TRAIN_XLA=auto: no flags (graphs ${graphs:-not measured}, bench ${rate:-not measured} images/s: not both, or not 5% faster)" \
      | tee -a "$OUT/plan.txt"
  elif [ -f "$TRAIN_XLA" ] && [ "$(cat "$TRAIN_XLA")" = "$(cat tools/cuda_graphs.flags)" ] && [ -n "$graphs" ]; then
    rate=$graphs   # the step the training runs
  fi
  # all the time for training but device_train.sh's own start (about 20 s: JAX started twice to check
  # the GPU and the versions); a run cut off is not evaluated here (its epoch lines hold val mIoU at
  # outputs 1 and N, and main.tar its best.keras for fit's report elsewhere): reserving 170 s for
  # that left 80 s of 250, too few for a first epoch that compiles under unrolling flags
  main_s=$((left - 25))
  if [ "${EPOCHS:-}" = sized ] && ! awk -v r="${rate:-0}" 'BEGIN { exit !(r > 0) }'; then
    echo "EPOCHS=sized: no images/s measured (the bench and flags stages did not run or finish): toward the run's own total instead" \
      | tee -a "$OUT/plan.txt"
    unset EPOCHS
  fi
  if [ "${EPOCHS:-}" = sized ]; then   # end inside the time left, its rate steps and report included
    # the epochs the checkpoint holds (log.csv may hold one more: it is written before the checkpoint)
    done=$(checkpoint_epoch "$run")
    case "$done" in ''|*[!0-9]*) echo "error: EPOCHS=sized: cannot read the epochs done from the run's checkpoint" >&2; exit 2;; esac
    # 110 s for device_train.sh's start, fit's start-up and compilation, the recalibration and the evaluation
    more=$(awk -v r="$rate" -v s="$left" 'BEGIN { e = int((s - 110) / (367 / r + 0.5)); print e < 1 ? 1 : e }')
    export EPOCHS=$((done + more)) main_s=$((left - 30))
    echo "step ${rate} images/s, $left s left: the run goes from $done to $EPOCHS epochs" | tee -a "$OUT/plan.txt"
  fi
fi
[ -n "$tiny" ] && [ "${EPOCHS:-}" = sized ] && unset EPOCHS   # a toy run has its own total
if [ -z "$tiny" ] && [ -z "${EPOCHS:-}" ]; then
  if [ -f "$run/checkpoint.npz" ]; then
    echo "EPOCHS unset: $run goes from $(checkpoint_epoch "$run") toward the $(run_total "$run") epochs it records" \
      | tee -a "$OUT/plan.txt"
  elif [ "$run" = none ]; then
    echo "EPOCHS unset: RUN=none, a new run of device_train.sh's default total" | tee -a "$OUT/plan.txt"
  else
    echo "error: RUN=$run: no $run/checkpoint.npz to resume; RUN=none starts a new run" | tee -a "$OUT/plan.txt" >&2
    exit 2
  fi
fi
DEVICE_TRAIN_TINY=$tiny COMPARE_EPOCHS=0 TOTAL_S=$left MAIN_S=${main_s:-$((left - 10))} OUT=$OUT/train \
  bash tools/device_train.sh
