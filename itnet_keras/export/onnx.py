"""ONNX export with tf2onnx: the loop becomes one ONNX `Loop`, shared weights stay single.

The file holds the `outputs` function (image -> output_1 .. output_N). Opset 17. The
first iteration runs before the loop and reads the block's kernels too; a pass after
tf2onnx stores each kernel once (`_store_weights_once`). Three
fixes for tf2onnx: every conv kernel read in the loop body is traced with a static shape
(`IterativeBlock.static_weight_shapes`), the `Loop` body's iteration-count and condition inputs are
declared scalars (onnxruntime refuses a `Loop` whose body inputs have no shape), and resize
scales are rounded up (`_round_resize_scales_up`).
"""

import collections
import tempfile
from pathlib import Path

import numpy as np
import onnx
import tensorflow as tf
import tf2onnx
from onnx import numpy_helper

from itnet_keras.export.artifacts import ExportError, export_size, metadata, writable_destination, write_export
from itnet_keras.model import iterative_block, named_outputs

OPSET = 17


def _subgraphs(graph):
    """`graph` and every graph nested in its nodes' attributes."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _subgraphs(attribute.g)


def _declare_loop_scalars(graph):
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                if node.op_type == "Loop":
                    for body_input in attribute.g.input[:2]:  # iteration count, condition
                        body_input.type.tensor_type.shape.SetInParent()  # shape [] (scalar)
                _declare_loop_scalars(attribute.g)


CONV_LAYOUTS = ((3, 2, 0, 1), (2, 3, 0, 1))  # HWIO -> OIHW (conv), -> (C, 1, kh, kw) (depthwise)


def _round_resize_scales_up(graph):
    """tf2onnx writes a bilinear resize to a static size as `Resize` by float `scales`
    (size / input size), whose output size ONNX takes as floor(input size x scale): 5 x
    float32(9 / 5) floors to 8, and onnxruntime refuses the file (a `Concat` of 8 and 9 rows,
    e.g. at 72x64 and 66x60, where a coarser scale has an odd size). Each scale becomes the
    next float32 above it, which floors to the size meant for any size below 2**20."""
    resizes = [node for g in _subgraphs(graph) for node in g.node
               if node.op_type == "Resize" and len(node.input) > 2 and node.input[2]]
    if any(a.name == "mode" and a.s != b"linear" for node in resizes for a in node.attribute):
        raise ExportError("a Resize other than bilinear: rounding its scales up would shift its pixels")
    names, rounded = {node.input[2] for node in resizes}, set()

    def round_up(tensor, name):
        scales = numpy_helper.to_array(tensor)
        up = np.where(scales == 1, scales, np.nextafter(scales, np.float32(np.inf)))
        tensor.CopyFrom(numpy_helper.from_array(up.astype(scales.dtype), tensor.name))
        rounded.add(name)

    for g in _subgraphs(graph):
        for initializer in g.initializer:
            if initializer.name in names:
                round_up(initializer, initializer.name)
        for node in g.node:
            value = [a.t for a in node.attribute if a.name == "value"]
            if node.op_type == "Constant" and node.output[0] in names and value:
                round_up(value[0], node.output[0])
    if names - rounded:  # computed at run time: the sizes would need another rewrite
        raise ExportError(f"Resize scales {sorted(names - rounded)} are not constants: cannot round them up")


def _used_names(graph):
    names = {o.name for o in graph.output}
    for g in _subgraphs(graph):
        for node in g.node:
            names.update(node.input)
    return names


def _store_weights_once(graph):
    """Keep one copy of each weight in the main graph. The first iteration runs before the
    loop and reads a kernel in ONNX's conv layout, the `Loop` body reads it as stored
    (HWIO): such a copy becomes a `Transpose` of the stored one (onnxruntime folds it when
    the session starts), exact copies are renamed, and unused initializers dropped."""
    arrays = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    by_bytes, renames, transposes, sources = {}, {}, [], set()
    for name, array in arrays.items():
        if array.size > 1:
            by_bytes.setdefault((array.dtype.str, array.shape, array.tobytes()), name)
    for name, array in arrays.items():
        key = (array.dtype.str, array.shape, array.tobytes())
        if array.size > 1 and by_bytes[key] != name:
            renames[name] = by_bytes[key]
            continue
        if array.ndim != 4 or name in sources:
            continue
        for perm in CONV_LAYOUTS:
            inverse = tuple(int(i) for i in np.argsort(perm))
            source = np.ascontiguousarray(array.transpose(inverse))
            stored = by_bytes.get((source.dtype.str, source.shape, source.tobytes()))
            if stored is not None and stored != name and stored not in {t.output[0] for t in transposes}:
                transposes.append(onnx.helper.make_node("Transpose", [stored], [name], perm=list(perm)))
                sources.add(stored)
                break
    for g in _subgraphs(graph):
        for node in g.node:
            for i, name in enumerate(node.input):
                node.input[i] = renames.get(name, node.input[i])
    replaced = set(renames) | {t.output[0] for t in transposes}
    for node in reversed(transposes):
        graph.node.insert(0, node)
    used = _used_names(graph)
    for initializer in list(graph.initializer):
        if initializer.name in replaced or initializer.name not in used:
            graph.initializer.remove(initializer)


def to_onnx(model, input_size):
    """The ONNX `ModelProto` of the model's `outputs` function, for one image (batch 1)."""
    spec = tf.TensorSpec((1, *input_size, 3), tf.float32, name="image")

    @tf.function(input_signature=[spec])
    def outputs(image):
        return named_outputs(model, image)

    with iterative_block(model).static_weight_shapes():
        proto, _ = tf2onnx.convert.from_function(outputs, input_signature=[spec], opset=OPSET)
    _declare_loop_scalars(proto.graph)
    _round_resize_scales_up(proto.graph)
    _store_weights_once(proto.graph)
    return proto


def _constants(proto):
    """Every constant array of the model: initializers and Constant nodes, in all graphs."""
    for graph in _subgraphs(proto.graph):
        for initializer in graph.initializer:
            yield numpy_helper.to_array(initializer)
        for node in graph.node:
            if node.op_type == "Constant":
                for attribute in node.attribute:
                    if attribute.name == "value":
                        yield numpy_helper.to_array(attribute.t)


def inspect_onnx(path):
    """Op counts over all graphs (`Loop` bodies included), constant bytes, opset."""
    proto = onnx.load(str(path))
    ops = collections.Counter(node.op_type for graph in _subgraphs(proto.graph) for node in graph.node)
    return {
        "file_bytes": Path(path).stat().st_size,
        "ops": dict(ops),
        "weight_bytes": int(sum(a.nbytes for a in _constants(proto))),
        "opset": max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
        "outputs": [o.name for o in proto.graph.output],
    }


def count_constants_holding(path, array):
    """How many constants hold `array`'s float32 values, as stored (HWIO) or as ONNX conv
    weights (`CONV_LAYOUTS`). A kernel shared by every iteration is found once."""
    array = np.asarray(array, np.float32)
    candidates = {array.tobytes()}
    if array.ndim == 4:
        candidates |= {np.ascontiguousarray(array.transpose(perm)).tobytes() for perm in CONV_LAYOUTS}
    return sum(a.dtype == np.float32 and a.nbytes == array.nbytes and a.tobytes() in candidates
               for a in _constants(onnx.load(str(path))))


def convert_onnx(model, path, spec=None, input_size=None):
    """Write the ONNX file (and its sidecar metadata) atomically; returns `inspect_onnx`."""
    path = Path(path)
    writable_destination(path, "onnx" if spec is not None else None)
    input_size = export_size(spec, input_size)
    proto = to_onnx(model, input_size)
    with tempfile.TemporaryDirectory() as work:
        candidate = Path(work) / "model.onnx"
        onnx.save(proto, str(candidate))
        onnx.checker.check_model(str(candidate))
        summary = inspect_onnx(candidate)
        block = iterative_block(model)  # one iteration, or an unrolled model, has no loop to keep
        expected = int(block.num_iterations > 1 and not block.unroll)
        if summary["ops"].get("Loop", 0) != expected:
            raise ExportError(f"{path}: {summary['ops'].get('Loop', 0)} Loop ops, expected {expected}")
        meta = None if spec is None else metadata(model, spec, input_size, "float32")
        if meta is not None:
            meta.update(format="onnx", opset=OPSET, signatures={"outputs": meta["signatures"]["outputs"]})
        write_export(path, candidate.read_bytes(), meta)
    summary["file_bytes"] = path.stat().st_size
    return summary
