"""A truly integer loop: carry the `WHILE` loop's tensors as int8 in a full-integer file.

Post-training full-integer quantization makes every op inside the loop body int8, but the
converter leaves the loop-carried tensors float32 (SPEC s.8): each iteration starts with
`QUANTIZE` (float32 -> int8) and ends with `DEQUANTIZE` (int8 -> float32). `carry_int8`
rewrites the flatbuffer so that the `WHILE` op carries int8 tensors:

- in the body, the carried tensor takes the quantization of the `QUANTIZE` that read it
  (and that op goes) where that range holds the range the body makes it at; otherwise a
  range holding both (and the `QUANTIZE` stays, int8 -> int8 to the range it reads at). The
  `DEQUANTIZE` that made the carried output becomes a `QUANTIZE` (int8 -> int8) to the
  carried range, so every iteration sees the same parameters and no state is clipped;
- in the signature's own graph, the float32 value is quantized once before the `WHILE`
  and dequantized once after it.

A carried tensor is rewritten only when the body reads it through one `QUANTIZE` (or not
at all), the loop's condition through `QUANTIZE`s only (a requantization once it is int8),
and the body makes it with a `DEQUANTIZE`; the loop counters (int32) stay as they are.

`integer_islands` then removes the float islands the converter leaves around control flow
(`DEQUANTIZE` before a `WHILE` or `IF` input, `QUANTIZE` after it), until none changes:

- an `IF` takes and hands out int8 tensors, as `carry_int8` makes a `WHILE` do;
- a `DEQUANTIZE` read by a `RESIZE_BILINEAR` moves after it (a bilinear resize keeps the
  scale), and a `CONCATENATION` of dequantized tensors whose result is quantized once
  concatenates in int8 (each input requantized to the output's scale): the mixing of the
  last iteration after the `WHILE` runs in int8;
- a `DEQUANTIZE` read only by `QUANTIZE`s becomes requantizations (`QUANTIZE` int8 -> int8),
  and a requantization to the scale it already has goes.

`int8_logits` hands the full-resolution logits out as int8 (their scale and zero point in
the tensor; the argmax needs neither), as a static int8 file does: no `DEQUANTIZE` of
H x W x C values per call.
"""

import copy

from tensorflow.lite.python import schema_py_generated as schema

from itnet_keras.export.flatbuffer import (
    nested_subgraphs, new_op, new_tensor, op_name, parse, producer, replace_uses, same_params, serialize, text_of,
    uses, while_ops,
)

FLOAT32, INT8 = schema.TensorType.FLOAT32, schema.TensorType.INT8
# The signatures whose full-resolution logits an int8 loop file hands out as int8 (`int8_logits`).
INT8_LOGITS_SIGNATURES = ("outputs", "anytime", "upsample", "finish")


def _int8_range(params):
    scale, zero = float(params.scale[0]), int(params.zeroPoint[0])
    return scale * (-128 - zero), scale * (127 - zero)


def _covering(read, made):
    """Int8 parameters whose range holds both `read`'s and `made`'s: `read` itself when it
    holds `made`'s (a state the body makes outside the range it reads it at would be
    clipped when carried into the next iteration, or out of `anytime`'s loop)."""
    (read_lo, read_hi), (made_lo, made_hi) = _int8_range(read), _int8_range(made)
    if read_lo <= made_lo and made_hi <= read_hi:
        return read
    lo, hi = min(read_lo, made_lo), max(read_hi, made_hi)
    params = copy.deepcopy(read)
    params.scale = [(hi - lo) / 255]
    params.zeroPoint = [int(min(127, max(-128, round(-128 - lo / params.scale[0]))))]
    return params


def _carry(model, parent, loop, k, codes):
    """Make loop-carried tensor k of the `WHILE` op `loop` int8, when the pattern above holds."""
    options = loop.builtinOptions
    body, cond = model.subgraphs[options.bodySubgraphIndex], model.subgraphs[options.condSubgraphIndex]
    outer_in, outer_out = loop.inputs[k], loop.outputs[k]
    body_in, body_out = body.inputs[k], body.outputs[k]
    if parent.tensors[outer_in].type != FLOAT32 or body_in == body_out:
        return
    readers, maker = uses(body, body_in), producer(body, body_out)
    if maker is None or codes[maker.opcodeIndex] != "DEQUANTIZE" or uses(body, body_out):
        return
    if len(readers) > 1 or (readers and codes[readers[0].opcodeIndex] != "QUANTIZE"):
        return
    if any(codes[op.opcodeIndex] != "QUANTIZE" for op in uses(cond, cond.inputs[k])):
        return  # the condition reads the float value (a CAST, say): it stays float
    made = body.tensors[maker.inputs[0]].quantization
    if readers:  # the range the body reads it at and the range it makes it at, both held
        quantize = readers[0]
        quantized = quantize.outputs[0]
        read = body.tensors[quantized].quantization
        params = _covering(read, made)
        if params is read:  # the body reads the carried tensor as it is
            replace_uses(body, quantized, body_in)
            body.operators.remove(quantize)
        # else the QUANTIZE stays: int8 at the carried range -> int8 at the read range
    else:  # not read inside the body (the latest logits): keep the maker's scale
        params = made
    for graph, tensor in ((body, body_in), (body, body_out), (cond, cond.inputs[k])):
        graph.tensors[tensor].type = INT8
        graph.tensors[tensor].quantization = copy.deepcopy(params)
    maker.opcodeIndex = codes.index("QUANTIZE")  # requantize to the carried scale
    name = parent.tensors[outer_in].name
    outer_in_q = new_tensor(parent, parent.tensors[outer_in], name + b"_int8", INT8, params)
    outer_out_q = new_tensor(parent, parent.tensors[outer_out], parent.tensors[outer_out].name + b"_int8",
                              INT8, params)
    at = parent.operators.index(loop)
    parent.operators.insert(at, new_op(codes.index("QUANTIZE"), [outer_in], [outer_in_q]))
    parent.operators.insert(at + 2, new_op(codes.index("DEQUANTIZE"), [outer_out_q], [outer_out]))
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


# -- float islands around control flow ---------------------------------------------------


def _dequantized(graph, tensor, codes):
    """The int8 tensor whose `DEQUANTIZE` makes `tensor`, or None."""
    maker = producer(graph, tensor)
    if maker is None or codes[maker.opcodeIndex] != "DEQUANTIZE" or graph.tensors[maker.inputs[0]].type != INT8:
        return None
    return maker.inputs[0]


def _is_boundary(graph, tensor):
    return tensor in list(graph.inputs) or tensor in list(graph.outputs)


def _drop_unused(graph, codes):
    """Remove `DEQUANTIZE` / `QUANTIZE` ops whose output no op and no graph output reads."""
    changed = True
    while changed:
        read = {t for op in graph.operators for t in op.inputs} | set(graph.outputs)
        dead = [op for op in graph.operators
                if codes[op.opcodeIndex] in ("QUANTIZE", "DEQUANTIZE") and op.outputs[0] not in read]
        for op in dead:
            graph.operators.remove(op)
        changed = bool(dead)


def _int8_if(model, parent, op, codes):
    """Make the `IF` op `op` take int8 inputs that the parent dequantized and both branches
    quantize again, and hand out int8 outputs that both branches dequantized and the parent
    quantizes again. Returns whether it changed anything."""
    branches = [model.subgraphs[i] for i in nested_subgraphs(op, codes)]
    changed = False
    for k, outer in enumerate(list(op.inputs)[1:], start=1):  # input 0 is the condition
        source = _dequantized(parent, outer, codes)
        if source is None:
            continue
        inner = [b.inputs[k - 1] for b in branches]
        if any(t in list(b.outputs) or any(codes[r.opcodeIndex] != "QUANTIZE" for r in uses(b, t))
               for b, t in zip(branches, inner)):  # a branch passing it through would hand out int8
            continue
        for branch, tensor in zip(branches, inner):  # each branch's QUANTIZE now requantizes
            branch.tensors[tensor].type = INT8
            branch.tensors[tensor].quantization = copy.deepcopy(parent.tensors[source].quantization)
        op.inputs = list(op.inputs)
        op.inputs[k] = source
        changed = True
    for k, outer in enumerate(list(op.outputs)):
        readers = uses(parent, outer)
        if (parent.tensors[outer].type != FLOAT32 or len(readers) != 1 or _is_boundary(parent, outer)
                or codes[readers[0].opcodeIndex] != "QUANTIZE" or _is_boundary(parent, readers[0].outputs[0])):
            continue
        makers = [producer(b, b.outputs[k]) for b in branches]
        if any(m is None or codes[m.opcodeIndex] != "DEQUANTIZE" or uses(b, b.outputs[k])
               for b, m in zip(branches, makers)):
            continue
        quantize = readers[0]
        params = parent.tensors[quantize.outputs[0]].quantization
        for branch, maker in zip(branches, makers):  # each branch requantizes to the parent's scale
            maker.opcodeIndex = codes.index("QUANTIZE")
            branch.tensors[maker.outputs[0]].type = INT8
            branch.tensors[maker.outputs[0]].quantization = copy.deepcopy(params)
        parent.tensors[outer].type = INT8
        parent.tensors[outer].quantization = copy.deepcopy(params)
        replace_uses(parent, quantize.outputs[0], outer)
        parent.operators.remove(quantize)
        changed = True
    return changed


def _sink_resize(graph, op, codes):
    """A float `RESIZE_BILINEAR` of a dequantized tensor: resize the int8 tensor, dequantize after."""
    source, out = _dequantized(graph, op.inputs[0], codes), op.outputs[0]
    if source is None:
        return False
    name = graph.tensors[out].name + b"_int8"
    resized = new_tensor(graph, graph.tensors[out], name, INT8, graph.tensors[source].quantization)
    op.inputs, op.outputs = [source, *list(op.inputs)[1:]], [resized]
    graph.operators.insert(graph.operators.index(op) + 1, new_op(codes.index("DEQUANTIZE"), [resized], [out]))
    return True


def _int8_concatenation(graph, op, codes):
    """A float `CONCATENATION` of dequantized tensors, quantized once: concatenate in int8,
    each input requantized to the output's scale (TFLite's int8 concatenation keeps one)."""
    sources = [_dequantized(graph, t, codes) for t in op.inputs]
    readers = uses(graph, op.outputs[0])
    if (None in sources or len(readers) != 1 or codes[readers[0].opcodeIndex] != "QUANTIZE"
            or _is_boundary(graph, op.outputs[0])):
        return False
    quantize = readers[0]
    result = quantize.outputs[0]
    params = graph.tensors[result].quantization
    inputs = []
    for source in sources:
        if not same_params(graph.tensors[source].quantization, params):
            requantized = new_tensor(graph, graph.tensors[source], graph.tensors[source].name + b"_requantized",
                                      INT8, params)
            graph.operators.insert(graph.operators.index(op), new_op(codes.index("QUANTIZE"), [source], [requantized]))
            source = requantized
        inputs.append(source)
    op.inputs, op.outputs = inputs, [result]
    graph.operators.remove(quantize)
    return True


def _fold_requantize(graph, op, codes):
    """`QUANTIZE` of a dequantized tensor: requantize the int8 tensor; one to the scale it
    already has: read the int8 tensor instead."""
    source = _dequantized(graph, op.inputs[0], codes)
    if source is not None:
        op.inputs = [source]
        return True
    source, result = op.inputs[0], op.outputs[0]
    if (graph.tensors[source].type == INT8 and not _is_boundary(graph, result)
            and same_params(graph.tensors[source].quantization, graph.tensors[result].quantization)):
        replace_uses(graph, result, source)
        graph.operators.remove(op)
        return True
    return False


_REWRITES = {"RESIZE_BILINEAR": _sink_resize, "CONCATENATION": _int8_concatenation, "QUANTIZE": _fold_requantize}


def integer_islands(data):
    """Remove the float islands around the control flow of a full-integer `.tflite` file
    (bytes; see the module's docstring); returns the new bytes."""
    model = parse(data)
    codes = [op_name(c) for c in model.operatorCodes]
    if "QUANTIZE" not in codes or "DEQUANTIZE" not in codes:
        return data
    changed = True
    while changed:
        changed = False
        for graph in model.subgraphs:
            for op in list(graph.operators):
                if op not in graph.operators:
                    continue
                name = codes[op.opcodeIndex]
                if name == "IF":
                    changed |= _int8_if(model, graph, op, codes)
                elif name in _REWRITES:
                    changed |= _REWRITES[name](graph, op, codes)
            _drop_unused(graph, codes)
    return serialize(model)


def int8_logits(data, signatures):
    """Hand the outputs of `signatures` that a `DEQUANTIZE` makes out as its int8 input
    instead (bytes in and out)."""
    model = parse(data)
    codes = [op_name(c) for c in model.operatorCodes]
    for signature in model.signatureDefs or []:
        if text_of(signature.signatureKey) not in signatures:
            continue
        graph = model.subgraphs[signature.subgraphIndex]
        for item in signature.outputs:
            maker = producer(graph, item.tensorIndex)
            if maker is None or codes[maker.opcodeIndex] != "DEQUANTIZE" or uses(graph, item.tensorIndex):
                continue
            graph.outputs = [maker.inputs[0] if t == item.tensorIndex else t for t in graph.outputs]
            item.tensorIndex = maker.inputs[0]
        _drop_unused(graph, codes)
    return serialize(model)
