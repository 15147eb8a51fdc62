"""Camera bytes in: `--input-type uint8` (RGB, 0..255), the normalization inside the file.

A float file takes uint8, casts it and normalizes in the graph. An int8 file takes the
bytes as its quantized input, with no float op: when `pixel * scale + offset` is itself
a quantization (`zero_point`; CamVid's pixel / 255 is scale 1/255, zero point 0), the
input gets that scale and zero point and no op normalizes; otherwise (Cityscapes' pixel /
127.5 - 1, zero point 127.5) a static file takes pixels (scale 1, zero point 0) and
normalizes them in int8. The `QUANTIZE` after the input requantizes to the int8 scale
calibrated for the normalized image.
"""

from tensorflow.lite.python import schema_py_generated as schema

from itnet_keras.export.flatbuffer import op_name, parse, serialize


def zero_point(normalization):
    """The uint8 zero point that makes `pixel * scale + offset` a quantization (scale,
    zero point) of the normalized image, or None when -offset / scale is not an integer."""
    scale, offset = normalization
    point = -offset / scale
    return int(round(point)) if abs(point - round(point)) < 1e-6 and 0 <= round(point) <= 255 else None


def uint8_pixel_input(data, normalization):
    """Give the uint8 input of an int8 file (bytes) the quantization that makes a camera
    byte its own quantized value: (scale, `zero_point`) of the normalization, or (1, 0)
    for pixels that the graph normalizes. The converter derives them from the calibration
    range, which may miss 0 or 255 by a little; the `QUANTIZE` after the input requantizes
    to the calibrated int8 scale either way."""
    point = zero_point(normalization)
    scale = 1.0 if point is None else float(normalization[0])
    model = parse(data)
    graph = model.subgraphs[0]
    for index in graph.inputs:
        tensor = graph.tensors[index]
        if tensor.type == schema.TensorType.UINT8:
            tensor.quantization.scale, tensor.quantization.zeroPoint = [scale], [point or 0]
    return serialize(model)


def camera_byte_inputs(data, normalization):
    """Make the float32 `image` input of every signature of an int8 loop file (bytes) a
    uint8 one quantized as `zero_point` says; each must be read only by `QUANTIZE` ops, which
    then requantize uint8 -> int8. Returns the new bytes; raises ValueError when the
    normalization is not a quantization or an image is read as a float."""
    point = zero_point(normalization)
    if point is None:
        raise ValueError(f"--input-type uint8 with a loop int8 file needs a normalization pixel * scale + offset "
                         f"with an integer zero point -offset / scale; got {normalization}: use --flavor static")
    model = parse(data)
    codes = [op_name(c) for c in model.operatorCodes]
    for signature in model.signatureDefs or []:
        graph = model.subgraphs[signature.subgraphIndex]
        for item in signature.inputs:
            if item.name not in (b"image", "image"):
                continue
            readers = [op for op in graph.operators if item.tensorIndex in list(op.inputs)]
            if any(codes[op.opcodeIndex] != "QUANTIZE" for op in readers):
                raise ValueError(f"signature {signature.signatureKey!r}: its image is read by "
                                 f"{sorted({codes[op.opcodeIndex] for op in readers})}, not by QUANTIZE alone")
            tensor = graph.tensors[item.tensorIndex]
            tensor.type = schema.TensorType.UINT8
            tensor.quantization = schema.QuantizationParametersT()
            tensor.quantization.scale, tensor.quantization.zeroPoint = [float(normalization[0])], [point]
    return serialize(model)
