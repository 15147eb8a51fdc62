"""Camera bytes in: `--input-type uint8` (RGB, 0..255) or, for int8 files, `--input-type
int8` (the same bytes minus 128), the normalization inside the file.

A float file takes uint8, casts it and normalizes in the graph. An int8 file takes the
bytes as its quantized input, with no float op: when `pixel * scale + offset` is itself
a quantization (`zero_point`; CamVid's pixel / 255 is scale 1/255, zero point 0), the
input gets that scale and zero point and no op normalizes; otherwise (Cityscapes' pixel /
127.5 - 1, zero point 127.5) a static file takes pixels (scale 1, zero point 0) and
normalizes them in int8. The `QUANTIZE` after the input requantizes to the int8 scale
calibrated for the normalized image.

Why int8 as well: LiteRT's XNNPACK delegate runs a `QUANTIZE` from float32, or between
tensors of one type, so the uint8 -> int8 one stays with the builtin kernel (on x86 a
scalar loop: 0.45 ms of the 4.8 ms of `camvid_shared`'s output 1 at 480x360). An int8
input (`byte ^ 0x80` in the app's RGB loop) has zero point `zero_point - 128`, and its
`QUANTIZE` int8 -> int8 runs inside XNNPACK (0.03 ms): every op of the file is delegated.
MediaPipe's `ImageSegmenter` takes uint8 and float32 inputs only.
"""

import numpy as np
from tensorflow.lite.python import schema_py_generated as schema

from itnet_keras.export.flatbuffer import op_name, parse, serialize, text_of

_TENSOR_TYPES = {"uint8": schema.TensorType.UINT8, "int8": schema.TensorType.INT8}
SIGNED_SHIFT = 128  # an int8 input is the uint8 byte minus this (`byte ^ 0x80`)


def zero_point(normalization):
    """The uint8 zero point that makes `pixel * scale + offset` a quantization (scale,
    zero point) of the normalized image, or None when -offset / scale is not an integer in
    0..255."""
    scale, offset = normalization
    point = -offset / scale
    return int(round(point)) if abs(point - round(point)) < 1e-6 and 0 <= round(point) <= 255 else None


def file_image(pixels, dtype, normalization):
    """What a file whose image input is `dtype` takes for camera `pixels` (uint8 RGB): the
    bytes (uint8), the bytes minus 128 (int8) or the normalized floats."""
    pixels = np.asarray(pixels, np.uint8)
    if dtype == np.uint8:
        return pixels
    if dtype == np.int8:
        return (pixels ^ np.uint8(0x80)).view(np.int8)
    scale, offset = normalization
    return pixels * np.float32(scale) + np.float32(offset)


def pixels_of(image, normalization):
    """The camera bytes (uint8) of a normalized float image."""
    scale, offset = normalization
    return np.clip(np.round((np.asarray(image, np.float32) - offset) / scale), 0, 255).astype(np.uint8)


def image_for(runner, normalization):
    """normalized image -> what `runner`'s `image` input (a LiteRT signature runner) takes:
    itself, or the camera bytes (uint8, or int8: minus 128) of a file made with
    `--input-type`, which needs the dataset's `normalization` to recover them."""
    dtype = runner.get_input_details()["image"]["dtype"]
    if dtype == np.float32:
        return lambda image: np.asarray(image, np.float32)
    if normalization is None:
        raise ValueError(f"the file takes camera bytes ({np.dtype(dtype).name}): pass the dataset's normalization "
                         "to turn normalized images back into them")
    return lambda image: file_image(pixels_of(image, normalization), dtype, normalization)


def _byte_input(tensor, scale, point, input_type):
    tensor.type = _TENSOR_TYPES[input_type]
    tensor.quantization = tensor.quantization or schema.QuantizationParametersT()
    shift = SIGNED_SHIFT if input_type == "int8" else 0
    tensor.quantization.scale, tensor.quantization.zeroPoint = [scale], [point - shift]


def uint8_pixel_input(data, normalization, input_type="uint8"):
    """Give the uint8 input of an int8 static file (bytes) the quantization that makes a
    camera byte its own quantized value: (scale, `zero_point`) of the normalization, or
    (1, 0) for pixels that the graph normalizes; `input_type="int8"` makes it an int8
    input of zero point 128 less. The converter derives the quantization from the
    calibration range, which may miss 0 or 255 by a little; the `QUANTIZE` after the
    input requantizes to the calibrated int8 scale either way."""
    point = zero_point(normalization)
    scale = 1.0 if point is None else float(normalization[0])
    model = parse(data)
    graph = model.subgraphs[0]
    for index in graph.inputs:
        if graph.tensors[index].type == schema.TensorType.UINT8:
            _byte_input(graph.tensors[index], scale, point or 0, input_type)
    return serialize(model)


def byte_zero_point(normalization, input_type):
    """`zero_point` of a loop int8 file's byte image; ValueError when there is none."""
    point = zero_point(normalization)
    if point is None:
        scale, offset = normalization
        raise ValueError(f"--input-type {input_type} --quant int8: the normalization pixel * {scale:.6g} + "
                         f"{offset:.6g} has no integer zero point, which a loop file's byte image needs; use "
                         "--flavor static (it normalizes in int8) or a float input")
    return point


def camera_byte_inputs(data, normalization, input_type="uint8"):
    """Make the float32 `image` input of every signature of an int8 loop file (bytes) a
    uint8 (or int8, see `uint8_pixel_input`) one quantized as `zero_point` says; each must
    be read only by `QUANTIZE` ops, which then requantize to the calibrated int8 image.
    Returns the new bytes; raises ValueError when the normalization is not a quantization
    or an image is read as a float."""
    point = byte_zero_point(normalization, input_type)
    model = parse(data)
    codes = [op_name(c) for c in model.operatorCodes]
    for signature in model.signatureDefs or []:
        graph = model.subgraphs[signature.subgraphIndex]
        for item in signature.inputs:
            if item.name not in (b"image", "image"):
                continue
            readers = [op for op in graph.operators if item.tensorIndex in list(op.inputs)]
            if any(codes[op.opcodeIndex] != "QUANTIZE" for op in readers):
                raise ValueError(f"signature {text_of(signature.signatureKey)!r}: its image is read by "
                                 f"{sorted({codes[op.opcodeIndex] for op in readers})}, not by QUANTIZE alone")
            tensor = graph.tensors[item.tensorIndex]
            tensor.quantization = None
            _byte_input(tensor, float(normalization[0]), point, input_type)
    return serialize(model)
