"""Batch-norm recalibration ("precise BN"): the moving statistics of every batch norm
re-estimated with the final weights.

During training a batch norm's moving mean and variance follow the batch statistics with
momentum 0.99, so they average over the weights of the last few hundred steps; after a
short run they lag the weights, and inference with them scores far below the same weights
with each batch's own statistics (docs/training.md). `recalibrate` runs training batches
forward in training mode with dropout off and sets every moving mean and variance to the
equal-weight average of that norm's batch statistics over the batches (as detectron2's
`update_bn_stats`; Wu and Johnson, "Rethinking 'Batch' in BatchNorm", 2021). It covers the
data block's Keras `BatchNormalization` layers and the per-iteration norms of the
`IterativeBlock`; trainable weights are not touched.
"""

import contextlib

import keras
import numpy as np
from keras import ops

from itnet_keras.model import data_block, iterative_block

# TensorFlow and JAX are imported inside the branch of their backend (see `_forward`).


def moving_statistics(model):
    """Every batch norm's moving mean and variance variables in an ItNet, in a fixed order."""
    variables = []
    for norm in data_block(model).norms:
        variables += [norm.moving_mean, norm.moving_variance]
    variables += [use.variable for use in iterative_block(model).weight_usage()
                  if use.variable.name.endswith(("_moving_mean", "_moving_var"))]
    return variables


@contextlib.contextmanager
def _batch_statistics_only(model):
    """Momentum 0 for every norm (a training-mode call leaves the batch's own statistics in
    the moving variables) and dropout off, restored afterwards."""
    block = iterative_block(model)
    norms = [*data_block(model).norms, block]
    momenta, dropout = [norm.momentum for norm in norms], block.dropout
    try:
        for norm in norms:
            norm.momentum = 0.0
        block.dropout = 0.0
        yield
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        block.dropout = dropout


def _forward(model):
    """A function images -> None that runs the data block and the loop in training mode,
    compiled on TensorFlow (`tf.function`) and JAX (`jax.jit` of a stateless call whose
    new non-trainable values are assigned back); eager on other backends. The outputs'
    resizing is left out: only the statistics are wanted."""
    probe = keras.Model(model.inputs, iterative_block(model).output)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function(reduce_retracing=True)
        def run(images):
            probe(images, training=True)

        return run
    if backend == "jax":
        import jax

        @jax.jit
        def stateless(trainable, non_trainable, images):
            return probe.stateless_call(trainable, non_trainable, images, training=True)[1]

        def run(images):
            values = stateless([v.value for v in probe.trainable_variables],
                               [v.value for v in probe.non_trainable_variables], images)
            for variable, value in zip(probe.non_trainable_variables, values):
                variable.assign(value)

        return run
    return lambda images: probe(images, training=True)


def recalibrate(model, batches):
    """Set every batch norm's moving mean and variance (`moving_statistics`) to the average
    of its batch statistics over `batches` (an iterable of image batches [B, H, W, 3]), each
    batch weighted alike; dropout is off and no trainable weight changes. Returns the number
    of batches used."""
    variables = moving_statistics(model)
    sums = [np.zeros(tuple(v.shape), np.float64) for v in variables]
    count = 0
    with _batch_statistics_only(model):
        forward = _forward(model)
        for images in batches:
            forward(ops.convert_to_tensor(np.asarray(images, np.float32)))
            for total, variable in zip(sums, variables):
                total += ops.convert_to_numpy(variable)
            count += 1
    if count == 0:
        raise ValueError("recalibration needs at least one batch")
    for total, variable in zip(sums, variables):
        variable.assign((total / count).astype(variable.dtype))
    return count


def training_images(dataset, count, first_epoch=0):
    """`count` image batches of a training `pipeline.SegmentationDataset`, in its order from
    epoch `first_epoch` on (the next epochs' shuffles and augmentations once one is used up)."""
    for i in range(count):
        dataset.epoch = first_epoch + i // len(dataset)
        yield dataset[i % len(dataset)][0]
