"""The per-iteration weight store of `IterativeBlock`: weights with a leading axis of one
row per iteration (or none, when shared), the row that iteration n reads, the batch
statistics a training step records row by row, and an iteration rematerialized over them.

`IterationWeights` is a mixin of the Keras layer: the weights are the layer's own
(`add_weight`), so saved files and their variable names are those of `IterativeBlock`.
"""

import contextlib
import typing

import keras
from keras import ops

from itnet_keras.layers import l2_regularizer


class ConvRow(typing.NamedTuple):
    """One conv of an iteration at one scale: its name, kernel shape (kh, kw, in, out;
    out = 1 for a depthwise kernel), whether it is depthwise, and its part (mix, block, head)."""
    name: str
    kernel: tuple
    depthwise: bool
    part: str


class WeightUse(typing.NamedTuple):
    """A weight and how the iterations read it: `rows` is the size of its leading
    per-iteration axis (None when shared), `first` the 0-based iteration that reads row 0.
    Iteration n reads row n - first (the cost model counts with this)."""
    variable: object
    rows: typing.Optional[int]
    first: int


def _stacked(name, count):
    """An initializer drawing `count` independent slices along a leading axis, each from its
    own initializer `name` ("glorot_uniform"): an unseeded Keras initializer fixes its seed when
    it is made, so one of them drawing every slice would draw the same slice `count` times.
    The seeds come from Python's generator, which `keras.utils.set_random_seed` seeds."""

    def draw(shape, dtype=None):
        return ops.stack([keras.initializers.get(name)(shape[1:], dtype=dtype) for _ in range(count)])

    return draw


class IterationWeights:
    """Adds and reads the weights of a layer with `num_iterations`, `l2` and `momentum`
    attributes; `build` starts with `self._usage = {}`."""

    def weight_usage(self):
        """A `WeightUse` (variable, rows, first) for every weight."""
        return list(self._usage.values())

    def _first_iteration(self, part):
        return 1 if part == "mix" else 0

    def _add(self, name, shape, part, per_iteration, initializer, regularize=False, trainable=True):
        first = self._first_iteration(part)
        rows = self.num_iterations - first if per_iteration else None
        if rows is not None:
            shape = (rows,) + tuple(shape)
            initializer = _stacked(initializer, rows)
        variable = self.add_weight(
            name=name, shape=shape, initializer=initializer, trainable=trainable,
            regularizer=l2_regularizer(self.l2) if regularize else None,
            autocast=trainable,  # moving statistics stay float32 under a mixed-precision policy
        )
        self._usage[name] = WeightUse(variable, rows, first)
        return variable

    def _pick(self, name, n, value=None):
        """The slice of weight `name` (or of `value`, a tensor shaped like it) that
        0-based iteration `n` reads."""
        variable, rows, first = self._usage[name]
        if value is None:
            value = self._weight_values.get(name, variable)
        value = ops.convert_to_tensor(value)
        if rows is not None:
            index = n - first
            value = value[index] if isinstance(index, int) else ops.take(value, index, axis=0)
        if self._static_weight_shapes:
            value = ops.reshape(value, tuple(variable.shape[1:] if rows else variable.shape))
        return value

    _static_weight_shapes = False
    _weight_values = {}  # weight name -> the tensor to read instead (inside `_rematerialized`)

    @contextlib.contextmanager
    def static_weight_shapes(self):
        """While tracing in this context, every weight read in the loop gets its static
        shape by a reshape. tf2onnx needs the kernel shape of every conv, which a variable
        read or a gather inside a loop body does not carry. Not used for TFLite: there the
        reshape makes full-integer quantization treat shared kernels as activations."""
        self._static_weight_shapes = True
        try:
            yield
        finally:
            self._static_weight_shapes = False

    # -- batch statistics: recorded per row inside the loop, the moving ones updated after it --

    def _empty_stats(self):
        """{norm key: (means, variances)}, zeros with one row per iteration, for `_record`."""
        stats = {}
        for name, use in self._usage.items():
            if name.endswith("_moving_mean"):
                stats[name[: -len("_moving_mean")]] = (ops.zeros(use.variable.shape), ops.zeros(use.variable.shape))
        return stats

    def _update_moving_stats(self, stats, count):
        """Each norm's moving statistics, row by row, from the batch statistics of the `count`
        iterations that ran (`momentum`); the other rows keep theirs."""
        m = self.momentum
        for key, (means, variances) in stats.items():
            moving_mean, rows, first = self._usage[key + "_moving_mean"]
            moving_var = self._usage[key + "_moving_var"].variable
            ran = (ops.arange(rows) + first < count)[:, None]  # rows whose iteration ran
            for moving, batch in ((moving_mean, means), (moving_var, variances)):
                old = ops.convert_to_tensor(moving)
                moving.assign(ops.where(ran, m * old + (1 - m) * batch, old))

    def _record(self, stats, key, n, mean, var):
        """`stats` with the batch mean and variance of norm `key` in 0-based iteration n."""
        first = self._usage[key + "_moving_mean"].first
        index = ops.reshape(ops.convert_to_tensor(n - first, "int32"), (1, 1))
        means, variances = stats[key]
        stats = dict(stats)
        stats[key] = (ops.scatter_update(means, index, mean[None]),
                      ops.scatter_update(variances, index, var[None]))
        return stats

    # -- rematerialization -----------------------------------------------------------

    def _rematerialized(self, iteration):
        """`iteration(n, state, stats)` under `keras.remat`: its activations are recomputed in
        the backward pass, so a training step keeps only the loop's carried values per
        iteration. Tensors pass as one flat list, the weights among them (TensorFlow's
        `recompute_grad` cannot capture variables inside a `tf.while_loop`); `n` is closed over."""
        names = [name for name, use in self._usage.items() if use.variable.trainable]

        def call(n, state, stats):
            # values read from the variables (a TensorFlow variable passed in as itself is counted
            # twice by an eager `recompute_grad`: as an input and as a variable read)
            weights = [ops.copy(self._usage[name].variable) for name in names]
            structure = {}

            def flat(*values):
                self._weight_values = dict(zip(names, values[:len(names)]))
                try:
                    structure["out"] = iteration(n, *keras.tree.pack_sequence_as((state, stats), values[len(names):]))
                finally:
                    self._weight_values = {}
                return keras.tree.flatten(structure["out"])

            values = keras.remat(flat)(*weights, *keras.tree.flatten((state, stats)))
            return keras.tree.pack_sequence_as(structure["out"], values)

        return call
