"""The cost model (SPEC s.6): per output n, from the built model's own layers.

- macs: multiply-accumulates of the convolutions for one image up to output n.
- params: trainable parameters that output n needs.
- graph_bytes_collapsed / graph_bytes_unrolled: only conv layers count; each
  conv contributes the bytes of its parameters, its input and its output
  feature map (float32, batch 1). Collapsed: the loop is one node, so the
  iterative block's and the heads' convs count once, with as many parameter
  sets as the iterations up to n hold (one when weights are shared).
  Unrolled: every iteration's convs count again, parameters included.
- depth: convs on the longest path from the input to output n (latency).
- state_bytes: the loop-carried state (the L scale maps, float32, batch 1).

Run `python -m itnet_keras.costs --preset camvid_shared` for the table.
"""

import argparse
import json
import math
from dataclasses import dataclass

from itnet_keras.cli import description, parse_size
from itnet_keras.console import add_verbose_flag, quiet_startup


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m itnet_keras.costs", description=description(__doc__))
    parser.add_argument("--preset", required=True)
    parser.add_argument("--width", type=int, help="the paper's f (overrides the preset)")
    parser.add_argument("--input-size", type=parse_size, help="HEIGHTxWIDTH (default: the preset's dataset)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a markdown table")
    add_verbose_flag(parser)
    return parser


if __name__ == "__main__":  # --help and flag errors answer, and TensorFlow loads quietly, before the imports below
    quiet_startup(build_parser().parse_args().verbose)

from itnet_keras.datasets import DATASETS  # noqa: E402
from itnet_keras.files import markdown_table  # noqa: E402
from itnet_keras.model import build_itnet, data_block, iterative_block  # noqa: E402
from itnet_keras.presets import PRESET_DATASET  # noqa: E402

BYTES = 4  # float32


@dataclass(frozen=True)
class Conv:
    name: str
    in_shape: tuple  # (h, w, c)
    out_shape: tuple
    kernel_size: int  # kh * kw
    in_per_out: int  # input channels each output channel reads (1 when depthwise)
    params: int  # kernel + bias of one instance

    @property
    def macs(self):
        return math.prod(self.out_shape) * self.kernel_size * self.in_per_out

    @property
    def fm_bytes(self):
        return BYTES * (math.prod(self.in_shape) + math.prod(self.out_shape))


def _row_size(usage, name):
    """Elements of weight `name` that one iteration reads (0 if there is no such weight)."""
    if name not in usage:
        return 0
    use = usage[name]
    return math.prod(use.variable.shape[1:] if use.rows else use.variable.shape)


def inventory(model, input_size):
    """The model's convs: (data-block convs, {part: convs of one iteration}, state shapes)."""
    data, block = data_block(model), iterative_block(model)
    image_shape = (1, *input_size, 3)
    data_convs = [
        Conv(layer.name, shape_in[1:], shape_out[1:], math.prod(layer.kernel_size), shape_in[-1],
             sum(math.prod(w.shape) for w in layer.weights))
        for layer, shape_in, shape_out in data.conv_graph(image_shape)
    ]
    state_shapes = [tuple(s[1:]) for s in data.compute_output_shape(image_shape)]
    usage = {use.variable.name: use for use in block.weight_usage()}
    parts = {"mix": [], "block": [], "head": []}
    rows = [(l, row) for l in range(1, len(state_shapes) + 1) for row in block.conv_rows()]
    rows.append((1, block.head_row()))
    for l, row in rows:
        h, w, _ = state_shapes[l - 1]
        key = "head" if row.part == "head" else f"scale{l}_{row.name}"
        kh, kw, channels_in, channels_out = row.kernel
        out_channels = channels_in * channels_out if row.depthwise else channels_out
        params = _row_size(usage, key + "_kernel") + _row_size(usage, key + "_bias")
        parts[row.part].append(Conv(key, (h, w, channels_in), (h, w, out_channels), kh * kw,
                                    1 if row.depthwise else channels_in, params))
    return data_convs, parts, state_shapes


def _trainable_params(model, n):
    """Trainable parameters read on the way to output n (1-based)."""
    block = iterative_block(model)
    total = sum(math.prod(w.shape) for layer in model.layers if layer is not block for w in layer.trainable_weights)
    for use in block.weight_usage():
        if not use.variable.trainable:
            continue
        if use.rows is None:
            total += math.prod(use.variable.shape) if use.first < n else 0
        else:
            total += math.prod(use.variable.shape[1:]) * min(max(n - use.first, 0), use.rows)
    return total


def output_costs(model, input_size=None):
    """One dict per output n: output, macs, params, graph bytes (both views), depth, state_bytes."""
    input_size = tuple(input_size or model.input_shape[1:3])
    if None in input_size:
        raise ValueError("the model has an open input size: pass input_size=(height, width)")
    shared = iterative_block(model).weight_sharing
    data_convs, parts, state_shapes = inventory(model, input_size)
    mix, block, head = parts["mix"], parts["block"], parts["head"]

    data_bytes = sum(c.fm_bytes + BYTES * c.params for c in data_convs)
    data_macs = sum(c.macs for c in data_convs)
    # Depth: a scale's conv count after the data block, then per iteration.
    depth = [2 + l for l in range(1, len(state_shapes) + 1)]
    blocks_per_scale = len(block) // len(state_shapes)

    rows, macs, unrolled = [], data_macs, data_bytes
    for n in range(1, iterative_block(model).num_iterations + 1):
        convs = (mix if n > 1 else []) + block
        macs += sum(c.macs for c in convs) + sum(c.macs for c in head)
        unrolled += sum(c.fm_bytes + BYTES * c.params for c in convs + head)
        once = (mix if n > 1 else []) + block + head  # the loop body, collapsed
        param_sets = lambda c: 1 if shared and c not in head else (n - 1 if c in mix else n)
        collapsed = data_bytes + sum(c.fm_bytes + BYTES * c.params * param_sets(c) for c in once)
        if n > 1:
            depth = [max(depth) + 1] * len(depth)  # mixing: conv3x3 and 1x1 in parallel
        depth = [d + blocks_per_scale for d in depth]
        rows.append(dict(
            output=n, macs=macs, params=_trainable_params(model, n),
            graph_bytes_collapsed=collapsed, graph_bytes_unrolled=unrolled,
            depth=depth[0] + 1,  # + the head
            state_bytes=BYTES * sum(math.prod(s) for s in state_shapes),
        ))
    return rows


def format_table(rows):
    header = ["output", "MACs (1e9)", "params", "graph MB collapsed", "graph MB unrolled", "depth", "state MB"]
    return markdown_table(header, [
        [r["output"], f"{r['macs'] / 1e9:#.4g}", f"{r['params']:,}", f"{r['graph_bytes_collapsed'] / 1e6:.1f}",
         f"{r['graph_bytes_unrolled'] / 1e6:.1f}", r["depth"], f"{r['state_bytes'] / 1e6:.3f}"] for r in rows])


def preset_costs(preset, input_size=None, **model_args):
    """Cost rows of a preset at its dataset's image size (or `input_size`)."""
    if preset not in PRESET_DATASET:
        raise ValueError(f"unknown preset {preset!r}: expected one of {sorted(PRESET_DATASET)}")
    input_size = tuple(input_size or DATASETS[PRESET_DATASET[preset]].image_size)
    model = build_itnet(preset, input_shape=(*input_size, 3), **model_args)
    return output_costs(model, input_size)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_startup(args.verbose)
    overrides = {} if args.width is None else {"width": args.width}
    try:
        rows = preset_costs(args.preset, args.input_size, **overrides)
    except ValueError as error:
        parser.error(str(error))
    print(json.dumps(rows, indent=1) if args.json else format_table(rows))


if __name__ == "__main__":
    main()
