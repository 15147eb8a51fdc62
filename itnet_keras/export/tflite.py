"""TFLite conversion of an ItNet in one of four quantization modes, with its metadata.

`convert_tflite(model, path, quant, ...)` writes `path` (the `.tflite` file) and a sidecar
`path.with_suffix(".json")` (labels, input size, normalization, signatures, calibration
sample), both atomically, after checking the flatbuffer: builtin ops only (no `Flex`),
and one `WHILE` in each signature that runs the loop (`outputs`, `anytime`).
"""

import json
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf

from itnet_keras.console import progress, quietly
from itnet_keras.export import QUANT_MODES
from itnet_keras.export.flatbuffer import inspect_tflite, loop_carried_types, signature_ops
from itnet_keras.export.int8_loop import carry_int8
from itnet_keras.export.signatures import signatures_of, write_saved_model
from itnet_keras.model import encode, iterative_block, model_args

LOOPING_SIGNATURES = ("outputs", "anytime")


class ExportError(ValueError):
    """The export cannot go on; the message names the file, flag or op at fault."""


def calibration_batches(model, images):
    """The representative dataset of full-integer quantization: every signature, fed the
    calibration images (one at a time) and, for `step` and `finish`, the states of every
    iteration."""
    num_iterations = iterative_block(model).num_iterations

    def generate():
        for image in progress(images, "int8 calibration", unit="images"):
            image = np.asarray(image, np.float32)[None]
            yield "outputs", {"image": image}
            yield "encode", {"image": image}
            if "anytime" in signatures_of(model):
                yield "anytime", {"image": image, "iterations": np.int32(num_iterations)}
            state = encode(model, image)
            for n in range(1, num_iterations + 1):
                inputs = {f"state_{l}": np.asarray(s) for l, s in enumerate(state, start=1)}
                yield "step", {**inputs, "n": np.int32(n)}
                yield "finish", {**inputs, "n": np.int32(n)}
                state, logits = iterative_block(model).step(state, n)
                yield "upsample", {"logits": np.asarray(logits)}

    return generate


def tflite_converter(saved_model, signatures, quant, representative):
    """The converter of a SavedModel's `signatures` in mode `quant`, builtin ops only."""
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model), signature_keys=list(signatures))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no Flex fallback
    if quant == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quant == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quant == "int8":
        if representative is None:
            raise ExportError("--quant int8 needs calibration images (representative data)")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                               tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter


def check_tflite(path, signatures, loop=True, integer_loop=False):
    """Raise ExportError unless the file has `signatures`, is builtins-only and keeps its
    loops as `WHILE`s (none when `loop=False`: an unrolled model); with `integer_loop`,
    unless every `WHILE` carries int8 tensors besides its int32 counters."""
    summary = inspect_tflite(path)
    if summary["flex_ops"] or summary["custom_ops"]:
        raise ExportError(f"{path}: ops the builtin runtime cannot run: "
                          f"{summary['flex_ops'] + summary['custom_ops']}")
    if sorted(summary["signatures"]) != sorted(signatures):
        raise ExportError(f"{path}: signatures {summary['signatures']}, expected {list(signatures)}")
    for key, ops in signature_ops(path).items():
        expected = 1 if loop and key in LOOPING_SIGNATURES else 0
        if ops.get("WHILE", 0) != expected:
            raise ExportError(f"{path}: signature {key!r} has {ops.get('WHILE', 0)} WHILE ops, expected {expected}")
    for carried in loop_carried_types(path) if integer_loop else ():
        if set(carried) - {"int8", "int32"}:
            raise ExportError(f"{path}: a WHILE carries {carried}, expected int8 tensors and int32 counters")
    return summary


def metadata(model, spec, input_size, quant, batch_size=1, calibration=None):
    """What an app needs beside the file: labels, input size, normalization, signatures."""
    args = model_args(model)
    scale, offset = spec.normalization
    return {
        "format": "tflite", "quantization": quant, "dataset": spec.name,
        "labels": list(spec.class_names), "ignore_label": spec.ignore_label,
        "input": {"name": "image", "shape": [batch_size, *input_size, 3], "dtype": "float32",
                  "normalization": f"pixel * {scale:.10g} + {offset:.10g} (RGB, pixel in 0..255)"},
        "num_iterations": args["num_iterations"], "model_args": args,
        "signatures": {
            "outputs": "image -> output_1 .. output_N logits [B, H, W, C]",
            "anytime": "image, iterations (int32, clamped to 1..N) -> logits",
            "encode": "image -> state_1 .. state_L",
            "step": "state_1 .. state_L, n (int32, 1-based, clamped) -> state_1 .. state_L, "
                    "logits [B, H/8, W/8, C] (the head's resolution)",
            "upsample": "logits [B, H/8, W/8, C] from step -> logits [B, H, W, C] (output n)",
            "finish": "state_1 .. state_L after n - 1 steps, n -> logits [B, H, W, C] (output n; "
                      "no state: the cheaper last step)",
        },
        "calibration": calibration,
    }


def writable_destination(path):
    """Raise ExportError (naming `path`) unless a file can be written there."""
    path = Path(path)
    try:
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}."):
            pass
    except OSError as error:
        raise ExportError(f"--output {path}: cannot write there ({error.strerror or error})") from None


def convert_tflite(model, path, quant="float32", spec=None, input_size=None, calibration_images=None,
                   calibration=None):
    """Convert `model` to `path`; returns the flatbuffer summary (see `inspect_tflite`).

    A model built with `unroll=True` (for comparisons) converts without `WHILE` and
    without the `anytime` signature.
    """
    from itnet_keras.evaluate import write_atomic

    if quant not in QUANT_MODES:
        raise ExportError(f"--quant {quant!r}: expected one of {', '.join(QUANT_MODES)}")
    if quant == "int8" and not iterative_block(model).weight_sharing:
        raise ExportError("--quant int8 needs a weight-sharing model: the kernels that the loop counter "
                          "picks (weight_sharing=False) are quantized as activations, which TFLite's int8 "
                          "CONV_2D rejects; use --quant dynamic or float16")
    path = Path(path)
    writable_destination(path)
    input_size = tuple(input_size or spec.image_size)
    representative = None if calibration_images is None else calibration_batches(model, calibration_images)
    signatures = signatures_of(model)
    with tempfile.TemporaryDirectory() as work:
        saved_model = write_saved_model(model, Path(work) / "saved_model", input_size)
        with quietly():  # the converter's C++ log lines
            data = tflite_converter(saved_model, signatures, quant, representative).convert()
        if quant == "int8":
            data = carry_int8(data)
        candidate = Path(work) / "model.tflite"
        candidate.write_bytes(data)
        summary = check_tflite(candidate, signatures, loop=not iterative_block(model).unroll,
                               integer_loop=quant == "int8")
        write_atomic(path, data, "wb")
    if spec is not None:
        meta = metadata(model, spec, input_size, quant, calibration=calibration)
        write_atomic(path.with_suffix(".json"), json.dumps(meta, indent=1))
    return summary


def calibration_sample(dataset, input_size, count=16, seed=0, data_dir=None):
    """A fixed sample of training images for int8 calibration: (images, record).

    The images are resized to `input_size` and normalized as in training (no
    augmentation); `record` names them, for the metadata.
    """
    import cv2

    from itnet_keras.augment import normalize
    from itnet_keras.datasets import load_split

    split = load_split(dataset, "train", data_dir=data_dir)
    count = min(count, len(split))
    indices = sorted(np.random.default_rng(seed).choice(len(split), count, replace=False).tolist())
    images = []
    for index in indices:
        image, _ = split[index]
        image = cv2.resize(np.asarray(image), (input_size[1], input_size[0]), interpolation=cv2.INTER_LINEAR)
        images.append(normalize(image, split.spec))
    names = [Path(s[0]).name if isinstance(s, tuple) else int(s) for s in (split.samples[i] for i in indices)]
    return images, {"split": "train", "seed": seed, "indices": indices, "images": names}
