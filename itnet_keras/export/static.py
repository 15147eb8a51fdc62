"""The static flavour: one output n, one subgraph, no control flow.

A loop file keeps the shared iteration as a `WHILE` (and `IF` branches), which neither
MediaPipe's `ImageSegmenter` (one subgraph only) nor the LiteRT GPU delegate (no `WHILE`)
runs. A static file computes output n of an unrolled copy of the model (`unroll=True`,
the same weights): n iterations, the last at the finest scale, the head, the 8x upsampling.
Its one signature `output_n` maps `image` to `logits` [1, H, W, C].

`--input-type uint8` (and `int8` for int8 files) takes camera bytes (module
`camera_input`). An int8 static file hands its logits out as int8 (their scale and zero
point in the tensor; the argmax needs neither): with a camera-byte input, no float tensor
is left in it, and no full-resolution DEQUANTIZE costs time.
"""

import keras
import numpy as np
import tensorflow as tf

from itnet_keras.console import progress
from itnet_keras.export.camera_input import pixels_of, zero_point
from itnet_keras.export.signatures import normalized_pixels
from itnet_keras.model import anytime, build_itnet, model_args


def signature_key(n):
    return f"output_{n}"


def unrolled_copy(model):
    """The model built with `unroll=True` (Python-unrolled iterations), the same weights."""
    input_shape = tuple(model.input_shape[1:])
    copy = build_itnet(input_shape=input_shape, **{**model_args(model), "unroll": True})
    copy.set_weights(model.get_weights())
    return copy


def _graph_normalizes(normalization, input_type, int8):
    """Whether a static file's graph takes pixels 0..255 and normalizes them: a camera-byte
    input, unless the file is int8 and its byte input is the normalized image's quantization."""
    return input_type != "float32" and not (int8 and zero_point(normalization) is not None)


def static_archive(unrolled, n, input_size, normalization=None, input_type="float32", int8=False):
    """An `ExportArchive` with signature `output_n`: image -> logits of output n.

    `input_type="uint8"` with `normalization` (scale, offset): the float modes take uint8
    pixels, cast and normalize them; with `int8=True` (`input_type` uint8 or int8), the
    image stays the float input the converter turns into uint8 (`uint8_pixel_input`): the
    normalized image when the normalization is a quantization (`zero_point`), else pixels
    0..255 normalized here."""
    pixels = _graph_normalizes(normalization, input_type, int8)
    dtype = tf.uint8 if pixels and not int8 else tf.float32
    spec = tf.TensorSpec((1, *input_size, 3), dtype, name="image")

    def output_n(image):
        if pixels:
            image = normalized_pixels(image, normalization)
        return {"logits": anytime(unrolled, image, n)}

    archive = keras.export.ExportArchive()
    archive.track(unrolled)
    archive.add_endpoint(signature_key(n), output_n, [spec])
    return archive


def static_calibration(images, n, normalization=None, input_type="float32"):
    """The representative dataset of an int8 static file: the calibration images (already
    normalized), as pixels 0..255 for a camera-byte input that the graph normalizes."""
    pixels = _graph_normalizes(normalization, input_type, int8=True)

    def generate():
        for image in progress(images, f"int8 calibration, output {n}", unit="images"):
            image = np.asarray(image, np.float32)
            if pixels:
                image = pixels_of(image, normalization).astype(np.float32)
            yield signature_key(n), {"image": image[None]}

    return generate
