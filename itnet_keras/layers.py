"""ItNet's blocks before and after the loop as Keras layers (SPEC s.2 and s.3).

- `DataBlock` runs once: downsampling, then L parallel scales (the initial state).
- `IterativeBlock` (in `iterative_block.py`) holds the iterative block, the batch norms
  between iterations and the N classification heads, and runs them N times in one loop.
- `OutputResize` picks output n and resizes it bilinearly to the input size.
"""

import math

import keras
from keras import ops

# TensorFlow and JAX are imported inside the branches that run on that backend only: the
# model trains on either backend without the other installed.

register = keras.saving.register_keras_serializable(package="itnet_keras")


def half_width(width):
    """f_r = round(f / 2), rounding halves up (29 -> 15, 51 -> 26)."""
    return int(math.floor(width / 2 + 0.5))


def resize_like(x, like):
    """Bilinear resize of `x` to the spatial size of `like` (no-op when equal)."""
    if x is like:
        return x
    size = tuple(like.shape[1:3])
    if None in size:  # TensorFlow with an open input size: take it at run time
        import tensorflow as tf

        return ops.cast(tf.image.resize(x, tf.shape(like)[1:3], method="bilinear"), x.dtype)  # float32 out
    if tuple(x.shape[1:3]) == size:
        return x
    return ops.image.resize(x, size, interpolation="bilinear")


def one_image_at_a_time(function, *batches):
    """`function` of each image's [1, ...] slices of `batches`, the results stacked: a loop
    (`ops.map`) that holds one image's temporaries at a time, e.g. logits resized to the
    input size, which are 64x the heads' logits."""
    return ops.map(lambda images: function(*(x[None] for x in images))[0], batches)


def fold_norm(gamma, beta, mean, variance, epsilon, dtype="float32"):
    """A batch norm in inference as (scale, shift), to apply as `x * scale + shift` to x of
    `dtype`: folded in float32, the moving statistics' dtype under a mixed-precision policy
    too (for float32, every cast is a no-op)."""
    gamma, beta, mean, variance = (ops.cast(v, "float32") for v in (gamma, beta, mean, variance))
    scale = gamma * ops.rsqrt(variance + epsilon)
    return ops.cast(scale, dtype), ops.cast(beta - mean * scale, dtype)


def l2_regularizer(l2):
    return keras.regularizers.L2(l2) if l2 else None


@register
class DataBlock(keras.layers.Layer):
    """ENet-style downsampling to H/4, then a chain of stride-2 convs: S_1 .. S_L."""

    def __init__(self, width, num_scales, l2=0.0, **kwargs):
        super().__init__(**kwargs)
        self.width = width
        self.num_scales = num_scales
        self.l2 = l2

    def build(self, input_shape):
        f, f_r = self.width, half_width(self.width)

        def conv(channels, name):
            return keras.layers.Conv2D(
                channels, 3, strides=2, padding="same", use_bias=False,
                kernel_regularizer=l2_regularizer(self.l2), name=name,
            )

        self.convs = [conv(f_r - 3, "stage1_conv"), conv(f - f_r, "stage2_conv")]
        self.convs += [conv(f, f"scale{l}_conv") for l in range(1, self.num_scales + 1)]
        self.norms = [keras.layers.BatchNormalization(name=c.name.replace("conv", "bn")) for c in self.convs]
        self.pool = keras.layers.MaxPooling2D(2, padding="same")
        for conv_layer, norm, (shape_in, shape_out) in zip(self.convs, self.norms, self._shapes(input_shape)):
            conv_layer.build(shape_in)
            norm.build(shape_out)

    def _shapes(self, input_shape):
        """(input, normed output) shape of each conv, in order."""
        shapes, shape = [], tuple(input_shape)
        for index, conv_layer in enumerate(self.convs):
            out = conv_layer.compute_output_shape(shape)
            if index < 2:  # stages 1 and 2 concatenate the max-pooled input
                out = out[:-1] + (out[-1] + shape[-1],)
            shapes.append((shape, out))
            shape = out
        return shapes

    def conv_graph(self, input_shape):
        """(conv layer, input shape, output shape) of every conv, in order (for the cost model)."""
        return [
            (c, shape_in, c.compute_output_shape(shape_in))
            for c, (shape_in, _) in zip(self.convs, self._shapes(input_shape))
        ]

    def call(self, images, training=None):
        finest = self.finest(images, training)
        return [finest, *self.coarser(finest, training)]

    def finest(self, images, training=None):
        """S_1 alone."""
        x = images
        for index in range(2):
            x = self._stage(x, index, training)
        return self._scale(x, 0, training)

    def coarser(self, finest, training=None):
        """S_2 .. S_L from S_1 (each is a stride-2 conv of the one before)."""
        scales = [finest]
        for index in range(1, self.num_scales):
            scales.append(self._scale(scales[-1], index, training))
        return scales[1:]

    def _scale(self, x, index, training):
        conv_layer, norm = self.convs[2 + index], self.norms[2 + index]
        return ops.relu(norm(conv_layer(x), training=training))

    def _stage(self, x, index, training):
        """Stage 1 or 2: concat[conv(x), maxpool(x)] -> BN -> ReLU.

        In inference the norm is applied to each branch before the concatenation, so that
        its conv part folds into the conv in an exported file; an int8 file would otherwise
        multiply the concatenated tensor by one vector quantized over both branches."""
        conv, pool, norm = self.convs[index](x), self.pool(x), self.norms[index]
        if training:
            return ops.relu(norm(ops.concatenate([conv, pool], axis=-1), training=True))
        scale, shift = fold_norm(norm.gamma, norm.beta, norm.moving_mean, norm.moving_variance, norm.epsilon,
                                 conv.dtype)
        k = conv.shape[-1]
        return ops.concatenate([ops.relu(conv * scale[:k] + shift[:k]), ops.relu(pool * scale[k:] + shift[k:])],
                               axis=-1)

    def compute_output_shape(self, input_shape):
        return [shape_out for _, shape_out in self._shapes(input_shape)[2:]]

    def get_config(self):
        return {**super().get_config(), "width": self.width, "num_scales": self.num_scales, "l2": self.l2}


@register
class OutputResize(keras.layers.Layer):
    """Output n of the classification block: its logits resized to the input size."""

    def __init__(self, index, **kwargs):
        super().__init__(**kwargs)
        self.index = index

    def call(self, logits, images):
        return resize_like(logits[self.index], images)

    def compute_output_shape(self, logits_shape, images_shape):
        return tuple(images_shape[:3]) + (logits_shape[-1],)

    def get_config(self):
        return {**super().get_config(), "index": self.index}
