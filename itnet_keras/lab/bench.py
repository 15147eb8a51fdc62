"""Training throughput and peak memory of the loop against the `unroll` variant, on the
Keras backend this process runs (`KERAS_BACKEND`).

    python -m itnet_keras.lab.bench [--presets camvid_shared camvid_independent]
        [--input-size 352x480] [--batch-sizes 8 1] [--steps 5] [--remat]
        [--precision mixed_bfloat16] [--output FILE.md]
    python -m itnet_keras.lab.bench --compiled-memory --presets cityscapes_shared \
        --input-size 512x1024 --batch-sizes 8 [--remat]          # JAX: XLA's estimate, nothing runs

Each (preset, batch size, variant) runs in its own process, so that its peak memory is its
own: build, compile as `fit` does (one masked loss and one mIoU metric per output, all
outputs weighted alike, Adam with the step schedule), one untimed step (tracing), then
`--steps` timed steps on fixed random data; the table reports the median step time and
images/s. Peak memory is the device's (`peak_bytes_in_use` of JAX, TensorFlow's GPU
memory info, torch's `max_memory_allocated`) on a GPU, else the process's peak RSS. The
input pipeline is not part of it (see `itnet_keras.lab.bench_input`).

`--compiled-memory` (JAX) compiles the training step for the given shapes and reports
XLA's memory analysis (arguments + outputs + temporaries - aliased) and its FLOP count,
without running the step: a memory bound for shapes too large to try on this machine.
"""

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time

from itnet_keras.cli import description, parse_size, positive
from itnet_keras.presets import PRECISIONS, PRESET_DATASET


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m itnet_keras.lab.bench", description=description(__doc__))
    parser.add_argument("--presets", nargs="+", default=["camvid_shared", "camvid_independent"],
                        choices=sorted(PRESET_DATASET))
    parser.add_argument("--input-size", type=parse_size, default=(352, 480), help="HEIGHTxWIDTH")
    parser.add_argument("--batch-sizes", type=positive(int), nargs="+", default=[8, 1])
    parser.add_argument("--steps", type=positive(int), default=5, help="timed training steps (median)")
    parser.add_argument("--remat", action="store_true", help="train as `fit --remat` does")
    parser.add_argument("--compiled-memory", action="store_true",
                        help="JAX: XLA's memory estimate of the compiled step instead of running it")
    parser.add_argument("--variants", nargs="+", default=["loop", "unroll"], choices=["loop", "unroll"])
    parser.add_argument("--precision", default="float32", choices=PRECISIONS,
                        help="Keras' dtype policy for the model (mixed: bfloat16 computation, float32 weights)")
    parser.add_argument("--output", help="also write the table (markdown) to this file")
    return parser


if __name__ == "__main__" and sys.argv[1:2] != ["--child"]:  # --help and flag errors answer before the imports below
    build_parser().parse_args()

import keras  # noqa: E402
import numpy as np  # noqa: E402

from itnet_keras.config import FitConfig  # noqa: E402
from itnet_keras.datasets import DATASETS  # noqa: E402
from itnet_keras.devices import peak_memory  # noqa: E402
from itnet_keras.files import write_atomic  # noqa: E402
from itnet_keras.fit import compile_model  # noqa: E402
from itnet_keras.model import build_itnet, iterative_block  # noqa: E402
from itnet_keras.pipeline import label_dtype  # noqa: E402

# The backends' own modules (jax, tensorflow, torch) are imported where the running
# backend is known: only one of them need be installed.


def compiled_model(preset, batch_size, unroll, input_size, remat):
    """The model `fit` trains, compiled as `fit` compiles it, and one batch of random data."""
    spec = DATASETS[PRESET_DATASET[preset]]
    model = build_itnet(preset, input_shape=(*input_size, 3), unroll=unroll)
    model, _ = compile_model(model, FitConfig(preset=preset, remat=remat), spec, steps_per_epoch=1000)
    rng = np.random.default_rng(0)
    images = rng.random((batch_size, *input_size, 3), dtype=np.float32)
    labels = rng.integers(0, spec.num_classes, (batch_size, *input_size)).astype(label_dtype(spec))  # as fit's
    return model, images, {name: labels for name in model.output_names}


def measure(preset, batch_size, unroll, input_size, steps, remat=False):
    """{'compile_s', 'step_s' (median), 'images_per_s', 'peak_mb', 'memory', 'compute_dtype'} of one
    variant (its compute dtype: the loop's, bfloat16 under a mixed-precision policy)."""
    model, images, targets = compiled_model(preset, batch_size, unroll, input_size, remat)
    start = time.perf_counter()
    model.train_on_batch(images, targets)
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        model.train_on_batch(images, targets)  # returns numpy values: the step has finished
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    peak, what = peak_memory()
    return {"compile_s": compile_s, "step_s": step_s, "images_per_s": batch_size / step_s,
            "peak_mb": peak / 2**20, "memory": what, "compute_dtype": iterative_block(model).compute_dtype}


def compiled_step(model, images, targets):
    """The JAX training step `fit` runs, lowered and compiled for these shapes (not run)."""
    import jax

    data = (images, targets, None)
    model._symbolic_build(data_batch=data)
    state = model._get_jax_state(trainable_variables=True, non_trainable_variables=True,
                                 optimizer_variables=True, metrics_variables=True)
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), (state, data))
    return jax.jit(model.train_step, donate_argnums=0).lower(*shapes).compile()


def compiled_memory(preset, batch_size, unroll, input_size, remat=False):
    """XLA's memory analysis and FLOPs of one training step (JAX), without running it."""
    model, images, targets = compiled_model(preset, batch_size, unroll, input_size, remat)
    start = time.perf_counter()
    compiled = compiled_step(model, images, targets)
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
            - memory.alias_size_in_bytes)
    return {"compile_s": time.perf_counter() - start, "peak_mb": peak / 2**20,
            "temp_mb": memory.temp_size_in_bytes / 2**20, "gflops": cost.get("flops", float("nan")) / 1e9,
            "memory": "XLA estimate"}


def measure_in_subprocess(preset, batch_size, unroll, input_size, steps, remat=False, compiled=False,
                          precision="float32"):
    args = [sys.executable, "-m", "itnet_keras.lab.bench", "--child", preset, str(batch_size),
            str(int(unroll)), f"{input_size[0]}x{input_size[1]}", str(steps), str(int(remat)), str(int(compiled)),
            precision]
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"benchmark of {preset} batch {batch_size} unroll={unroll} remat={remat} failed:\n"
                           f"{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run(presets, input_size, batch_sizes, steps, remat=False, compiled=False, variants=("loop", "unroll"),
        measured=None, precision="float32"):
    """Rows: one per (preset, batch size), loop and unroll side by side. `measured(rows)` is
    called after every measurement with the rows so far, the last one maybe partial (a run
    cut off by a time limit keeps what it measured)."""
    rows = []
    for preset in presets:
        for batch_size in batch_sizes:
            row = {"preset": preset, "batch_size": batch_size}
            for variant in variants:
                row[variant] = measure_in_subprocess(preset, batch_size, variant == "unroll", input_size, steps,
                                                     remat, compiled, precision)
                if measured:
                    measured([*rows, row])
            rows.append(row)
            print(format_row(row, compiled), flush=True)
    return rows


HEADER = ("| preset | batch | loop images/s | unroll images/s | loop / unroll time | loop peak MB | "
          "unroll peak MB | memory | loop trace s | unroll trace s |\n"
          "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|")
COMPILED_HEADER = ("| preset | batch | loop peak MB | unroll peak MB | loop temp MB | unroll temp MB | "
                   "GFLOP per step | memory |\n|---|---:|---:|---:|---:|---:|---:|---|")


def format_row(row, compiled=False):
    """One table row; a variant not measured (`--variants`) shows as -."""
    loop, unrolled = row.get("loop"), row.get("unroll")

    def cells(key, form):
        return " | ".join("-" if v is None else format(v[key], form) for v in (loop, unrolled))

    memory = (loop or unrolled)["memory"]
    if compiled:
        return (f"| {row['preset']} | {row['batch_size']} | {cells('peak_mb', '.0f')} | {cells('temp_mb', '.0f')} | "
                f"{(loop or unrolled)['gflops']:.0f} | {memory} |")
    ratio = "-" if None in (loop, unrolled) else f"{loop['step_s'] / unrolled['step_s']:.2f}"
    return (f"| {row['preset']} | {row['batch_size']} | {cells('images_per_s', '.2f')} | {ratio} | "
            f"{cells('peak_mb', '.0f')} | {memory} | {cells('compile_s', '.0f')} |")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        preset, batch_size, unroll, size, steps, remat, compiled, precision = argv[1:]
        keras.mixed_precision.set_dtype_policy(precision)
        args = (preset, int(batch_size), bool(int(unroll)), parse_size(size))
        result = (compiled_memory(*args, remat=bool(int(remat))) if int(compiled)
                  else measure(*args, int(steps), remat=bool(int(remat))))
        print(json.dumps(result))
        return
    parser = build_parser()
    args = parser.parse_args(argv)
    backend = keras.backend.backend()
    if args.compiled_memory and backend != "jax":
        parser.error(f"--compiled-memory needs KERAS_BACKEND=jax (this process runs {backend})")
    header = COMPILED_HEADER if args.compiled_memory else HEADER
    print(header, flush=True)

    def write(rows):  # after every measurement: a bench cut off keeps its rows
        command = "python -m itnet_keras.lab.bench " + " ".join(argv)
        what = "compiled, not run" if args.compiled_memory else f"median of {args.steps} steps"
        text = (f"`KERAS_BACKEND={backend} {command}`\n\n{platform.processor() or platform.machine()}, "
                f"{args.input_size[0]}x{args.input_size[1]}, {what}{', --remat' if args.remat else ''}"
                f"{'' if args.precision == 'float32' else ', ' + args.precision}\n\n"
                + header + "\n" + "\n".join(format_row(r, args.compiled_memory) for r in rows) + "\n")
        write_atomic(args.output, text)

    run(args.presets, args.input_size, args.batch_sizes, args.steps, args.remat, args.compiled_memory,
        args.variants, measured=write if args.output else None, precision=args.precision)


if __name__ == "__main__":
    main()
