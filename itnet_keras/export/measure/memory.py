"""Graph memory of a `.tflite` file: file bytes, weight bytes, and activation memory.

Activation memory is the peak of the bytes of live non-constant tensors when the ops of a
signature run in file order: a tensor is live from the op that writes it (or from the
start, for inputs) to the last op that reads it (or to the end, for outputs). A control-flow
op (`WHILE`, `IF`) adds, while it runs, the larger peak of its subgraphs on top of
the tensors live around it. This is the lower bound that any arena plan reaches; LiteRT's
planner may add alignment and fragmentation.
"""

import math
from pathlib import Path

import numpy as np

from itnet_keras.costs import output_costs
from itnet_keras.export.flatbuffer import (TYPE_NAMES, inspect_tflite, load, nested_subgraphs, op_name,
                                           signature_subgraphs)
from itnet_keras.export.tflite import convert_tflite
from itnet_keras.files import markdown_table
from itnet_keras.model import build_itnet, model_args

_ITEM_BYTES = {"float32": 4, "float16": 2, "int32": 4, "int64": 8, "int8": 1, "uint8": 1, "bool": 1, "int16": 2}


def _tensor_bytes(tensor):
    shape = [] if tensor.shape is None else [max(int(d), 1) for d in tensor.shape]
    return math.prod(shape) * _ITEM_BYTES.get(TYPE_NAMES[tensor.type], 4)


def subgraph_peak(model, index, codes, _memo=None, outputs=True):
    """Peak live activation bytes of subgraph `index` (its inputs and, with `outputs`,
    its outputs included; without, the working set of the computation alone)."""
    memo = {} if _memo is None else _memo
    if outputs and index in memo:
        return memo[index]
    graph = model.subgraphs[index]
    constant = [model.buffers[t.buffer].data is not None for t in graph.tensors]
    operators = graph.operators or []
    end = len(operators)
    first, last = {}, {}
    for t in graph.inputs if graph.inputs is not None else []:
        first[t], last[t] = -1, -1
    for position, op in enumerate(operators):
        for t in op.inputs if op.inputs is not None else []:
            if t >= 0 and not constant[t]:
                first.setdefault(t, position)
                last[t] = max(last.get(t, position), position)
        for t in op.outputs if op.outputs is not None else []:
            first.setdefault(t, position)
            last[t] = max(last.get(t, position), position)
    for t in graph.outputs if graph.outputs is not None else []:
        last[t] = end
    sizes = {t: _tensor_bytes(graph.tensors[t]) for t in first}
    if not outputs:
        for t in graph.outputs if graph.outputs is not None else []:
            sizes[t] = 0
    peak = sum(sizes[t] for t in first if first[t] == -1)
    for position, op in enumerate(operators):
        live = sum(size for t, size in sizes.items() if first[t] <= position <= last[t])
        nested = nested_subgraphs(op, codes)
        inner = [subgraph_peak(model, i, codes, memo) for i in nested]
        extra = max(inner, default=0)  # condition and body (or branches) run one at a time
        peak = max(peak, live + extra)
    if outputs:
        memo[index] = peak
    return peak


def activation_bytes(path, signature="outputs", outputs=True):
    """Peak live activation bytes of one signature of a `.tflite` file (without its
    output tensors when `outputs=False`)."""
    model = load(path)
    codes = [op_name(c) for c in model.operatorCodes]
    subgraphs = signature_subgraphs(model)
    if signature not in subgraphs:
        raise ValueError(f"{path} has no signature {signature!r}")
    return subgraph_peak(model, subgraphs[signature], codes, outputs=outputs)


def file_row(path, label, costs=None):
    """One table row for a `.tflite` file (and the cost model's last output, if given)."""
    summary = inspect_tflite(path)
    row = {"artifact": label, "file_bytes": summary["file_bytes"], "weight_bytes": summary["weight_bytes"],
           "activation_bytes": activation_bytes(path, "outputs"),
           "working_bytes": activation_bytes(path, "outputs", outputs=False),
           "while_ops": summary["ops"].get("WHILE", 0)}
    if costs is not None:
        row.update(cost_graph_bytes_collapsed=costs[-1]["graph_bytes_collapsed"],
                   cost_graph_bytes_unrolled=costs[-1]["graph_bytes_unrolled"])
    return row


def model_rows(model, label, input_size, folder, quants=("float32",)):
    """Rows for the loop export of `model` in each quantization mode (int8 only with weight
    sharing), and for its unrolled float32 export (same weights, `unroll=True`). Files are
    written to `folder`."""
    args = model_args(model)
    costs = output_costs(model, input_size)
    rows = []
    for quant in quants:
        if quant == "int8" and not args["weight_sharing"]:
            continue  # refused by convert_tflite: int8 needs weight sharing
        path = Path(folder) / f"{label}_{quant}.tflite"
        images = None
        if quant == "int8":
            images = [np.random.default_rng(i).random((*input_size, 3), dtype=np.float32) for i in range(2)]
        convert_tflite(model, path, quant, input_size=input_size, calibration_images=images)
        rows.append(file_row(path, f"{label} loop {quant}", costs))
    unrolled = build_itnet(input_shape=(*input_size, 3), **{**args, "unroll": True})
    unrolled.set_weights(model.get_weights())
    path = Path(folder) / f"{label}_unrolled_float32.tflite"
    convert_tflite(unrolled, path, "float32", input_size=input_size)
    rows.append(file_row(path, f"{label} unrolled float32", costs))
    return rows


def format_rows(rows):
    mb = lambda v: "" if v is None else f"{v / 1e6:.1f}"  # noqa: E731
    header = ["artifact", "WHILE ops", "file MB", "weight MB", "activation MB (peak live, N outputs included)",
              "working set MB (outputs excluded)", "cost model: graph MB collapsed", "cost model: graph MB unrolled"]
    return markdown_table(header, [
        [r["artifact"], r["while_ops"], mb(r["file_bytes"]), mb(r["weight_bytes"]), mb(r["activation_bytes"]),
         mb(r["working_bytes"]), mb(r.get("cost_graph_bytes_collapsed")), mb(r.get("cost_graph_bytes_unrolled"))]
        for r in rows], align="lrrrrrrr")
