"""Does `fit` wait for every step? Training images/s end to end through `fit.run`, as it
is (its batch hooks are async-safe: Keras dispatches the next step without waiting for the
last one's logs) against the same run with one blocking batch hook added (Keras then
converts every step's logs at once, on the main thread: how `fit` ran before), in turns.

    KERAS_BACKEND=jax python tools/fit_dispatch_bench.py [--rounds 3] [--output FILE.md] \
        [fit flags, e.g. --preset camvid_shared --data camvid --epochs 4]

Each run is its own process (its own compilation) of `fit` with the flags given (default
`--limit 256 --epochs 4`; always `--bn-batches 0`); the epochs after the first are timed
(training and validation, as `fit` runs them): the training images of an epoch (its
batches x the batch size) over the median epoch time give the run's images/s.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from itnet_keras.cli import description  # noqa: E402
from itnet_keras.files import markdown_table, write_atomic  # noqa: E402

RUN = textwrap.dedent("""
    import json, sys, time
    import keras
    from itnet_keras import fit
    from itnet_keras.config import parse_config

    class EpochTimes(keras.callbacks.Callback):
        seconds, batches = [], []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            EpochTimes.seconds.append(time.perf_counter() - self.start)
            EpochTimes.batches.append(self.params["steps"])  # training batches per epoch

    class Blocking(keras.callbacks.Callback):  # a batch hook that is not async-safe
        def on_train_batch_end(self, batch, logs=None):
            pass

    config, given = parse_config(json.loads(sys.argv[1]))
    fit.run(config, given, callbacks=[EpochTimes(), *([Blocking()] if sys.argv[2] == "blocking" else [])])
    print("EPOCHS", json.dumps({"seconds": EpochTimes.seconds, "batches": EpochTimes.batches,
                                "batch_size": config.batch_size}))
""")


def build_parser():
    parser = argparse.ArgumentParser(prog="python tools/fit_dispatch_bench.py", description=description(__doc__))
    parser.add_argument("--rounds", type=int, default=3, help="pairs of runs, in turns")
    parser.add_argument("--output", help="also write the table (markdown) to this file")
    return parser


def run_once(fit_flags, mode, folder):
    """Training images/s of one `fit` run (the median of its epochs after the first)."""
    flags = [*fit_flags, "--bn-batches", "0", "--output", str(folder)]
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))  # and a device's wheels
    result = subprocess.run([sys.executable, "-c", RUN, json.dumps(flags), mode], cwd=ROOT, capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": path})
    if result.returncode:
        raise SystemExit(f"error: the {mode} run failed:\n{result.stderr[-3000:]}")
    epochs = json.loads(result.stdout.split("EPOCHS", 1)[1])
    if len(epochs["seconds"]) < 2:
        raise SystemExit("error: --epochs: expected at least 2 (the first epoch compiles and is not timed)")
    return epochs["batches"][-1] * epochs["batch_size"] / statistics.median(epochs["seconds"][1:])


def main(argv=None):
    args, fit_flags = build_parser().parse_known_args(argv)
    fit_flags = fit_flags or ["--limit", "256", "--epochs", "4"]
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for round_ in range(1, args.rounds + 1):
            speeds = {mode: run_once(fit_flags, mode, Path(work) / f"{mode}{round_}") for mode in ("blocking", "async")}
            rows.append([round_, f"{speeds['blocking']:.1f}", f"{speeds['async']:.1f}",
                         f"{speeds['async'] / speeds['blocking']:.3f}"])
            print(*rows[-1], flush=True)
            table = markdown_table(["round", "a blocking batch hook (before), images/s",
                                    "async-safe hooks (now), images/s", "now / before"], rows)
            text = (f"`fit` end to end on {os.environ.get('KERAS_BACKEND', 'tensorflow')}, flags "
                    f"`{' '.join(fit_flags)}`, median of the epochs after the first\n\n{table}\n")
            if args.output:  # after every round: a run cut off keeps the rounds done
                write_atomic(args.output, text)
    print(text)


if __name__ == "__main__":
    main()
