"""Latency of exported files under LiteRT (default CPU delegate, batch 1), per output n.

- loop file, `anytime(image, n)`: one call that runs n iterations;
- loop file, app-driven: `encode`, then `step` 1..n (the time to output n, cumulative);
- `outputs` of the loop file and of the unrolled file: all N outputs in one call (the
  unrolled graph has no run-time iteration count, so this is where the two compare).

Each number is the median of `repeats` timed calls after one untimed call.
"""

import statistics
import time

import numpy as np
from ai_edge_litert.interpreter import Interpreter


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
