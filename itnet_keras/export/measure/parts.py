"""Where the time of output n goes: parts of the static graph as files of their own, float32
beside int8, as the converter makes them and with `xnnpack_forms`.

Each part is a prefix of output n's graph (`anytime` of an unrolled copy, as the static
flavour computes it) or the upsampling alone, converted like a static file (int8: uint8
camera bytes in, int8 out, calibrated on the same images); the difference of two prefixes is
the time of the ops between them. All files are timed in turns (`latency.timed_in_turns`).
"""

import tempfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from itnet_keras.console import quietly
from itnet_keras.export.camera_input import uint8_pixel_input
from itnet_keras.export.static import unrolled_copy
from itnet_keras.export.tflite import tflite_converter
from itnet_keras.export.xnnpack_forms import channel_affines, separable_upsampling
from itnet_keras.model import anytime, data_block, iterative_block


def part_functions(unrolled, outputs=(1, 2)):
    """{name: (function of one tensor, its input shape, whether it takes the image)} of an
    unrolled model: the growing prefixes of output 1 (and of each n of `outputs`), and the
    8x upsampling of the head's logits."""
    data, block = data_block(unrolled), iterative_block(unrolled)
    height, width = unrolled.input_shape[1:3]
    image = (height, width, 3)

    def logits(x, n):
        return block.anytime([data.finest(x, False)], n, coarser=lambda s: data.coarser(s, False))

    parts = {
        "input QUANTIZE (int8) / copy (float32)": (lambda x: tf.reshape(x, (1, -1)), image, True),
        "data block stage 1": (lambda x: data._stage(x, 0, False), image, True),
        "data block stages 1-2": (lambda x: data._stage(data._stage(x, 0, False), 1, False), image, True),
        "data block (S_1)": (lambda x: data.finest(x, False), image, True),
    }
    for n in outputs:
        parts[f"output {n} before upsampling"] = (lambda x, n=n: logits(x, n), image, True)
        parts[f"output {n}"] = (lambda x, n=n: anytime(unrolled, x, n), image, True)
    classes = block.num_classes
    parts["8x upsampling alone"] = (lambda x: tf.image.resize(x, (height, width), method="bilinear"),
                                    (-(-height // 8), -(-width // 8), classes), False)  # the head's ceil(H/8)
    return parts


def _convert(unrolled, function, shape, takes_image, int8, calibration, forms, normalization):
    spec = tf.TensorSpec((1, *shape), tf.float32, name="x")
    archive = keras.export.ExportArchive()
    archive.track(unrolled)
    archive.add_endpoint("part", function, [spec])
    with tempfile.TemporaryDirectory() as work:
        archive.write_out(str(Path(work) / "saved_model"), verbose=False)
        representative = (lambda: (("part", {"x": c}) for c in calibration)) if int8 else None
        integer_io = (tf.uint8 if takes_image else tf.int8, tf.int8) if int8 else None
        with quietly():
            data = tflite_converter(Path(work) / "saved_model", ["part"], "int8" if int8 else "float32",
                                    representative, integer_io).convert()
    if forms:
        data = channel_affines(separable_upsampling(data) if int8 else data)
    return uint8_pixel_input(data, normalization) if int8 and takes_image else data


def _call(data, normalization):
    interpreter = Interpreter(model_content=data, num_threads=1)
    runner = interpreter.get_signature_runner("part")
    details = runner.get_input_details()["x"]
    x = np.random.default_rng(0).integers(0, 256, details["shape"])
    scale, offset = normalization  # a float input takes the image normalized, as the int8 files were calibrated
    x = x.astype(details["dtype"]) if details["dtype"] != np.float32 else (x * scale + offset).astype(np.float32)
    return lambda: runner(x=x)


def part_calls(model, images, normalization, outputs=(1, 2)):
    """{(part, variant, quant): call} for every part of `part_functions`, variant
    "converter" or "forms", quant "float32" or "int8"; `images` (normalized [H, W, 3] by the
    dataset's `normalization`, (scale, offset)) calibrate the int8 files (the upsampling on
    the head logits of output 1), whose uint8 image input takes camera bytes."""
    unrolled = unrolled_copy(model)
    parts = part_functions(unrolled, outputs)
    batches = [np.asarray(i, np.float32)[None] for i in images]
    data, block = data_block(unrolled), iterative_block(unrolled)
    head = [np.asarray(block.anytime([data.finest(b, False)], 1)) for b in batches]
    calls = {}
    for name, (function, shape, takes_image) in parts.items():
        for variant in ("converter", "forms"):
            for quant in ("float32", "int8"):
                file = _convert(unrolled, function, shape, takes_image, quant == "int8",
                                batches if takes_image else head, variant == "forms", normalization)
                calls[name, variant, quant] = _call(file, normalization)
    return calls
