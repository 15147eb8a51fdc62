"""The functions an exported ItNet offers, and the SavedModel that holds them.

| signature | inputs | outputs |
|---|---|---|
| `outputs` | `image` [B, H, W, 3] float32 | `output_1` .. `output_N` logits [B, H, W, C] |
| `anytime` | `image`, `iterations` int32 scalar (clamped to 1..N) | `logits` of output `iterations` |
| `encode` | `image` | `state_1` .. `state_L` (the data block's scales) |
| `step` | `state_1` .. `state_L`, `n` int32 scalar (1-based, clamped) | `state_1` .. `state_L`, `logits` of output n at the head's resolution (ceil(H/8), ceil(W/8)) |
| `upsample` | `logits` at the head's resolution (from `step`) | `logits` [B, H, W, C]: output n |
| `finish` | `state_1` .. `state_L`, `n` (as `step`) | `logits` [B, H, W, C]: output n |

Images are normalized as the model was trained (see the metadata), or are uint8 camera
bytes that the graph normalizes (`--input-type uint8`). `step` returns
the head's logits before the 8x bilinear upsampling, so that an app driving the loop pays
for one full-resolution map (`upsample` of the last step it keeps), not one per step.
`finish` is the last step of an app that knows it is the last (its deadline leaves no room
for another): iteration n at the finest scale, the head, the upsampling; it skips the
coarser scales, which only a further step would read.
"""

import keras
import numpy as np
import tensorflow as tf

from itnet_keras.model import anytime, data_block, encode, finish, iterative_block, named_outputs, upsample

SIGNATURES = ("outputs", "anytime", "encode", "step", "upsample", "finish")


def signatures_of(model):
    """The signatures a model can export: an `unroll=True` model (for measurements only)
    has no `anytime`, whose run-time iteration count needs the loop."""
    if iterative_block(model).unroll:
        return tuple(s for s in SIGNATURES if s != "anytime")
    return SIGNATURES


def state_shapes(model, input_size):
    """Shapes of the loop-carried state (one per scale) for one image of `input_size` (the
    exported files take batch 1)."""
    shapes = data_block(model).compute_output_shape((1, *input_size, 3))
    return [tuple(int(d) for d in s) for s in shapes]


def normalized_pixels(image, normalization):
    """Camera bytes `image` (uint8 RGB) normalized inside the graph: pixel * scale + offset."""
    scale, offset = normalization
    return tf.cast(image, tf.float32) * np.float32(scale) + np.float32(offset)


def export_archive(model, input_size, normalization=None):
    """A `keras.export.ExportArchive` with the signatures at a fixed input size. With
    `normalization` (scale, offset), `image` is uint8 camera bytes, normalized inside."""
    height, width = input_size
    shapes = state_shapes(model, input_size)
    dtype = tf.float32 if normalization is None else tf.uint8
    image = tf.TensorSpec((1, height, width, 3), dtype, name="image")
    scalar = lambda name: tf.TensorSpec((), tf.int32, name=name)  # noqa: E731

    def normalized(image):
        return image if normalization is None else normalized_pixels(image, normalization)

    def all_outputs(image):
        return named_outputs(model, normalized(image))

    def anytime_fn(image, iterations):
        return {"logits": anytime(model, normalized(image), iterations)}

    def encode_fn(image):
        return {f"state_{l}": s for l, s in enumerate(encode(model, normalized(image)), start=1)}

    def step_fn(*args):
        *state, n = args
        state, logits = iterative_block(model).step(state, n)
        return {**{f"state_{l}": s for l, s in enumerate(state, start=1)}, "logits": logits}

    def upsample_fn(logits):
        return {"logits": upsample(logits, (height, width))}

    def finish_fn(*args):
        *state, n = args
        return {"logits": finish(model, state, n, (height, width))}

    archive = keras.export.ExportArchive()
    archive.track(model)
    states = [tf.TensorSpec(s, tf.float32, name=f"state_{l}") for l, s in enumerate(shapes, start=1)]
    head = tf.TensorSpec((1, *shapes[0][1:3], iterative_block(model).num_classes), tf.float32, name="logits")
    endpoints = {"outputs": (all_outputs, [image]), "anytime": (anytime_fn, [image, scalar("iterations")]),
                 "encode": (encode_fn, [image]), "step": (step_fn, [*states, scalar("n")]),
                 "upsample": (upsample_fn, [head]), "finish": (finish_fn, [*states, scalar("n")])}
    for name in signatures_of(model):
        archive.add_endpoint(name, *endpoints[name])
    return archive


def write_saved_model(model, folder, input_size, normalization=None):
    """Write the SavedModel with the signatures (`signatures_of(model)`) to `folder`; with
    `normalization`, their `image` is uint8 (see `export_archive`)."""
    export_archive(model, input_size, normalization).write_out(str(folder), verbose=False)
    return folder
