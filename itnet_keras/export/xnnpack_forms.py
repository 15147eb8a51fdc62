"""Export-time rewrites of a `.tflite` file into ops that XNNPACK (LiteRT's CPU delegate)
runs faster, the same function; the Keras model and its training stay as they are.
Timed part by part in docs/latency_parts_camvid_shared.md (export/measure_parts.py).

`channel_affines` (every file): the converter leaves a per-channel affine `x * scale +
shift` (then ReLU) of a [1, H, W, C] tensor by constant C-vectors, the batch norm of each
max-pool branch of the data block (`DataBlock._stage`, C = 3 and 26), as a `MUL` and an
`ADD` that broadcast a C-vector; XNNPACK's elementwise kernels then run C values at a
time. It becomes one `DEPTHWISE_CONV_2D` 1x1 (kernel: the scale; bias: the shift; the
activation fused). In int8 the kernel holds each channel's scale as +-127 steps of its own
(exact) and the result is rounded once, where the `MUL` and the `ADD` rounded twice.

`separable_upsampling` (int8 files): the head's logits [1, h, w, C] (C = the classes, 11
for CamVid) are resized bilinearly to the input size [1, 8h, 8w, C]. XNNPACK's int8
`RESIZE_BILINEAR` interpolates each output pixel's C values in turn, which with C below 16
(one 128-bit vector of int8) is no faster than its float32 kernel. A bilinear resize is
separable, so an int8 resize of fewer than 16 channels that enlarges both axes becomes

    RESIZE_BILINEAR  [1, h, w, C] -> [1, h, W, C]       along the width only
    RESHAPE          -> [1, h, 1, W * C]                 each row one pixel of W * C values
    RESIZE_BILINEAR  -> [1, H, 1, W * C]                 along the height: blends of whole rows
    RESHAPE          -> [1, H, W, C]

with the attributes of the original resize (half-pixel centers, as Keras resizes; a resize
of an axis to its own size is the identity in either convention). The second resize blends
two rows of W * C values per output row, which XNNPACK vectorizes fully; the first makes an
eighth of the output. The quantization is the same throughout (an int8 resize keeps its
input's scale), and the intermediate [1, h, W, C] is rounded to int8 once more. Float32
files keep the one op: XNNPACK's float32 kernel is as fast or faster than the two.
"""

import copy

import numpy as np
from tensorflow.lite.python import schema_py_generated as schema

from itnet_keras.export.flatbuffer import op_name, parse, serialize

FLOAT32, INT8, INT32 = schema.TensorType.FLOAT32, schema.TensorType.INT8, schema.TensorType.INT32
VECTOR_CHANNELS = 16  # int8 values in one 128-bit vector: fewer channels are resized in two passes


def _opcode(model, builtin, version=1):
    """Index of `builtin`'s operator code in `model`, added (at `version`) when the model has none."""
    for index, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
            return index
    code = schema.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), version
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


_NUMPY = {FLOAT32: np.float32, INT8: np.int8, INT32: np.int32}


def _constant(model, graph, name, values, dtype=INT32, quantization=None):
    """A new constant tensor of `graph` holding `values` (an array of its shape); returns its index."""
    values = np.asarray(values, _NUMPY[dtype])
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(values.tobytes(), np.uint8)
    model.buffers.append(buffer)
    tensor = schema.TensorT()
    tensor.name, tensor.type, tensor.shape = name, dtype, list(values.shape)
    tensor.buffer, tensor.quantization = len(model.buffers) - 1, quantization
    graph.tensors.append(tensor)
    return len(graph.tensors) - 1


def _quantization(scale, zero_point, axis=0):
    params = schema.QuantizationParametersT()
    params.scale, params.zeroPoint, params.quantizedDimension = list(scale), list(zero_point), axis
    return params


def _activation(graph, like, name, shape):
    """A new tensor of `graph` with the dtype and quantization of tensor `like`, and `shape`."""
    tensor = copy.deepcopy(graph.tensors[like])
    tensor.name, tensor.shape, tensor.buffer = name, list(shape), 0
    tensor.shapeSignature = None
    graph.tensors.append(tensor)
    return len(graph.tensors) - 1


def _op(opcode, inputs, outputs, options_type=schema.BuiltinOptions.NONE, options=None):
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = opcode, list(inputs), list(outputs)
    op.builtinOptionsType, op.builtinOptions = options_type, options
    return op


def _reshape(model, graph, source, target, shape, name):
    options = schema.ReshapeOptionsT()
    options.newShape = list(shape)
    return _op(_opcode(model, schema.BuiltinOperator.RESHAPE),
               [source, _constant(model, graph, name + b"_shape", shape)], [target],
               schema.BuiltinOptions.ReshapeOptions, options)


# -- per-channel affines -----------------------------------------------------------------


def _vector(model, graph, tensor, channels):
    """The real values of a constant C-vector tensor (shape [C] or [1, 1, 1, C]; float32, or
    int8 quantized per tensor), or None."""
    t = graph.tensors[tensor]
    data = model.buffers[t.buffer].data
    shape = [] if t.shape is None else list(t.shape)
    if data is None or len(data) == 0 or t.type not in (FLOAT32, INT8):
        return None
    if shape not in ([channels], [1, 1, 1, channels]):
        return None
    values = np.frombuffer(np.asarray(data, np.uint8).tobytes(), _NUMPY[t.type]).astype(np.float64)
    if t.type == INT8:
        q = t.quantization
        if q is None or q.scale is None or len(q.scale) != 1:
            return None
        values = (values - q.zeroPoint[0]) * q.scale[0]
    return values


def _affine_operand(model, graph, op, codes, name):
    """(x, constant C-vector) when `op` is a `name` op (MUL, ADD) of a [1, H, W, C] tensor
    and a constant C-vector, else None."""
    if codes[op.opcodeIndex] != name or len(op.inputs) != 2:
        return None
    for x, c in (op.inputs, op.inputs[::-1]):
        shape = graph.tensors[x].shape
        constant = model.buffers[graph.tensors[x].buffer].data is not None
        if shape is not None and len(shape) == 4 and shape[0] == 1 and not constant:
            values = _vector(model, graph, c, int(shape[3]))
            if values is not None:
                return x, values
    return None


def _depthwise_weights(model, graph, x, scale, shift, name):
    """(kernel, bias) tensors of a 1x1 depthwise conv of tensor `x` computing x * scale + shift."""
    channels = len(scale)
    if graph.tensors[x].type == FLOAT32:
        return (_constant(model, graph, name + b"_kernel", scale.reshape(1, 1, 1, channels), FLOAT32),
                _constant(model, graph, name + b"_bias", shift, FLOAT32))
    input_scale = graph.tensors[x].quantization.scale[0]
    # per-channel symmetric int8 kernel: each scale is +-127 steps (exact); a bias that
    # would overflow int32 (a scale near 0 with a shift) widens its channel's step
    step = np.maximum(np.maximum(np.abs(scale) / 127, np.abs(shift) / (input_scale * 2.0**30)), 1e-30)
    kernel = np.clip(np.round(scale / step), -127, 127).reshape(1, 1, 1, channels)
    zeros = [0] * channels
    return (_constant(model, graph, name + b"_kernel", kernel, INT8, _quantization(step, zeros, 3)),
            _constant(model, graph, name + b"_bias", np.round(shift / (input_scale * step)), INT32,
                      _quantization(input_scale * step, zeros, 0)))


def _channel_affine(model, graph, op, codes, readers):
    """The `DEPTHWISE_CONV_2D` and the ops it replaces for a `MUL` `op` by a constant
    C-vector, with the `ADD` of a constant C-vector that alone reads it, or None."""
    found = _affine_operand(model, graph, op, codes, "MUL")
    if found is None:
        return None
    x, scale = found
    dtype = graph.tensors[x].type
    if dtype not in (FLOAT32, INT8) or graph.tensors[op.outputs[0]].type != dtype:
        return None
    last, shift = op, np.zeros_like(scale)
    after = readers.get(op.outputs[0], [])
    unactivated = op.builtinOptions is None or op.builtinOptions.fusedActivationFunction == 0
    if len(after) == 1 and op.outputs[0] not in list(graph.outputs) and unactivated:
        added = _affine_operand(model, graph, after[0], codes, "ADD")
        if added is not None and added[0] == op.outputs[0]:
            last, shift = after[0], added[1]
    out = last.outputs[0]
    if dtype == INT8 and (graph.tensors[x].quantization is None or len(graph.tensors[x].quantization.scale) != 1):
        return None
    options = schema.DepthwiseConv2DOptionsT()
    options.padding, options.strideW, options.strideH, options.depthMultiplier = schema.Padding.VALID, 1, 1, 1
    options.dilationWFactor = options.dilationHFactor = 1
    options.fusedActivationFunction = 0 if last.builtinOptions is None else last.builtinOptions.fusedActivationFunction
    kernel, bias = _depthwise_weights(model, graph, x, scale, shift, graph.tensors[out].name)
    code = _opcode(model, schema.BuiltinOperator.DEPTHWISE_CONV_2D, 3 if dtype == INT8 else 1)
    depthwise = _op(code, [x, kernel, bias], [out], schema.BuiltinOptions.DepthwiseConv2DOptions, options)
    return depthwise, [op] if last is op else [op, last]


def channel_affines(data):
    """Rewrite every per-channel affine of a `.tflite` file (bytes) as a 1x1
    `DEPTHWISE_CONV_2D` (see the module's docstring); returns the new bytes."""
    model = parse(data)
    codes = [op_name(c) for c in model.operatorCodes]
    for graph in model.subgraphs:
        readers = {}
        for op in graph.operators or []:
            for t in op.inputs:
                readers.setdefault(t, []).append(op)
        for op in list(graph.operators or []):
            if op not in graph.operators:
                continue
            found = _channel_affine(model, graph, op, codes, readers)
            if found is not None:
                depthwise, replaced = found
                graph.operators[graph.operators.index(op)] = depthwise
                for other in replaced[1:]:
                    graph.operators.remove(other)
        codes = [op_name(c) for c in model.operatorCodes]
    return serialize(model)


# -- separable upsampling ------------------------------------------------------------------


def _separable(model, graph, op):
    """The four ops that replace the int8 resize `op` (see the module's docstring), or None
    when it does not enlarge both axes of a [1, h, w, C] tensor with C < `VECTOR_CHANNELS`."""
    source, target = op.inputs[0], op.outputs[0]
    shape_in, shape_out = list(graph.tensors[source].shape), list(graph.tensors[target].shape)
    if (len(shape_in) != 4 or len(shape_out) != 4 or shape_in[0] != 1 or graph.tensors[target].type != INT8
            or shape_in[3] >= VECTOR_CHANNELS):
        return None
    _, h, w, channels = shape_in
    _, height, width, _ = shape_out
    if not (height > h > 0 and width > w > 0):
        return None
    name = graph.tensors[target].name
    resize = _opcode(model, schema.BuiltinOperator.RESIZE_BILINEAR)
    wide = _activation(graph, source, name + b"_width", (1, h, width, channels))
    rows = _activation(graph, source, name + b"_rows", (1, h, 1, width * channels))
    tall = _activation(graph, source, name + b"_height", (1, height, 1, width * channels))
    return [
        _op(resize, [source, _constant(model, graph, name + b"_width_size", (h, width))], [wide],
            op.builtinOptionsType, copy.deepcopy(op.builtinOptions)),
        _reshape(model, graph, wide, rows, (1, h, 1, width * channels), name + b"_rows"),
        _op(resize, [rows, _constant(model, graph, name + b"_height_size", (height, 1))], [tall],
            op.builtinOptionsType, copy.deepcopy(op.builtinOptions)),
        _reshape(model, graph, tall, target, (1, height, width, channels), name),
    ]


def separable_upsampling(data):
    """Rewrite every int8 `RESIZE_BILINEAR` of a `.tflite` file (bytes) with fewer than
    `VECTOR_CHANNELS` channels that enlarges both axes as two one-axis resizes (see the
    module's docstring); returns the new bytes."""
    model = parse(data)
    codes = [op_name(c) for c in model.operatorCodes]
    for graph in model.subgraphs:
        for op in list(graph.operators or []):
            if codes[op.opcodeIndex] != "RESIZE_BILINEAR":
                continue
            replacement = _separable(model, graph, op)
            if replacement is not None:
                at = graph.operators.index(op)
                graph.operators[at:at + 1] = replacement
    return serialize(model)
