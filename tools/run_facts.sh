# What a run folder records, for tools/device_train.sh and tools/device_session.sh (sourced; $py is
# the Python to read it with). Each prints its answer, or the error on stdout for the caller to check.
checkpoint_epoch() {  # checkpoint_epoch RUN_FOLDER: the epochs its checkpoint holds (log.csv may hold one more)
  $py -c "import json, sys, numpy; print(json.loads(str(numpy.load(sys.argv[1])['state']))['epoch'])" "$1/checkpoint.npz" 2>&1
}
run_total() {  # run_total RUN_FOLDER: the total epochs its config.json records
  $py -c "import json, sys; print(json.load(open(sys.argv[1]))['fit']['epochs'])" "$1/config.json" 2>&1
}
run_augment() {  # run_augment RUN_FOLDER: the --augment its config.json records
  $py -c "import json, sys; print(json.load(open(sys.argv[1]))['fit'].get('augment', 'paper'))" "$1/config.json" 2>&1
}
evaluated_epoch() {  # evaluated_epoch EVALUATION_JSON: the epoch of the model it evaluates (empty: none recorded)
  $py -c "import json, sys; print(json.load(open(sys.argv[1])).get('model', {}).get('epoch', ''))" "$1" 2>/dev/null
}
