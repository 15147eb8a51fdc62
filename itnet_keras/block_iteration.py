"""One iteration of the iterative block (SPEC s.2): the mixing block, the K bottlenecks and
the batch norm at each scale, and head n. `BlockIteration` is a part of `IterativeBlock`,
which owns the weights (`IterationWeights`: `_pick`, `_record`, `_usage`) and runs the
iterations in its loop."""

import keras
from keras import ops

from itnet_keras.convs import conv, depthwise_conv
from itnet_keras.layers import fold_norm, resize_like


def _dropout(x, rate, seed):
    """Dropout with a tensor seed, which `keras.random.dropout` accepts only on JAX."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.nn.experimental.stateless_dropout(x, rate=rate, seed=seed)
    return keras.random.dropout(x, rate, seed=ops.cast(seed, "uint32"))


class BlockIteration:
    """The computations of 0-based iteration n, on the weights of `IterativeBlock`."""

    def _conv(self, x, key, n, depthwise=False):
        kernel = self._pick(key + "_kernel", n)
        per_iteration = self._usage[key + "_kernel"].rows is not None
        if depthwise:
            y = depthwise_conv(x, kernel)
        elif per_iteration and tuple(kernel.shape[:2]) == (1, 1):
            # A 1x1 conv whose kernel the loop counter picks, as a matmul: TFLite's int8
            # CONV_2D wants a constant filter, a gathered one is quantized as an activation.
            y = ops.matmul(x, kernel[0, 0])
        else:
            y = conv(x, kernel, in_loop=not isinstance(n, int))  # the loop's counter is a tensor
        if key + "_bias" in self._usage:
            y = y + self._pick(key + "_bias", n)
        return y

    def _norm(self, x, key, n, training, stats):
        """Batch norm `key` of iteration n; in training, record the batch statistics.

        In inference the norm is folded into a scale and a shift for all N iterations
        first, then iteration n's row is picked: an exported loop body then reads two
        constant rows instead of computing the norm from four (and an int8 file never
        quantizes a variance)."""
        if training:
            gamma, beta = self._pick(key + "_gamma", n), self._pick(key + "_beta", n)
            # the statistics in float32, as the moving ones are kept, under a mixed-precision
            # policy too; the normalization in the compute dtype (casts of float32 are no-ops)
            mean, var = ops.moments(ops.cast(x, "float32"), axes=[0, 1, 2])
            stats = self._record(stats, key, n, mean, var)
            mean, var = ops.cast(mean, x.dtype), ops.cast(var, x.dtype)
            return (x - mean) * ops.rsqrt(var + self.epsilon) * gamma + beta, stats
        parts = (self._usage[f"{key}_{p}"].variable for p in ("gamma", "beta", "moving_mean", "moving_var"))
        scale, shift = fold_norm(*parts, self.epsilon, x.dtype)
        return x * self._pick(key + "_gamma", n, scale) + self._pick(key + "_beta", n, shift), stats

    def _conv_norm(self, x, key, n, training, stats, depthwise=False):
        y = self._conv(x, key, n, depthwise)
        if self.bn_placement == "every_conv":
            y, stats = self._norm(y, key + "_bn", n, training, stats)
        return y, stats

    def _mix(self, state, n, training, stats):
        """Mixing residual block at every scale."""
        mixed = []
        for l in range(1, len(state) + 1):
            x, stats = self._mix_at(state, l, n, training, stats)
            mixed.append(x)
        return mixed, stats

    def _mix_at(self, state, l, n, training, stats):
        """Mixing at scale l: all scales resized to scale l, conv3x3 + 1x1 projection.

        In training, with no norm after each conv, the two run as one 3x3 conv whose kernel
        holds the projection's at its centre: the same sum, with one conv and its two
        gradient convs fewer per scale and iteration (the kernels stay two weights; in
        inference the two convs stay apart, as exported files have them)."""
        both = ops.concatenate([resize_like(s, state[l - 1]) for s in state], axis=-1)
        if training and self.bn_placement == "between":
            key = f"scale{l}_mix"
            centred = ops.pad(self._pick(key + "_proj_kernel", n), ((1, 1), (1, 1), (0, 0), (0, 0)))
            y = conv(both, self._pick(key + "_conv_kernel", n) + centred, in_loop=not isinstance(n, int))
            return ops.relu(y + self._pick(key + "_conv_bias", n) + self._pick(key + "_proj_bias", n)), stats
        a, stats = self._conv_norm(both, f"scale{l}_mix_conv", n, training, stats)
        b, stats = self._conv_norm(both, f"scale{l}_mix_proj", n, training, stats)
        return ops.relu(a + b), stats

    def _bottlenecks(self, x, l, n, training, stats, seed):
        """K MobileNetV2 bottleneck residual blocks at scale l."""
        for k in range(1, self.num_blocks + 1):
            key = f"scale{l}_block{k}"
            h, stats = self._conv_norm(x, key + "_expand", n, training, stats)
            h, stats = self._conv_norm(ops.relu6(h), key + "_depthwise", n, training, stats, True)
            h = ops.relu6(h)
            if seed is not None:
                h = _dropout(h, self.dropout, self.dropout_seed(seed, n, l, k))
            h, stats = self._conv_norm(h, key + "_project", n, training, stats)
            x = x + h
        return x, stats

    def step_seed(self):
        """The seed of one training step for `dropout_seed`: the generator advanced once."""
        return ops.cast(ops.mod(self.seed_generator.next(), 2**30), "int32")

    def dropout_seed(self, seed, n, l, k):
        """The dropout seed of bottleneck k at scale l in 0-based iteration n, from the step's
        `seed` (`seed_generator.next()`, which adds [0, 1] at every step). The (n, l, k) index
        goes into the first component: in the second it would meet the step counter, and
        iteration n of one step would reuse the mask of iteration n + 1 of the step before."""
        index = (ops.cast(n, "int32") * self.num_scales + (l - 1)) * self.num_blocks + (k - 1)
        return seed + ops.stack([index, ops.convert_to_tensor(0, "int32")])

    def _iteration(self, state, n, training, stats, seed, mixes=None, head=True):
        """0-based iteration n: (state, logits of head n or None without `head`, stats).

        Iteration 0 skips the mixing block (see `_if_mixing` for `mixes`).
        """
        state, stats = self._if_mixing(n, mixes, lambda: self._mix(state, n, training, stats),
                                       lambda: (list(state), stats))
        new_state = []
        for l, x in enumerate(state, start=1):
            x, stats = self._scale_end(x, l, n, training, stats, seed)
            new_state.append(x)
        return new_state, self._conv(new_state[0], "head", n) if head else None, stats

    def _scale_end(self, x, l, n, training, stats, seed=None):
        """The bottlenecks at scale l, then (with `between` placement) its batch norm."""
        x, stats = self._bottlenecks(x, l, n, training, stats, seed)
        if self.bn_placement == "between":
            x, stats = self._norm(x, f"scale{l}_bn", n, training, stats)
        return x, stats

    def _if_mixing(self, n, mixes, mixed, unmixed):
        """`mixed()` if 0-based iteration n mixes (n > 0), else `unmixed()`. `mixes=True`
        says n > 0 is known (inside the loop, which starts at 1); otherwise a tensor n
        decides at run time (`step`, `finish`: an `IF` in an exported file)."""
        if self.num_iterations == 1 or (isinstance(n, int) and n == 0):
            return unmixed()
        if mixes or isinstance(n, int):
            return mixed()
        return ops.cond(n > 0, mixed, unmixed)

    def _finest(self, state, n, mixes=None):
        """Logits of head n (0-based) from the state before iteration n, computing iteration
        n at the finest scale only, the one the head reads (inference)."""
        x = self._if_mixing(n, mixes, lambda: self._mix_at(state, 1, n, False, {})[0], lambda: state[0])
        x, _ = self._scale_end(x, 1, n, False, {})
        return self._conv(x, "head", n)
