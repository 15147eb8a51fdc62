"""Read a `.tflite` flatbuffer: operators per subgraph, tensor types, constant buffers.

The export's checks (`tflite.check_tflite`: the signatures, no `Flex` or custom op, one
`WHILE` per looping signature through `signature_ops`, int8 carries through
`loop_carried_types`), the tests' (shared kernels stored once) and the graph-memory table
read the file itself, not the converter's word.
"""

import collections
import copy
import hashlib
import json
from pathlib import Path

import flatbuffers
import numpy as np
from tensorflow.lite.python import schema_py_generated as schema

_BUILTIN_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
TYPE_NAMES = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}


def text_of(value):
    return value.decode() if isinstance(value, bytes) else value


def op_name(code):
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    if builtin == schema.BuiltinOperator.CUSTOM:
        return text_of(code.customCode or b"")
    return _BUILTIN_NAMES.get(builtin, f"BUILTIN_{builtin}")


def parse(data):
    """A `.tflite` flatbuffer (bytes) as the flatbuffer object API (`schema.ModelT`)."""
    return schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))


def serialize(model):
    """A `schema.ModelT` (see `parse`) as `.tflite` bytes."""
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def load(path):
    """The file as the flatbuffer object API (`schema.ModelT`)."""
    return parse(Path(path).read_bytes())


def inspect_tflite(path):
    """A summary of a `.tflite` file (plain Python values).

    - `ops`: operator counts over all subgraphs; `subgraphs`: name, op counts and the
      tensor dtypes of each subgraph (a `WHILE` body is its own subgraph);
    - `flex_ops` / `custom_ops`: ops the builtin runtime cannot run (`Flex...` ops, other ops);
    - `weight_bytes`: bytes of all constant buffers; `duplicate_buffers`: groups of
      identical constant buffers of at least 256 bytes (a weight stored twice);
    - `signatures`: signature keys.
    """
    model = load(path)
    codes = [op_name(c) for c in model.operatorCodes]
    total, subgraphs = collections.Counter(), []
    for graph in model.subgraphs:
        ops = collections.Counter(codes[op.opcodeIndex] for op in graph.operators or [])
        total.update(ops)
        dtypes = collections.Counter(TYPE_NAMES[t.type] for t in graph.tensors or [])
        subgraphs.append({"name": text_of(graph.name), "ops": dict(ops), "tensor_dtypes": dict(dtypes)})
    digests = collections.defaultdict(list)
    weight_bytes = 0
    for index, buffer in enumerate(model.buffers):
        size = 0 if buffer.data is None else len(buffer.data)
        weight_bytes += size
        if size >= 256:
            digests[hashlib.sha1(np.asarray(buffer.data).tobytes()).hexdigest()].append(index)
    signatures = list(signature_subgraphs(model))
    return {
        "file_bytes": Path(path).stat().st_size,
        "ops": dict(total),
        "flex_ops": sorted({c for c in codes if c.startswith("Flex")}),
        "custom_ops": sorted({c for c in codes if c not in _BUILTIN_NAMES.values() and not c.startswith("Flex")}),
        "subgraphs": subgraphs,
        "weight_bytes": weight_bytes,
        "duplicate_buffers": [group for group in digests.values() if len(group) > 1],
        "signatures": signatures,
    }


def signature_subgraphs(model):
    """{signature key: index of its subgraph} of a loaded model (see `load`)."""
    return {text_of(s.signatureKey): s.subgraphIndex for s in model.signatureDefs or []}


def nested_subgraphs(op, codes):
    """Subgraphs that `op` runs: a WHILE's condition and body, an IF's branches."""
    name, options = codes[op.opcodeIndex], op.builtinOptions
    if name == "WHILE":
        return [options.condSubgraphIndex, options.bodySubgraphIndex]
    if name == "IF":
        return [options.thenSubgraphIndex, options.elseSubgraphIndex]
    return []


def _signature_graphs(model, codes, index):
    """Indices of the subgraphs a signature whose subgraph is `index` runs: its own, and
    those its control-flow ops run (a WHILE's body, an IF's branches), each once."""
    seen, pending = [], [index]
    while pending:
        graph = pending.pop()
        if graph in seen:
            continue
        seen.append(graph)
        for op in model.subgraphs[graph].operators or []:
            pending += nested_subgraphs(op, codes)
    return seen


def signature_ops(path):
    """{signature: op counts over the subgraphs it runs}: its own, and those its control-flow
    ops run (a WHILE's body, an IF's branches), each counted once."""
    model = load(path)
    codes = [op_name(c) for c in model.operatorCodes]
    return {key: dict(collections.Counter(codes[op.opcodeIndex] for graph in _signature_graphs(model, codes, index)
                                          for op in model.subgraphs[graph].operators or []))
            for key, index in signature_subgraphs(model).items()}


def signature_op_dtypes(path):
    """{signature: {op name: {dtype: number of outputs}}} over the subgraphs it runs (as
    `signature_ops`): a float island of a quantized file shows as float32 outputs, or as a
    `DEQUANTIZE`."""
    model = load(path)
    codes = [op_name(c) for c in model.operatorCodes]
    result = {}
    for key, index in signature_subgraphs(model).items():
        ops = collections.defaultdict(collections.Counter)
        for graph in (model.subgraphs[i] for i in _signature_graphs(model, codes, index)):
            for op in graph.operators or []:
                ops[codes[op.opcodeIndex]].update(TYPE_NAMES[graph.tensors[t].type] for t in op.outputs)
        result[key] = {name: dict(counts) for name, counts in ops.items()}
    return result


def count_buffers_holding(path, array):
    """How many constant buffers hold `array`'s float32 bytes, as stored (HWIO) or in
    TFLite's conv layout (OHWI). A kernel used by every iteration of a loop is found once."""
    array = np.asarray(array, np.float32)
    candidates = {array.tobytes()}
    if array.ndim == 4:
        candidates.add(np.ascontiguousarray(array.transpose(3, 0, 1, 2)).tobytes())
    found = 0
    for buffer in load(path).buffers:
        if buffer.data is not None and len(buffer.data) == array.nbytes:
            found += np.asarray(buffer.data).tobytes() in candidates
    return found


def while_ops(model):
    """(graph, op) of every `WHILE` op of a loaded model."""
    codes = [op_name(c) for c in model.operatorCodes]
    return [(graph, op) for graph in model.subgraphs for op in graph.operators or []
            if codes[op.opcodeIndex] == "WHILE"]


def loop_carried_types(path, quantized_bodies=False):
    """The dtypes each `WHILE` op of the file carries, one list per `WHILE`; with
    `quantized_bodies`, only of those whose body computes something in int8 (the quantizer
    leaves float a body that calibration never ran: `anytime`'s of N = 2, which runs
    iterations 2 .. n - 1)."""
    model = load(path)

    def quantized(op):
        body = model.subgraphs[op.builtinOptions.bodySubgraphIndex]
        return any(TYPE_NAMES[body.tensors[t].type] == "int8" for o in body.operators for t in o.outputs)

    return [[TYPE_NAMES[graph.tensors[t].type] for t in op.inputs] for graph, op in while_ops(model)
            if not quantized_bodies or quantized(op)]


def loop_body_dtypes(path):
    """{body subgraph name: {dtype: number of op outputs of that dtype}} of every `WHILE`
    body: what the loop computes in."""
    model = load(path)
    result = {}
    for index in sorted({op.builtinOptions.bodySubgraphIndex for _, op in while_ops(model)}):
        graph = model.subgraphs[index]
        counts = collections.Counter(TYPE_NAMES[graph.tensors[t].type] for op in graph.operators for t in op.outputs)
        result[text_of(graph.name)] = dict(counts)
    return result


def op_output_dtypes(path):
    """[{op name: {dtype: number of outputs}}] per subgraph: where a quantized file computes
    in float32 (a float island shows as float32 outputs of its compute ops)."""
    model = load(path)
    codes = [op_name(c) for c in model.operatorCodes]
    result = []
    for graph in model.subgraphs:
        ops = collections.defaultdict(collections.Counter)
        for op in graph.operators or []:
            ops[codes[op.opcodeIndex]].update(TYPE_NAMES[graph.tensors[t].type] for t in op.outputs)
        result.append({name: dict(counts) for name, counts in ops.items()})
    return result


def iterations_of(path):
    """N of a loop `.tflite` file: from its sidecar metadata, else from its `outputs` signature."""
    metadata = Path(path).with_suffix(".json")
    if metadata.is_file():
        return json.loads(metadata.read_text())["num_iterations"]
    model = load(path)
    return len(model.signatureDefs[list(signature_subgraphs(model)).index("outputs")].outputs)


# -- editing a graph (the int8 rewrites) -------------------------------------------------


def uses(graph, tensor):
    return [op for op in graph.operators if tensor in list(op.inputs)]


def producer(graph, tensor):
    return next((op for op in graph.operators if tensor in list(op.outputs)), None)


def new_tensor(graph, like, name, dtype, quantization):
    tensor = copy.deepcopy(like)
    tensor.name, tensor.type, tensor.buffer = name, dtype, 0
    tensor.quantization = copy.deepcopy(quantization)
    graph.tensors.append(tensor)
    return len(graph.tensors) - 1


def new_op(opcode, inputs, outputs):
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = opcode, list(inputs), list(outputs)
    return op


def same_params(a, b):
    return (a is not None and b is not None and list(a.scale) == list(b.scale)
            and list(a.zeroPoint) == list(b.zeroPoint))


def replace_uses(graph, old, new):
    """Ops that read `old` read `new` (`old` is no graph output: the callers check)."""
    for op in graph.operators:
        op.inputs = [new if t == old else t for t in op.inputs]
