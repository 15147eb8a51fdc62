"""Latency of exported files under LiteRT (default CPU delegate, batch 1), per output n.

- loop file, `anytime(image, n)`: one call that runs n iterations;
- loop file, app-driven: `encode`, then `step` 1..n (the time to output n, cumulative);
- `outputs` of the loop file and of the unrolled file: all N outputs in one call (the
  unrolled graph has no run-time iteration count, so this is where the two compare).

Each number is the median of `repeats` timed calls after one untimed call.
"""

import json
import statistics
import time
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from itnet_keras.export.flatbuffer import load, signature_subgraphs


def _median_seconds(call, repeats):
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _image(interpreter, signature="outputs"):
    details = interpreter.get_signature_runner(signature).get_input_details()["image"]
    return np.random.default_rng(0).random(details["shape"], dtype=np.float32)


def loop_latency(path, threads, repeats, iterations):
    """{'anytime': [s per n], 'step': [cumulative s per n]} for n = 1..iterations."""
    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    image = _image(interpreter)
    anytime = interpreter.get_signature_runner("anytime")
    encode, step = interpreter.get_signature_runner("encode"), interpreter.get_signature_runner("step")
    result = {"anytime": [_median_seconds(lambda n=n: anytime(image=image, iterations=np.int32(n)), repeats)
                          for n in range(1, iterations + 1)]}

    def app_driven():
        marks, start = [], time.perf_counter()
        state = encode(image=image)
        for n in range(1, iterations + 1):
            out = step(**state, n=np.int32(n))
            state = {k: v for k, v in out.items() if k.startswith("state_")}
            marks.append(time.perf_counter() - start)
        return marks

    app_driven()
    runs = np.array([app_driven() for _ in range(repeats)])
    result["step"] = np.median(runs, axis=0).tolist()
    return result


def outputs_latency(path, threads, repeats):
    """Seconds of one `outputs` call (all N outputs)."""
    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    image = _image(interpreter)
    run = interpreter.get_signature_runner("outputs")
    return _median_seconds(lambda: run(image=image), repeats)


def iterations_of(path):
    """N of a loop `.tflite` file: from its sidecar metadata, else from its `outputs` signature."""
    metadata = Path(path).with_suffix(".json")
    if metadata.is_file():
        return json.loads(metadata.read_text())["num_iterations"]
    model = load(path)
    return len(model.signatureDefs[list(signature_subgraphs(model)).index("outputs")].outputs)


def preset_files(preset, input_size, folder, **model_args):
    """A loop and an unrolled float32 file of `preset` (same random weights) in `folder`."""
    from itnet_keras.export.tflite import convert_tflite
    from itnet_keras.model import build_itnet

    loop_file, unrolled_file = Path(folder) / "loop.tflite", Path(folder) / "unrolled.tflite"
    model = build_itnet(preset, input_shape=(*input_size, 3), **model_args)
    convert_tflite(model, loop_file, "float32", input_size=input_size)
    unrolled = build_itnet(preset, input_shape=(*input_size, 3), unroll=True, **model_args)
    unrolled.set_weights(model.get_weights())
    convert_tflite(unrolled, unrolled_file, "float32", input_size=input_size)
    return loop_file, unrolled_file


def measure(loop_file, unrolled_file, threads, repeats):
    """One row per thread count: `anytime_s` and `step_s` per n, `loop_outputs_s`, `unrolled_outputs_s`."""
    n = iterations_of(loop_file)
    rows = []
    for count in threads:
        loop = loop_latency(loop_file, count, repeats, n)
        unrolled = outputs_latency(unrolled_file, count, repeats) if unrolled_file else None
        rows.append({"threads": count, "anytime_s": loop["anytime"], "step_s": loop["step"],
                     "loop_outputs_s": outputs_latency(loop_file, count, repeats), "unrolled_outputs_s": unrolled})
    return rows
