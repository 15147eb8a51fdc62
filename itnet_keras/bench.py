"""Training-step time and peak memory of the loop against the `unroll` variant.

    python -m itnet_keras.bench [--presets camvid_shared camvid_independent]
        [--input-size 352x480] [--batch-sizes 8 1] [--steps 5] [--output FILE.md]

Each (preset, batch size, variant) runs in its own process, so that its peak resident
memory (`ru_maxrss`) is its own: build, compile with one masked loss per output
(all outputs weighted alike, the training default), one untimed step (tracing), then `--steps`
timed steps on fixed random data; the table reports the median step time. The input
pipeline is not part of it (see `itnet_keras.bench_input`).
"""

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

from itnet_keras.costs import parse_size


def measure(preset, batch_size, unroll, input_size, steps):
    """{'compile_s', 'step_s' (median), 'peak_rss_mb'} of one variant, in this process."""
    import keras
    import numpy as np

    from itnet_keras.datasets import DATASETS
    from itnet_keras.losses import MaskedCrossEntropy, output_weights
    from itnet_keras.model import build_itnet
    from itnet_keras.presets import PRESET_DATASET

    spec = DATASETS[PRESET_DATASET[preset]]
    model = build_itnet(preset, input_shape=(*input_size, 3), unroll=unroll)
    names = model.output_names
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss={name: MaskedCrossEntropy(spec.ignore_label) for name in names},
        loss_weights=dict(zip(names, output_weights("all", len(names)))),
    )
    rng = np.random.default_rng(0)
    images = rng.random((batch_size, *input_size, 3), dtype=np.float32)
    labels = rng.integers(0, spec.num_classes, (batch_size, *input_size)).astype(np.int32)
    targets = {name: labels for name in names}
    start = time.perf_counter()
    model.train_on_batch(images, targets)
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        model.train_on_batch(images, targets)
        times.append(time.perf_counter() - start)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"compile_s": compile_s, "step_s": statistics.median(times), "peak_rss_mb": peak_kb / 1024}


def measure_in_subprocess(preset, batch_size, unroll, input_size, steps):
    args = [sys.executable, "-m", "itnet_keras.bench", "--child", preset, str(batch_size),
            str(int(unroll)), f"{input_size[0]}x{input_size[1]}", str(steps)]
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"benchmark of {preset} batch {batch_size} unroll={unroll} failed:\n"
                           f"{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run(presets, input_size, batch_sizes, steps):
    """Rows: one per (preset, batch size), loop and unroll side by side."""
    rows = []
    for preset in presets:
        for batch_size in batch_sizes:
            loop, unrolled = (measure_in_subprocess(preset, batch_size, unroll, input_size, steps)
                              for unroll in (False, True))
            rows.append({"preset": preset, "batch_size": batch_size, "loop": loop, "unroll": unrolled})
            print(format_row(rows[-1]), flush=True)
    return rows


HEADER = ("| preset | batch | loop step s | unroll step s | loop / unroll | loop peak MB | "
          "unroll peak MB | loop trace s | unroll trace s |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")


def format_row(row):
    loop, unrolled = row["loop"], row["unroll"]
    return (f"| {row['preset']} | {row['batch_size']} | {loop['step_s']:.3f} | {unrolled['step_s']:.3f} | "
            f"{loop['step_s'] / unrolled['step_s']:.2f} | {loop['peak_rss_mb']:.0f} | "
            f"{unrolled['peak_rss_mb']:.0f} | {loop['compile_s']:.0f} | {unrolled['compile_s']:.0f} |")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        preset, batch_size, unroll, size, steps = argv[1:]
        print(json.dumps(measure(preset, int(batch_size), bool(int(unroll)), parse_size(size), int(steps))))
        return
    parser = argparse.ArgumentParser(prog="python -m itnet_keras.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["camvid_shared", "camvid_independent"])
    parser.add_argument("--input-size", type=parse_size, default=(352, 480), help="HEIGHTxWIDTH")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 1])
    parser.add_argument("--steps", type=int, default=5, help="timed training steps (median)")
    parser.add_argument("--output", help="also write the table (markdown) to this file")
    args = parser.parse_args(argv)
    print(HEADER, flush=True)
    rows = run(args.presets, args.input_size, args.batch_sizes, args.steps)
    if args.output:
        from itnet_keras.evaluate import write_atomic

        command = "python -m itnet_keras.bench " + " ".join(argv)
        text = (f"`{command}`\n\n{platform.processor() or platform.machine()}, "
                f"{args.input_size[0]}x{args.input_size[1]}, median of {args.steps} steps\n\n"
                + HEADER + "\n" + "\n".join(format_row(r) for r in rows) + "\n")
        write_atomic(args.output, text)


if __name__ == "__main__":
    main()
