"""TFLite conversion of an ItNet in one of four quantization modes, with its metadata.

`convert_tflite(model, path, quant, ...)` writes `path` (the `.tflite` file, the `loop`
flavour) and a sidecar `path.with_suffix(".json")` (labels, input size, normalization,
signatures, calibration sample), both atomically, after checking the flatbuffer: builtin
ops only (no `Flex`), and one `WHILE` in each signature that runs the loop (`outputs`,
`anytime`). `convert_static` writes the `static` flavour (module `static`): one file per
output n, one subgraph, no control flow. With a dataset `spec`, TFLite Model Metadata (labels,
normalization, output activation) goes inside every file (`tflite_metadata`). The `anytime`
and `outputs` of an int8 loop file compute in int8 from the image's `QUANTIZE` to the
full-resolution logits, which int8 files hand out as int8 (`int8_loop`). Every file then
gets the forms XNNPACK runs faster (`xnnpack_forms`): per-channel affines as 1x1 depthwise
convs, and in int8 the logits' upsampling as two one-axis resizes.
"""

import tempfile
from pathlib import Path

import cv2
import numpy as np
import tensorflow as tf

from itnet_keras.augment import normalize
from itnet_keras.console import progress, quietly
from itnet_keras.datasets import load_split
from itnet_keras.export import CALIBRATION_IMAGES, INPUT_TYPES, QUANT_MODES
from itnet_keras.export.artifacts import ExportError, export_size, metadata, writable_destination, write_export
from itnet_keras.export.camera_input import byte_zero_point, camera_byte_inputs, uint8_pixel_input
from itnet_keras.export.flatbuffer import inspect_tflite, loop_carried_types, signature_ops
from itnet_keras.export.int8_loop import INT8_LOGITS_SIGNATURES, carry_int8, int8_logits, integer_islands
from itnet_keras.export.signatures import signatures_of, write_saved_model
from itnet_keras.export.static import signature_key, static_archive, static_calibration, unrolled_copy
from itnet_keras.export.tflite_metadata import embed_metadata
from itnet_keras.export.xnnpack_forms import channel_affines, separable_upsampling
from itnet_keras.model import encode, iterative_block, model_args

LOOPING_SIGNATURES = ("outputs", "anytime")


def calibration_batches(model, images):
    """The representative dataset of full-integer quantization: every signature, fed the
    calibration images (one at a time), `anytime` with every iteration count (the last
    iteration and the head after its loop are shared by all n: calibrated at n = 1 and N
    only, outputs 2 .. N-1 fell outside their ranges) and, for `step` and `finish`, the
    states of every iteration."""
    num_iterations = iterative_block(model).num_iterations

    def generate():
        for image in progress(images, "int8 calibration", unit="images"):
            image = np.asarray(image, np.float32)[None]
            yield "outputs", {"image": image}
            yield "encode", {"image": image}
            if "anytime" in signatures_of(model):  # every n: the ops after its loop serve them all
                for count in range(1, num_iterations + 1):
                    yield "anytime", {"image": image, "iterations": np.int32(count)}
            state = encode(model, image)
            for n in range(1, num_iterations + 1):
                inputs = {f"state_{l}": np.asarray(s) for l, s in enumerate(state, start=1)}
                yield "step", {**inputs, "n": np.int32(n)}
                yield "finish", {**inputs, "n": np.int32(n)}
                state, logits = iterative_block(model).step(state, n)
                yield "upsample", {"logits": np.asarray(logits)}

    return generate


def tflite_converter(saved_model, signatures, quant, representative, integer_io=None):
    """The converter of a SavedModel's `signatures` in mode `quant`, builtin ops only; an
    int8 one with `integer_io` (input dtype, output dtype; None: float32) hands its float
    inputs and outputs in and out quantized."""
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
        input_type, output_type = integer_io or (None, None)
        converter.inference_input_type = input_type or tf.float32
        converter.inference_output_type = output_type or tf.float32
    return converter


def check_tflite(path, signatures, loop=True, integer_loop=False):
    """Raise ExportError unless the file has `signatures`, is builtins-only and keeps its
    loops as `WHILE`s (none when `loop=False`: an unrolled model); with `integer_loop`,
    unless every `WHILE` whose body computes in int8 carries int8 tensors besides its int32
    counters."""
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
    carrying = loop_carried_types(path, quantized_bodies=True) if integer_loop else []
    if integer_loop and loop and not carrying:
        raise ExportError(f"{path}: no WHILE computes in int8")
    for carried in carrying:
        if set(carried) - {"int8", "int32"}:
            raise ExportError(f"{path}: a WHILE carries {carried}, expected int8 tensors and int32 counters")
    return summary


def _embedded(data, model, spec, iterations=None, input_type="float32"):
    """`data` with the TFLite Model Metadata of the file inside (see `tflite_metadata`)."""
    args = model_args(model)
    signatures = signatures_of(model)  # without anytime for a model built with unroll=True
    what = (("all outputs, anytime(n), and the loop driven by an app" if "anytime" in signatures else "all outputs")
            + " (signatures: " + ", ".join(signatures) + ")" if iterations is None
            else f"output {iterations} of {args['num_iterations']} (one subgraph, no control flow)")
    description = (f"ItNet semantic segmentation ({spec.name}, {args['num_classes']} classes, width "
                   f"{args['width']}, {'shared' if args['weight_sharing'] else 'independent'} weights): {what}")
    return embed_metadata(data, "ItNet", description, spec.class_names, spec.normalization, args["num_classes"],
                          input_type=input_type)


def _check_modes(quant, input_type, spec, calibration_images):
    """Raise ExportError unless `quant` is one of `QUANT_MODES` (int8 with calibration images)
    and `input_type` one of `INPUT_TYPES` that `quant` takes."""
    if quant not in QUANT_MODES:
        raise ExportError(f"--quant {quant!r}: expected one of {', '.join(QUANT_MODES)}")
    if quant == "int8" and calibration_images is None:
        raise ExportError("--quant int8 needs calibration images (representative data)")
    if input_type not in INPUT_TYPES:
        raise ExportError(f"--input-type {input_type!r}: expected one of {', '.join(INPUT_TYPES)}")
    if input_type != "float32" and spec is None:
        raise ExportError(f"--input-type {input_type} needs the dataset's normalization (--data)")
    if input_type == "int8" and quant != "int8":
        raise ExportError(f"--input-type int8 needs --quant int8 (got --quant {quant}): a {quant} file takes "
                          "camera bytes as --input-type uint8")


def convert_tflite(model, path, quant="float32", spec=None, input_size=None, calibration_images=None,
                   calibration=None, input_type="float32"):
    """Convert `model` to `path`; returns the flatbuffer summary (see `inspect_tflite`).

    A model built with `unroll=True` (for comparisons) converts without `WHILE` and
    without the `anytime` signature.
    """
    _check_modes(quant, input_type, spec, calibration_images)
    if quant == "int8" and input_type != "float32":
        try:  # before converting, as `camera_byte_inputs` would after
            byte_zero_point(spec.normalization, input_type)
        except ValueError as error:
            raise ExportError(str(error)) from None
    if quant == "int8" and not iterative_block(model).weight_sharing:
        raise ExportError("--quant int8 needs a weight-sharing model: the kernels that the loop counter "
                          "picks (weight_sharing=False) are quantized as activations, which TFLite's int8 "
                          "CONV_2D rejects; use --quant dynamic or float16")
    path = Path(path)
    writable_destination(path, "tflite" if spec is not None else None)
    input_size = export_size(spec, input_size)
    representative = None if calibration_images is None else calibration_batches(model, calibration_images)
    signatures = signatures_of(model)
    with tempfile.TemporaryDirectory() as work:
        in_graph = spec.normalization if input_type == "uint8" and quant != "int8" else None
        saved_model = write_saved_model(model, Path(work) / "saved_model", input_size, normalization=in_graph)
        with quietly():  # the converter's C++ log lines
            data = tflite_converter(saved_model, signatures, quant, representative).convert()
        if quant == "int8":
            data = separable_upsampling(int8_logits(integer_islands(carry_int8(data)), INT8_LOGITS_SIGNATURES))
            if input_type != "float32":  # the image's QUANTIZE takes bytes: no float op
                try:
                    data = camera_byte_inputs(data, spec.normalization, input_type)
                except ValueError as error:
                    raise ExportError(str(error)) from None
        data = channel_affines(data)
        if spec is not None:
            data = _embedded(data, model, spec, input_type=input_type)
        candidate = Path(work) / "model.tflite"
        candidate.write_bytes(data)
        block = iterative_block(model)  # one iteration has no loop to keep
        summary = check_tflite(candidate, signatures, loop=not block.unroll and block.num_iterations > 1,
                               integer_loop=quant == "int8")
        write_export(path, data, None if spec is None else metadata(
            model, spec, input_size, quant, calibration=calibration, input_type=input_type))
    return summary


def static_path(path, n):
    """The file of output n: `PATH` with `_n<n>` before its suffix."""
    path = Path(path)
    return path.with_name(f"{path.stem}_n{n}{path.suffix}")


def check_static(path, n):
    """Raise ExportError unless the file is builtins-only with one subgraph and no control
    flow (what MediaPipe's ImageSegmenter and the LiteRT GPU delegate need)."""
    summary = check_tflite(path, [signature_key(n)], loop=False)
    control = sorted({op for op in summary["ops"] if op in ("WHILE", "IF", "CALL_ONCE")})
    if len(summary["subgraphs"]) != 1 or control:
        raise ExportError(f"{path}: {len(summary['subgraphs'])} subgraphs and control flow {control}, "
                          "expected one subgraph and none")
    return summary


def convert_static(model, path, iterations, quant="float32", spec=None, input_size=None,
                   calibration_images=None, calibration=None, input_type="float32"):
    """The static flavour: for each n of `iterations`, `static_path(path, n)` computes output
    n (see `static`), with its sidecar. Returns {path: flatbuffer summary}."""
    _check_modes(quant, input_type, spec, calibration_images)
    count = iterative_block(model).num_iterations
    bad = [n for n in iterations if not 1 <= n <= count]
    if not iterations or bad:
        raise ExportError(f"--iterations {' '.join(map(str, bad or iterations)) or '(none)'}: "
                          f"expected outputs in 1..{count}")
    input_size = export_size(spec, input_size)
    normalization = None if spec is None else spec.normalization
    for n in iterations:
        writable_destination(static_path(path, n), "tflite" if spec is not None else None, output=path)
    unrolled, written = unrolled_copy(model), {}
    for n in dict.fromkeys(iterations):
        target = static_path(path, n)
        int8 = quant == "int8"
        with tempfile.TemporaryDirectory() as work:
            archive = static_archive(unrolled, n, input_size, normalization, input_type, int8)
            archive.write_out(str(Path(work) / "saved_model"), verbose=False)
            representative = static_calibration(calibration_images, n, normalization, input_type) if int8 else None
            integer_io = (tf.uint8 if input_type != "float32" else None, tf.int8) if int8 else None
            with quietly():  # the converter's C++ log lines
                data = tflite_converter(Path(work) / "saved_model", [signature_key(n)], quant, representative,
                                        integer_io).convert()
            data = channel_affines(separable_upsampling(data) if int8 else data)
            if int8 and input_type != "float32":
                data = uint8_pixel_input(data, normalization, input_type)
            if spec is not None:
                data = _embedded(data, model, spec, n, input_type)
            candidate = Path(work) / "model.tflite"
            candidate.write_bytes(data)
            written[target] = check_static(candidate, n)
            write_export(target, data, None if spec is None else metadata(
                model, spec, input_size, quant, calibration=calibration, iterations=n, input_type=input_type))
    return written


def calibration_sample(dataset, input_size, count=CALIBRATION_IMAGES, seed=0, data_dir=None):
    """A fixed sample of training images for int8 calibration: (images, record).

    The images are resized to `input_size` and normalized as in training (no
    augmentation); `record` names them, for the metadata.
    """
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
