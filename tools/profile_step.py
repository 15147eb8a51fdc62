"""Where the time of one JAX training step goes: `fit`'s step taken apart.

    KERAS_BACKEND=jax python tools/profile_step.py [--preset camvid_shared] [--input-size 352x480]
        [--batch-size 8] [--steps 5] [--remat] [--unroll] [--trace DIR [--top 20]] [--hlo FILE]

Builds the model and data as `python -m itnet_keras.lab.bench` does (compiled as `fit` compiles
it), then jit-compiles and times, each as the median of `--steps` runs:

- `forward`: the model `fit` trains, in training mode (all N outputs at full resolution;
  with `--remat` the N heads' logits, `model.training_model`);
- `loss + gradients`: forward, the weighted per-output losses and the backward pass;
- `train step`: Keras' `train_step` as `fit` runs it (adds the optimizer update and the
  N mIoU metrics);
- `metrics`: the N mIoU updates alone, on fixed logits.

For each: the step time, XLA's FLOP and byte counts (`cost_analysis`) and the achieved
GFLOP/s. `--trace DIR` also records a `jax.profiler` trace of three train steps there
(open with TensorBoard's profile plugin or Perfetto); `--top K` lists the K XLA ops that
took the most time in it, per step (op names as in the compiled train step, which `--hlo
FILE` writes out). `--unroll` profiles the unrolled variant instead of the loop.
"""

import argparse
import collections
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from itnet_keras.cli import description, parse_size, positive  # noqa: E402
from itnet_keras.config import FitConfig  # noqa: E402
from itnet_keras.lab.bench import compiled_model  # noqa: E402
from itnet_keras.losses import output_weights  # noqa: E402
from itnet_keras.metrics import SegmentationMeanIoU  # noqa: E402
from itnet_keras.presets import PRESET_DATASET  # noqa: E402

# jax is imported where it runs, after the check that Keras runs on JAX.

TRACED_STEPS = 3  # train steps in the `--trace` profile


def timed(function, args, steps):
    """(compiled function, median seconds): jit, compile, one warm-up run, then `steps` runs."""
    import jax

    compiled = jax.jit(function).lower(*args).compile()
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return compiled, statistics.median(times)


def costs(compiled):
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return cost.get("flops", float("nan")), cost.get("bytes accessed", float("nan"))


def top_ops(trace, count, steps):
    """[(ms per step, calls per step, op)]: the `count` XLA ops that took the most time in the
    trace: a GPU's "XLA Ops" line (else its streams' kernels), else the CPU's XLA threads
    (their times summed: an op split over two threads counts twice its wall time)."""
    import jax

    path = max(Path(trace).rglob("*.xplane.pb"), key=lambda p: p.stat().st_mtime)
    planes = list(jax.profiler.ProfileData.from_file(str(path)).planes)
    device = [line for p in planes if p.name.startswith("/device:") for line in p.lines]
    lines = ([line for line in device if line.name == "XLA Ops"]
             or [line for line in device if line.name.startswith("Stream")]  # kernels, where no op line
             or [line for p in planes if p.name == "/host:CPU" for line in p.lines
                 if line.name.startswith("tf_XLA")])  # XLA's thread pools
    total, calls = collections.Counter(), collections.Counter()
    for line in lines:
        # Not the runtime's own events (ThunkExecutor::Execute, ..., and an op's "end: op" mark),
        # nor an op that holds others (a while loop's event spans its body's ops): each op's
        # time is counted once.
        ops = sorted((e for e in line.events if "::" not in e.name and not e.name.startswith("end: ")),
                     key=lambda e: e.start_ns)
        for event, following in zip(ops, ops[1:] + [None]):
            if following is None or following.start_ns >= event.end_ns:
                total[event.name] += event.duration_ns
                calls[event.name] += 1
    return [(ns / steps / 1e6, calls[op] / steps, op) for op, ns in total.most_common(count)]


def profile(preset, input_size, batch_size, steps, remat=False, trace=None, top=0, hlo=None, unroll=False):
    import jax

    model, images, targets = compiled_model(preset, batch_size, unroll, input_size, remat)
    # On the device once: the timed calls and the trace leave out the batch's host-to-device
    # copies (the labels once per output, as `fit` sends them), which `bench` counts.
    images, targets = jax.device_put((images, targets))
    data = (images, targets, None)
    model._symbolic_build(data_batch=data)
    state = model._get_jax_state(trainable_variables=True, non_trainable_variables=True,
                                 optimizer_variables=True, metrics_variables=True)
    trainable, non_trainable = state[:2]
    names = model.output_names
    labels = targets[names[0]]
    losses = [model.loss[name] for name in names]  # as `fit` compiles: one loss per output, weights `all`
    weights = dict(zip(names, output_weights(FitConfig().output_weights, len(names))))

    def forward(trainable, non_trainable, images):
        return model.stateless_call(trainable, non_trainable, images, training=True)[0]

    def loss_and_gradients(trainable, non_trainable, images, labels):
        def loss(trainable):
            outputs = forward(trainable, non_trainable, images)
            return sum(weights[n] * fn(labels, o) for n, fn, o in zip(names, losses, outputs))

        return jax.value_and_grad(loss)(trainable)

    classes = model.outputs[0].shape[-1]
    metrics = [SegmentationMeanIoU(classes, losses[0].ignore_label, resize=losses[0].resize)  # as `fit` compiles
               for _ in names]
    logits = [jax.numpy.zeros((batch_size, *model.outputs[0].shape[1:]), "float32")] * len(names)

    def update_metrics(values, logits, labels):
        return [m.stateless_update_state(v, labels, o)
                for m, v, o in zip(metrics, values, logits)]

    metric_states = [[v.value for v in m.variables] for m in metrics]
    phases = {
        "forward": (forward, (trainable, non_trainable, images)),
        "loss + gradients": (loss_and_gradients, (trainable, non_trainable, images, labels)),
        "train step": (model.train_step, (state, data)),
        f"metrics ({len(metrics)} mIoU updates)": (update_metrics, (metric_states, logits, labels)),
    }
    rows, ops = [], []
    for phase, (function, args) in phases.items():
        compiled, seconds = timed(function, args, steps)
        flops, bytes_accessed = costs(compiled)
        rows.append({"phase": phase, "step_s": seconds, "gflops": flops / 1e9, "gbytes": bytes_accessed / 1e9,
                     "achieved_gflops_per_s": flops / 1e9 / seconds})
        print(f"| {phase} | {seconds * 1e3:.1f} | {flops / 1e9:.1f} | {bytes_accessed / 1e9:.2f} | "
              f"{flops / 1e9 / seconds:.0f} |", flush=True)
        if phase == "train step" and hlo:
            Path(hlo).write_text(compiled.as_text())
        if phase == "train step" and trace:
            with jax.profiler.trace(str(trace)):
                for _ in range(TRACED_STEPS):
                    jax.block_until_ready(compiled(*args))
            ops = top_ops(trace, top, TRACED_STEPS) if top else []
    if ops:
        print("\n| train step op | ms per step (CPU: summed over threads) | calls per step |\n|---|---:|---:|")
        for ms, calls, op in ops:
            print(f"| {op} | {ms:.1f} | {calls:g} |")
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python tools/profile_step.py", description=description(__doc__))
    parser.add_argument("--preset", default="camvid_shared", choices=sorted(PRESET_DATASET))
    parser.add_argument("--input-size", type=parse_size, default=(352, 480), help="HEIGHTxWIDTH")
    parser.add_argument("--batch-size", type=positive(int), default=8)
    parser.add_argument("--steps", type=positive(int), default=5)
    parser.add_argument("--remat", action="store_true")
    parser.add_argument("--unroll", action="store_true", help="the unrolled variant instead of the loop")
    parser.add_argument("--trace", help="write a jax.profiler trace of the train step to this folder")
    parser.add_argument("--top", type=int, default=0, help="with --trace: list the K ops that took the most time")
    parser.add_argument("--hlo", help="write the compiled train step's optimized HLO text to this file")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    if args.top and not args.trace:
        parser.error("--top lists the ops of the trace: give --trace DIR")
    if args.top:  # XLA's CPU backend records its ops in a trace only with this flag
        os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true"
    import jax
    import keras

    if keras.backend.backend() != "jax":
        parser.error(f"needs KERAS_BACKEND=jax (this process runs {keras.backend.backend()})")
    print(f"{args.preset}, {args.input_size[0]}x{args.input_size[1]}, batch {args.batch_size}, "
          f"{jax.devices()[0].device_kind}, median of {args.steps}{', --remat' if args.remat else ''}"
          f"{', unrolled' if args.unroll else ''}\n")
    print("| phase | ms | GFLOP | GB accessed | GFLOP/s |\n|---|---:|---:|---:|---:|", flush=True)
    rows = profile(args.preset, args.input_size, args.batch_size, args.steps, args.remat, args.trace, args.top,
                   args.hlo, args.unroll)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
