#!/usr/bin/env bash
# A full-resolution CamVid run on a GPU for a wall-time budget (issue 14), resuming the open run carried
# in the repo (RUN, toward the total its config.json records: its log.csv has one row per epoch done, on
# the CPU and on a GPU; docs/training.md) or starting one (RUN=none), then the recipe comparisons if time
# remains. One device call, JAX, no TensorFlow, no network. From the project's root, after
# `../shared/tools/device-pack`:
#
#   bash tools/device_train.sh                                       # results under $OUT (default: device_train/)
#   DEVICE_TRAIN_TINY=1 JAX_PLATFORMS=cpu bash tools/device_train.sh  # the same at toy sizes (a CPU test)
#
# Settings (environment variables):
#   RUN=device_runs/camvid_shared_strong  the open run, resumed from its checkpoint.npz (config.json,
#                     checkpoint.npz and log.csv are all that resuming needs, about 5.7 MB); none: a new
#                     run; a RUN without a checkpoint is refused; with DEVICE_TRAIN_TINY none unless given.
#                     (The paper-recipe run device_runs/camvid_shared_full ended at 447 epochs and left
#                     the tree: docs/camvid_shared_full_447/.)
#   DATA_DIR=.device-pack/camvid  CamVid in the SegNet layout (e.g. data/camvid from `python -m itnet_keras.download camvid`)
#   EPOCHS=N          a new total for the run; the learning rate steps x0.1 at 70% and 85% of it (default: the
#                     total the resumed run records; 2000, the paper's, for a new run)
#   AUGMENT=strong    where RUN trains with another --augment, branch it instead of resuming it: a new run
#                     from its checkpoint with this one (fit --branch-from; RUN is only read; a branch carried
#                     back as RUN is then resumed), 8 input threads; a new run starts with it (default: paper)
#   TOTAL_S=540       seconds for the whole script, its setup included (one device command may run 600 s)
#   MAIN_S=380        seconds of them for the full-resolution run (start-up and compilation included); then
#                     up to 75 s to recalibrate and 75 s to evaluate its last epoch
#   COMPARE_EPOCHS=30 COMPARE_SCALE=2   the comparisons, each a fresh run of camvid_shared at 1/COMPARE_SCALE
#                     resolution: paper+all, strong+all, paper+thinned:4 (docs/training.md), each given a third
#                     of the time left (none when that is under a minute: with the defaults the full-resolution
#                     run takes the whole budget; a smaller MAIN_S leaves them time); a run cut off says so; COMPARE_EPOCHS=0: none
# Writes under $OUT (at most 8 files come back from a device call, 16 MiB each):
#   summary.txt   versions, each stage's exit code and time, every epoch line, the mIoU per output
#   main.tar      the run folder (config.json, checkpoint.npz, log.csv, best.keras,
#                 latest/evaluation.json of its last epoch with its batch norms recalibrated (unless that
#                 epoch is best.keras's), and evaluation.json, of best.keras recalibrated by fit, once the
#                 run is complete):
#                 unpack it into $RUN and commit to resume in the next session; written as soon as the
#                 full-resolution run stops, and again at the end
#   compare.tar   the comparison runs without their weights; logs.tar: every stage's log
set -uo pipefail
start=$SECONDS   # the setup counts against TOTAL_S
cd "$(dirname "$0")/.."
OUT=${OUT:-device_train}
mkdir -p "$OUT"
[ -f .device-pack/setup.sh ] && [ -z "${DEVICE_PACK_READY:-}" ] && . .device-pack/setup.sh && export DEVICE_PACK_READY=1
export KERAS_BACKEND=${KERAS_BACKEND:-jax} PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
if [ -n "${DEVICE_TRAIN_TINY:-}" ]; then
  RUN=${RUN:-}  # a new toy run: the repo's open run is camvid_shared at full resolution
  preset=tiny; data=(--data builtin --limit 16); moved=(); cmp_data=("${data[@]}"); new_total=3
  TOTAL_S=${TOTAL_S:-900}; MAIN_S=${MAIN_S:-300}; COMPARE_EPOCHS=${COMPARE_EPOCHS:-1}; cmp_scale=()
else
  RUN=${RUN:-device_runs/camvid_shared_strong}
  preset=camvid_shared; data=(--data camvid --data-dir "${DATA_DIR:-.device-pack/camvid}"); moved=("${data[@]:2}")
  new_total=2000; TOTAL_S=${TOTAL_S:-540}; MAIN_S=${MAIN_S:-380}; COMPARE_EPOCHS=${COMPARE_EPOCHS:-30}
  cmp_data=("${data[@]}"); cmp_scale=(--scale "${COMPARE_SCALE:-2}")
fi
case "${AUGMENT:-}" in ''|paper|strong) ;; *) echo "error: AUGMENT=$AUGMENT: expected paper or strong" >&2; exit 2;; esac
work=${WORK:-/tmp/device_train}
rm -rf "$work"
mkdir -p "$work/logs"
summary=$OUT/summary.txt
: > "$summary"
left() { echo $((TOTAL_S - (SECONDS - start))); }
stage() {  # stage NAME SECONDS COMMAND...: run with a time limit, log to $work/logs/NAME.log
  local name=$1 seconds=$2; shift 2
  local t0=$SECONDS
  if [ "$seconds" -lt 30 ]; then echo "$name: skipped, $seconds s left" | tee -a "$summary"; return 125; fi
  timeout -k 15 "$seconds" "$@" > "$work/logs/$name.log" 2>&1
  local rc=$?
  echo "$name: exit $rc after $((SECONDS - t0)) s (limit $seconds s)$( { [ $rc = 124 ] || [ $rc = 137 ]; } && echo ', cut off')" | tee -a "$summary"
  grep -a "^epoch [0-9]*/[0-9]* [0-9.]*s:" "$work/logs/$name.log" >> "$summary"
  return $rc
}
miou() {  # miou EVALUATION_JSON: one line of val mIoU per output
  $py -c "import json, sys; r = json.load(open(sys.argv[1])); m = r.get('model', {}); \
print(sys.argv[1].split('/', 3)[-1] + ':', m.get('file'), *(['epoch', m['epoch'], 'of', m['epochs_trained']] \
if 'epoch' in m else []), '| val mIoU per output', ' '.join(f\"{o['miou']:.3f}\" for o in r['outputs']), \
'| input', r['input_size'])" "$1" >> "$summary" 2>&1
}
{ echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null) EPOCHS=${EPOCHS:-unset} TOTAL_S=$TOTAL_S MAIN_S=$MAIN_S"
  nvidia-smi -L 2>/dev/null
  $py -c "import jax, keras; print('jax', jax.__version__, jax.devices(), 'keras', keras.__version__)"; } >> "$summary" 2>&1
if [ -z "${DEVICE_TRAIN_TINY:-}" ]; then   # the pack carried and installed (../shared/tools/device-pack), or nothing to train with
  if ! problem=$($py -c "import itnet_keras.fit" 2>&1); then
    echo "error: cannot import itnet_keras.fit (was .device-pack carried?): $(echo "$problem" | tail -1)" | tee -a "$summary"
    exit 2
  fi
  if [ ! -d "${data[3]}/train" ]; then
    echo "error: no CamVid at ${data[3]} (DATA_DIR; .device-pack/camvid when the pack is carried)" | tee -a "$summary"
    exit 2
  fi
fi
if [ -z "${DEVICE_TRAIN_TINY:-}" ] && ! $py -c "import jax; assert jax.default_backend() == 'gpu'" 2>/dev/null; then
  echo "error: JAX sees no GPU ($($py -c 'import jax; print(jax.default_backend())' 2>&1 | tail -1)): not training on the CPU" \
    | tee -a "$summary"
  exit 3
fi
. tools/run_facts.sh   # checkpoint_epoch, run_total, run_augment, evaluated_epoch
pack_main() {  # the run folder as resuming needs it (and its evaluations), into $OUT/main.tar
  [ -f "$run/checkpoint.npz" ] || return 0   # no epoch done (the stage skipped or cut off before one)
  # written beside and renamed: a kill while the second one is written keeps the first; last.keras comes
  # back only where no best.keras does (fit then reports last.keras: no epoch beat the best it remembers)
  local last=(--exclude=last.keras)
  [ -f "$run/best.keras" ] || last=()
  tar -C "$run" -cf "$OUT/.main.tar.tmp" --exclude=tensorboard "${last[@]}" --exclude=latest.keras \
    --exclude=run.lock --exclude='.*.tmp*' --exclude='.*.pending.keras' . && mv "$OUT/.main.tar.tmp" "$OUT/main.tar" &&
    echo "main.tar: $(du -m "$OUT/main.tar" | cut -f1) MiB" >> "$summary"
}

# 1. The full-resolution run: resumed where the repo carries it, branched, or new.
run=$work/run
if [ -f "$RUN/checkpoint.npz" ] && [ -n "${AUGMENT:-}" ] && [ "$(run_augment "$RUN")" != "$AUGMENT" ]; then
  # a new run from RUN's checkpoint (RUN is only read); a RUN that trains with AUGMENT already is resumed below
  echo "branching $RUN at $(checkpoint_epoch "$RUN") of $(run_total "$RUN") epochs: --augment $AUGMENT from here on" >> "$summary"
  fit=(--branch-from "$RUN" --output "$run" --augment "$AUGMENT" --workers 8 ${EPOCHS:+--epochs "$EPOCHS"} "${moved[@]}")
elif [ -f "$RUN/checkpoint.npz" ]; then
  cp -r "$RUN" "$run"
  echo "resuming $RUN: $(checkpoint_epoch "$run") of $(run_total "$run") epochs done" >> "$summary"
  # the data's place here (and 8 input threads for a recipe chosen with AUGMENT); the rest is saved
  fit=(--output "$run" --resume ${EPOCHS:+--epochs "$EPOCHS"} "${moved[@]}" ${AUGMENT:+--workers 8})
elif [ -n "$RUN" ] && [ "$RUN" != none ]; then   # a typo must not start a new run
  echo "error: RUN=$RUN: no $RUN/checkpoint.npz to resume; RUN=none starts a new run" | tee -a "$summary"
  exit 2
else
  echo "RUN=${RUN:-(none given)}: a new run" >> "$summary"
  fit=(--preset "$preset" "${data[@]}" --epochs "${EPOCHS:-$new_total}" --batch-size 8 --output-weights all
       --augment "${AUGMENT:-paper}" --output "$run" ${AUGMENT:+--workers 8})
fi
main_s=$(( MAIN_S < $(left) ? MAIN_S : $(left) ))
stage fit_main "$main_s" $py -m itnet_keras.fit "${fit[@]}"
main_rc=$?
pack_main   # at once: what follows may be cut off
[ $main_rc = 0 ] && miou "$run/evaluation.json"
# its last completed epoch, batch norms recalibrated, on val: a run cut off has no evaluation yet, and a
# finished one's is of best.keras, the epoch val chose (last.keras comes back only without one: main.tar),
# unless that is the last epoch
if [ $main_rc = 0 ] && [ "$(evaluated_epoch "$run/evaluation.json")" = "$(checkpoint_epoch "$run")" ]; then
  echo "latest: the last epoch is the one evaluated above (no latest/evaluation.json)" >> "$summary"
elif [ -f "$run/last.keras" ]; then
  stage recalibrate_latest $(( $(left) > 75 ? 75 : $(left) )) $py -m itnet_keras.recalibrate "$run/last.keras" \
    "${moved[@]}" --output "$run/latest.keras" &&
  stage evaluate_latest $(( $(left) > 75 ? 75 : $(left) )) $py -m itnet_keras.evaluate "$run/latest.keras" \
    "${data[@]}" --split val --output "$run/latest" && miou "$run/latest/evaluation.json"
fi
[ -f "$run/checkpoint.npz" ] && echo "the checkpoint holds epoch $(checkpoint_epoch "$run") of $(run_total "$run")" >> "$summary"
pack_main

# 2. The comparisons (items 2 and 3): same model, epochs and seed; the recipe and the output weights vary.
names=(paper_all strong_all paper_thinned4)
flags=("--augment paper --output-weights all" "--augment strong --output-weights all"
       "--augment paper --output-weights thinned:4")
share=$(( COMPARE_EPOCHS > 0 ? $(left) / 3 : 0 ))   # the same time limit for each, so that a cut-off leaves them comparable
[ "$share" -lt 60 ] && echo "comparisons: skipped, $(left) s left" | tee -a "$summary"
for i in 0 1 2; do
  [ "$share" -lt 60 ] && break
  # shellcheck disable=SC2086  # the flags are words
  stage "cmp_${names[$i]}" "$share" $py -m itnet_keras.fit --preset "$preset" "${cmp_data[@]}" "${cmp_scale[@]}" \
    --epochs "$COMPARE_EPOCHS" --batch-size 8 --workers 8 ${flags[$i]} --output "$work/cmp_${names[$i]}" \
    && miou "$work/cmp_${names[$i]}/evaluation.json"
done
compared=$(cd "$work" && ls -d cmp_* 2>/dev/null)
# shellcheck disable=SC2086  # the folder names are words
[ -n "$compared" ] && tar -C "$work" -cf "$OUT/compare.tar" --exclude='*.keras' --exclude=checkpoint.npz \
  --exclude=tensorboard --exclude=run.lock $compared
tar -C "$work" -cf "$OUT/logs.tar" logs
echo "done after $((SECONDS - start)) s" >> "$summary"
cat "$summary"
