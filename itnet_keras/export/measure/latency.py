"""Latency of exported files under LiteRT (default CPU delegate, batch 1), per output n.

- loop file, `anytime(image, n)`: one call that runs n iterations;
- loop file, app-driven: `encode`, `step` 1..n, then `upsample` of the last logits (an
  app that decides after each step); and `encode`, `step` 1..n-1, then `finish` n (an app
  that knows which step is its last, as a deadline tells it);
- unrolled, per output n: signature `anytime_n` of a file of unrolled graphs, one per n,
  each running n iterations and returning output n (`unrolled_anytime_file`): what a
  feed-forward network that stops at output n costs, the baseline of both loop paths;
  and `state_n`, which also returns the state (the same work as the loop's);
- `outputs` of the loop file and of the unrolled file: all N outputs in one call;
- per quantization mode (`quant_latency`): `anytime(image, n)` of the loop file and the
  static file of output n (`--flavor static`), float32 beside int8.

Each number is the median of `repeats` timed calls after one untimed call; the calls that
are compared take turns (see `_medians`).
"""

import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from itnet_keras.console import quietly
from itnet_keras.datasets import get_spec
from itnet_keras.evaluate import load_itnet
from itnet_keras.export.camera_input import file_image
from itnet_keras.export.flatbuffer import iterations_of
from itnet_keras.export.signatures import SIGNATURES
from itnet_keras.export.static import unrolled_copy
from itnet_keras.export.tflite import check_tflite, convert_static, convert_tflite, static_path, tflite_converter
from itnet_keras.files import write_atomic
from itnet_keras.layers import resize_like
from itnet_keras.model import anytime, build_itnet, encode, iterative_block, model_args
from itnet_keras.presets import PRESET_DATASET


def preset_model(path, preset):
    """The ItNet at `path` (`load_itnet`), measured at `preset`'s dataset: ValueError (naming
    the file and both class counts) where it has another number of classes."""
    model, spec = load_itnet(path), get_spec(PRESET_DATASET[preset])
    classes = model_args(model)["num_classes"]
    if classes != spec.num_classes:
        raise ValueError(f"{path} has {classes} classes, --preset {preset}'s dataset {spec.name} {spec.num_classes}")
    return model


def timed_in_turns(calls, repeats):
    """{name: [seconds of each call]} of `calls` ({name: call}), after one untimed call each.
    The calls take turns, `repeats` rounds, so that a slow spell of the machine hits all
    alike and their ratios hold even when the absolute times drift."""
    with quietly():  # LiteRT announces its CPU delegate at a file's first call
        for call in calls.values():
            call()
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return times


def _medians(calls, repeats):
    """{name: median seconds} of `calls` timed in turns (`timed_in_turns`)."""
    return {name: statistics.median(values) for name, values in timed_in_turns(calls, repeats).items()}


def _image(interpreter, signature="outputs"):
    """A random image for `signature`'s input: float in 0..1, or bytes for a uint8 or int8 input."""
    details = interpreter.get_signature_runner(signature).get_input_details()["image"]
    pixels = np.random.default_rng(0).integers(0, 256, details["shape"], dtype=np.uint8)
    return file_image(pixels, details["dtype"], (1 / 255, 0.0))


def per_output_latency(path, threads, repeats, iterations, unrolled_anytime=None):
    """{'anytime', 'step', 'finish' (and 'unrolled', 'unrolled_state'): [seconds to output n
    for n = 1..iterations]}.

    `step` and `finish` are the times an app takes to output n when it drives the loop:
    `encode`, n `step` calls and one `upsample`, or n - 1 `step` calls and `finish`;
    `unrolled` and `unrolled_state` are signatures `anytime_n` and `state_n` of an
    `unrolled_anytime_file`."""
    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    image = _image(interpreter)
    anytime = interpreter.get_signature_runner("anytime")
    encode, step = interpreter.get_signature_runner("encode"), interpreter.get_signature_runner("step")
    upsample, finish = interpreter.get_signature_runner("upsample"), interpreter.get_signature_runner("finish")
    unrolled = None if unrolled_anytime is None else Interpreter(model_path=str(unrolled_anytime),
                                                                 num_threads=threads)

    def app_driven(n, last_known):
        state = encode(image=image)
        for done in range(1, n if last_known else n + 1):
            out = step(**state, n=np.int32(done))
            state = {k: v for k, v in out.items() if k.startswith("state_")}
        if last_known:
            return finish(**state, n=np.int32(n))
        return upsample(logits=out["logits"])

    result = {"anytime": [], "step": [], "finish": []}
    if unrolled is not None:
        result.update(unrolled=[], unrolled_state=[])
    for n in range(1, iterations + 1):
        calls = {"anytime": partial(anytime, image=image, iterations=np.int32(n)),
                 "step": partial(app_driven, n, False), "finish": partial(app_driven, n, True)}
        if unrolled is not None:
            calls["unrolled"] = partial(unrolled.get_signature_runner(f"anytime_{n}"), image=image)
            calls["unrolled_state"] = partial(unrolled.get_signature_runner(f"state_{n}"), image=image)
        for name, seconds in _medians(calls, repeats).items():
            result[name].append(seconds)
    return result


def outputs_latency(loop_file, unrolled_file, threads, repeats):
    """{'loop', 'unrolled'}: seconds of one `outputs` call (all N outputs) of each file."""
    calls = {}
    for name, path in (("loop", loop_file), ("unrolled", unrolled_file)):
        if path is not None:
            interpreter = Interpreter(model_path=str(path), num_threads=threads)
            calls[name] = partial(interpreter.get_signature_runner("outputs"), image=_image(interpreter))
    return _medians(calls, repeats)


def unrolled_anytime_file(unrolled, path, input_size):
    """A float32 file of unrolled graphs (`unrolled`: a model built with `unroll=True`):
    `anytime_n`: image -> logits of output n, n iterations; the converter prunes what output
    n does not need (the coarser scales of the last iteration), as a network that stops at
    n would. `state_n`: the same, also returning the state: the work a loop must do."""
    block = iterative_block(unrolled)
    archive = keras.export.ExportArchive()
    archive.track(unrolled)
    spec = tf.TensorSpec((1, *input_size, 3), tf.float32, name="image")

    def with_state(image, n):
        logits, state = block.anytime(encode(unrolled, image), n, with_state=True)
        return {"logits": resize_like(logits, image), **{f"state_{l}": s for l, s in enumerate(state, start=1)}}

    keys = []
    for n in range(1, block.num_iterations + 1):
        archive.add_endpoint(f"anytime_{n}", lambda image, n=n: {"logits": anytime(unrolled, image, n)}, [spec])
        archive.add_endpoint(f"state_{n}", lambda image, n=n: with_state(image, n), [spec])
        keys += [f"anytime_{n}", f"state_{n}"]
    with tempfile.TemporaryDirectory() as work:
        archive.write_out(str(Path(work) / "saved_model"), verbose=False)
        candidate = Path(work) / "model.tflite"
        candidate.write_bytes(tflite_converter(Path(work) / "saved_model", keys, "float32", None).convert())
        check_tflite(candidate, keys, loop=False)
        write_atomic(path, candidate.read_bytes(), "wb")
    return path


def preset_files(preset, input_size, folder, **model_args):
    """Float32 files of `preset` with the same random weights in `folder`: the loop file,
    the unrolled file, and the unrolled per-output file (`unrolled_anytime_file`)."""
    folder = Path(folder)
    model = build_itnet(preset, input_shape=(*input_size, 3), **model_args)
    convert_tflite(model, folder / "loop.tflite", "float32", input_size=input_size)
    unrolled = unrolled_copy(model)
    convert_tflite(unrolled, folder / "unrolled.tflite", "float32", input_size=input_size)
    unrolled_anytime_file(unrolled, folder / "unrolled_anytime.tflite", input_size)
    return folder / "loop.tflite", folder / "unrolled.tflite", folder / "unrolled_anytime.tflite"


def check_signatures(path, needed, expected):
    """Raise ValueError naming the file unless it has the signatures `needed`."""
    found = sorted(Interpreter(model_path=str(path)).get_signature_list())
    if not set(needed) <= set(found):
        raise ValueError(f"{path} has signatures {', '.join(found) or 'none'}, not {', '.join(needed)}: "
                         f"expected {expected}")


def measure(loop_file, unrolled_file, threads, repeats, unrolled_anytime=None):
    """One row per thread count: `anytime_s`, `step_s`, `finish_s` (and `unrolled_s`,
    `unrolled_state_s` with an `unrolled_anytime_file`) per n, `loop_outputs_s`, `unrolled_outputs_s`."""
    check_signatures(loop_file, SIGNATURES, "a loop file of export/convert.py (its default flavour, of a model "
                     "built without unroll=True)")
    if unrolled_file is not None:
        check_signatures(unrolled_file, ("outputs",), "the export/convert.py file of a model built with unroll=True")
    n = iterations_of(loop_file)
    rows = []
    for count in threads:
        per_output = per_output_latency(loop_file, count, repeats, n, unrolled_anytime)
        outputs = outputs_latency(loop_file, unrolled_file, count, repeats)
        rows.append({"threads": count, "anytime_s": per_output["anytime"], "step_s": per_output["step"],
                     "finish_s": per_output["finish"],
                     "unrolled_s": per_output.get("unrolled"), "unrolled_state_s": per_output.get("unrolled_state"),
                     "loop_outputs_s": outputs["loop"],
                     "unrolled_outputs_s": outputs.get("unrolled")})
    return rows


def quant_files(preset, input_size, folder, quants, iterations, calibration_images, input_type="float32",
                loop=True, trained=None, **model_args):
    """Files of `preset` (random weights), or of the `trained` ItNet (its architecture and
    weights; the dataset of `preset`), in each mode of `quants`: {(flavor, quant, n): path}
    for the static files of each n of `iterations` and, with `loop`, {("loop", quant, None):
    path}; int8 files take `input_type` images, the others float images."""
    folder, files = Path(folder), {}
    spec = get_spec(PRESET_DATASET[preset])
    # The converters export at `input_size` whatever size a model was built for.
    model = trained if trained is not None else build_itnet(preset, input_shape=(*input_size, 3), **model_args)
    for quant in quants:
        images = calibration_images if quant == "int8" else None
        kind = input_type if quant == "int8" else "float32"
        convert_static(model, folder / f"static_{quant}.tflite", iterations, quant, spec, input_size, images,
                       input_type=kind)
        files.update({("static", quant, n): static_path(folder / f"static_{quant}.tflite", n) for n in iterations})
        if loop:
            convert_tflite(model, folder / f"loop_{quant}.tflite", quant, spec, input_size, images,
                           input_type=kind)
            files["loop", quant, None] = folder / f"loop_{quant}.tflite"
    return files


def _static_call(path, threads):
    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    (key,) = interpreter.get_signature_list()
    return partial(interpreter.get_signature_runner(key), image=_image(interpreter, key))


def quant_latency(files, threads, repeats, iterations):
    """{n: {name: seconds}}: per output n, the files of `quant_files` ("static float32",
    "loop int8", ...: the loop file through `anytime(image, n)`), all timed in turns."""
    loops = {}
    for (flavor, quant, _), path in files.items():
        if flavor == "loop":
            interpreter = Interpreter(model_path=str(path), num_threads=threads)
            loops[quant] = (interpreter.get_signature_runner("anytime"), _image(interpreter, "anytime"))
    result = {}
    for n in iterations:
        calls = {f"static {quant}": _static_call(path, threads)
                 for (flavor, quant, m), path in files.items() if flavor == "static" and m == n}
        for quant, (anytime, image) in loops.items():
            calls[f"loop {quant}"] = partial(anytime, image=image, iterations=np.int32(n))
        result[n] = _medians(calls, repeats)
    return result
