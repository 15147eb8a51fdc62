"""A truly integer loop: carry the `WHILE` loop's tensors as int8 in a full-integer file.

Post-training full-integer quantization makes every op inside the loop body int8, but the
converter leaves the loop-carried tensors float32 (SPEC s.8): each iteration starts with
`QUANTIZE` (float32 -> int8) and ends with `DEQUANTIZE` (int8 -> float32). `carry_int8`
rewrites the flatbuffer so that the `WHILE` op carries int8 tensors:

- in the body, the carried input takes the quantization of the `QUANTIZE` that read it,
  and that op goes; the `DEQUANTIZE` that made the carried output becomes a `QUANTIZE`
  (int8 -> int8) to the input's scale, so every iteration sees the same parameters;
- in the signature's own graph, the float32 value is quantized once before the `WHILE`
  and dequantized once after it.

A carried tensor is rewritten only when the body reads it through one `QUANTIZE` (or not
at all) and makes it with a `DEQUANTIZE`; the loop counters (int32) stay as they are.
"""

import copy

from tensorflow.lite.python import schema_py_generated as schema

from itnet_keras.export.flatbuffer import op_name, parse, serialize, while_ops

FLOAT32, INT8 = schema.TensorType.FLOAT32, schema.TensorType.INT8


def _uses(graph, tensor):
    return [op for op in graph.operators if tensor in list(op.inputs)]


def _producer(graph, tensor):
    return next((op for op in graph.operators if tensor in list(op.outputs)), None)


def _new_tensor(graph, like, name, dtype, quantization):
    tensor = copy.deepcopy(like)
    tensor.name, tensor.type, tensor.buffer = name, dtype, 0
    tensor.quantization = copy.deepcopy(quantization)
    graph.tensors.append(tensor)
    return len(graph.tensors) - 1


def _new_op(opcode, inputs, outputs):
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = opcode, list(inputs), list(outputs)
    return op


def _carry(model, parent, loop, k, codes):
    """Make loop-carried tensor k of the `WHILE` op `loop` int8, when the pattern above holds."""
    options = loop.builtinOptions
    body, cond = model.subgraphs[options.bodySubgraphIndex], model.subgraphs[options.condSubgraphIndex]
    outer_in, outer_out = loop.inputs[k], loop.outputs[k]
    body_in, body_out = body.inputs[k], body.outputs[k]
    if parent.tensors[outer_in].type != FLOAT32 or body_in == body_out:
        return
    readers, maker = _uses(body, body_in), _producer(body, body_out)
    if maker is None or codes[maker.opcodeIndex] != "DEQUANTIZE" or _uses(body, body_out):
        return
    if len(readers) > 1 or (readers and codes[readers[0].opcodeIndex] != "QUANTIZE"):
        return
    if readers:  # the body's first QUANTIZE sets the scale of the carried tensor
        quantize = readers[0]
        quantized = quantize.outputs[0]
        params = body.tensors[quantized].quantization
        for op in body.operators:
            op.inputs = [body_in if t == quantized else t for t in op.inputs]
        body.operators.remove(quantize)
    else:  # not read inside the body (the latest logits): keep the maker's scale
        params = body.tensors[maker.inputs[0]].quantization
    for graph, tensor in ((body, body_in), (body, body_out), (cond, cond.inputs[k])):
        graph.tensors[tensor].type = INT8
        graph.tensors[tensor].quantization = copy.deepcopy(params)
    maker.opcodeIndex = codes.index("QUANTIZE")  # requantize to the carried scale
    name = parent.tensors[outer_in].name
    outer_in_q = _new_tensor(parent, parent.tensors[outer_in], name + b"_int8", INT8, params)
    outer_out_q = _new_tensor(parent, parent.tensors[outer_out], parent.tensors[outer_out].name + b"_int8",
                              INT8, params)
    at = parent.operators.index(loop)
    parent.operators.insert(at, _new_op(codes.index("QUANTIZE"), [outer_in], [outer_in_q]))
    parent.operators.insert(at + 2, _new_op(codes.index("DEQUANTIZE"), [outer_out_q], [outer_out]))
    loop.inputs, loop.outputs = list(loop.inputs), list(loop.outputs)
    loop.inputs[k], loop.outputs[k] = outer_in_q, outer_out_q


def carry_int8(data):
    """Rewrite a full-integer `.tflite` flatbuffer (bytes) so that its `WHILE` ops carry
    int8 tensors; returns the new bytes."""
    model = parse(data)
    codes = [op_name(c) for c in model.operatorCodes]
    if "QUANTIZE" not in codes or "DEQUANTIZE" not in codes:
        return data
    for parent, loop in while_ops(model):
        for k in range(len(loop.inputs)):
            _carry(model, parent, loop, k, codes)
    return serialize(model)
